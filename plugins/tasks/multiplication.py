"""``multiplication``: n x m digit multiplication without chain of thought (Seq-VCR's home task).

A small GPT-2 over a character vocabulary reads ``a * b =`` and writes the
product, all numbers with their digits reversed (least significant first, as
in the implicit-CoT multiplication data the Seq-VCR paper uses); the product is
zero-padded to ``digits + digits_b`` digits. Optionally ``pause_tokens`` copies
of one learnable ``<pause>`` token sit between ``=`` and the answer (Seq-VCR's
stand-in for chain-of-thought tokens; the paper uses 2).

Sequence (content, after BOS)::

    a_0 .. a_{n-1}  *  b_0 .. b_{m-1}  =  <pause> x k  c_0 .. c_{n+m-1}

The loss is cross-entropy on the answer digits only. Generation ``g > 0``
self-trains: its data are the previous model's own (sampled) answers to fresh
questions. Metrics: exact match of greedy answers on held-out questions,
per-digit accuracy, answer NLL, the share of correct synthetic answers and the
effective rank of every layer's representations at the answer positions.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from collapsekit.capabilities import Corrector, PauseTokens, Verifier
from collapsekit.plugins.probes import effective_rank
from collapsekit.plugins.sampling import sample_tokens
from collapsekit.plugins.tasks.language import IGNORE, CausalLMTask
from ._bench import VERIFIER_VARIANTS

DIGITS = 10
TIMES, EQUALS, PAUSE = 10, 11, 12
VOCAB = 13
_MAX_LAYERS = 48


class Multiplication(CausalLMTask, PauseTokens, Verifier, Corrector):
    """Generated ``digits x digits_b`` multiplication, reversed-digit format, optional pause tokens."""

    name: ClassVar[str] = "multiplication"
    headline: ClassVar[tuple[str, ...]] = ("exact_match", "digit_accuracy", "rank_mean", "synthetic_exact_match")
    bench_methods: ClassVar[tuple[str, ...]] = ("baseline", "seqvcr", "pause-tokens", "seqvcr+pause-tokens",
                                                "verifier-filter", "verifier-filter-random", "self-correct")
    #: the verifier's control: the same filter keeping the same share of self-generated answers at random
    bench_variants: ClassVar[dict[str, dict]] = {"verifier-filter-random": VERIFIER_VARIANTS["verifier-filter-random"]}
    bench_controls: ClassVar[dict[str, str]] = {"verifier-filter": "verifier-filter-random"}
    higher_is_better: ClassVar[dict[str, bool]] = {
        "exact_match": True, "digit_accuracy": True, "answer_nll": False,
        "synthetic_exact_match": True, "rank_mean": True,
        **{f"rank_layer_{i}": True for i in range(_MAX_LAYERS + 1)},
    }

    def __init__(
        self,
        digits: int = 3,
        digits_b: int | None = None,
        pause_tokens: int = 0,
        train_size: int = 5000,
        heldout_size: int = 500,
        n_layer: int = 2,
        n_embd: int = 64,
        n_head: int = 2,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        eval_batch_size: int = 500,
        rank_samples: int = 500,
        backend: str = "hf",
        vllm: dict[str, Any] | None = None,
    ) -> None:
        digits_b = digits if digits_b is None else digits_b
        if digits < 1 or digits_b < 1:
            raise ValueError(f"digits and digits_b must be >= 1, got {digits} and {digits_b}")
        if pause_tokens < 0:
            raise ValueError(f"pause_tokens must be >= 0, got {pause_tokens}")
        if train_size < 1 or heldout_size < 1:
            raise ValueError("train_size and heldout_size must be >= 1")
        if n_layer > _MAX_LAYERS:
            raise ValueError(f"n_layer must be <= {_MAX_LAYERS}, got {n_layer}")
        space = self.question_space(digits, digits_b)
        if train_size + heldout_size > space:
            raise ValueError(f"{digits}x{digits_b} multiplication has only {space} distinct questions, fewer "
                             f"than train_size + heldout_size = {train_size + heldout_size}; lower the sizes")
        self.digits, self.digits_b = digits, digits_b
        self.answer_len = digits + digits_b
        self.train_size, self.heldout_size = train_size, heldout_size
        self.rank_samples = rank_samples
        super().__init__(VOCAB, self._seq_len(pause_tokens), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay, eval_batch_size=eval_batch_size,
                         backend=backend, vllm=vllm)
        self.pause_tokens = pause_tokens

    # -- format -----------------------------------------------------------------
    @staticmethod
    def question_space(digits: int, digits_b: int) -> int:
        """Number of distinct questions (operands without leading zeros)."""
        return 9 * 10 ** (digits - 1) * 9 * 10 ** (digits_b - 1)

    def _seq_len(self, pause_tokens: int) -> int:
        return self.digits + self.digits_b + 2 + pause_tokens + self.answer_len

    @property
    def pause_tokens(self) -> int:
        return self._pause_tokens

    @pause_tokens.setter
    def pause_tokens(self, k: int) -> None:
        """Changing ``pause_tokens`` (e.g. from the ``pause-tokens`` plugin) must happen before ``setup``."""
        if int(k) != k or k < 0:
            raise ValueError(f"pause_tokens must be an integer >= 0, got {k!r}")
        if getattr(self, "train_tokens", None) is not None and k != self._pause_tokens:
            raise RuntimeError("pause_tokens cannot change after setup(); set it before the run starts")
        self._pause_tokens = int(k)
        self.seq_len = self._seq_len(int(k))

    @property
    def prompt_len(self) -> int:
        """Tokens before the first answer digit, BOS included."""
        return 1 + self.digits + 1 + self.digits_b + 1 + self.pause_tokens

    def encode(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Content tokens [N, seq_len] (no BOS) of the questions ``a * b`` with their true products."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        n = len(a)
        parts = [_reversed_digits(a, self.digits), np.full((n, 1), TIMES), _reversed_digits(b, self.digits_b),
                 np.full((n, 1), EQUALS), np.full((n, self.pause_tokens), PAUSE),
                 _reversed_digits(a * b, self.answer_len)]
        return np.concatenate(parts, axis=1).astype(np.int64)

    def decode_operands(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The operands ``(a, b)`` of token rows (BOS first)."""
        tokens = np.asarray(tokens)
        a = _from_reversed(tokens[:, 1:1 + self.digits])
        start = 2 + self.digits
        return a, _from_reversed(tokens[:, start:start + self.digits_b])

    def answers(self, tokens: np.ndarray) -> np.ndarray:
        """The answer digits [N, answer_len] of token rows (BOS first)."""
        return np.asarray(tokens)[:, self.prompt_len:]

    # -- data ---------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        lo_a, lo_b = 10 ** (self.digits - 1), 10 ** (self.digits_b - 1)
        a = rng.integers(lo_a, 10 * lo_a, size=n) if self.digits > 1 else rng.integers(1, 10, size=n)
        b = rng.integers(lo_b, 10 * lo_b, size=n) if self.digits_b > 1 else rng.integers(1, 10, size=n)
        return a.astype(np.int64), b.astype(np.int64)

    def build_data(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint train and held-out questions with their true answers."""
        rng = np.random.default_rng([7919, seed])
        total = self.train_size + self.heldout_size
        keys: dict[tuple[int, int], None] = {}
        while len(keys) < total:
            a, b = self._draw(rng, 2 * (total - len(keys)) + 16)
            for pair in zip(a.tolist(), b.tolist()):
                keys.setdefault(pair, None)
                if len(keys) == total:
                    break
        pairs = np.array(list(keys), dtype=np.int64)
        heldout, train = pairs[:self.heldout_size], pairs[self.heldout_size:]
        self._heldout_keys = set(map(tuple, heldout.tolist()))
        return self.encode(train[:, 0], train[:, 1]), self.encode(heldout[:, 0], heldout[:, 1])

    def dataloader(self, pool, shuffle, seed):
        """As the base class, but drops a last partial batch (batch statistics need >= 2 rows)."""
        loader = super().dataloader(pool, shuffle, seed)
        if len(pool) > loader.batch_size:
            loader = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=shuffle,
                                                 generator=loader.generator, drop_last=True,
                                                 collate_fn=loader.collate_fn)
        return loader

    # -- training -------------------------------------------------------------------
    def labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token targets of ``tokens[:, :-1]`` with every non-answer position set to -100."""
        labels = tokens[:, 1:].clone()
        labels[:, :self.prompt_len - 1] = IGNORE
        return labels

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """Step ``features``: the last hidden state averaged over the positions that predict answer digits."""
        return hidden[:, self.prompt_len - 1:].mean(dim=1)

    def token_names(self) -> list[str]:
        """Digits ``0``-``9``, ``*``, ``=`` and ``<pause>``."""
        return [str(d) for d in range(DIGITS)] + ["*", "=", "<pause>"]

    # -- synthesis --------------------------------------------------------------------
    def fresh_questions(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` questions drawn from ``generator``, none of them a held-out question."""
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        a, b = self._draw(rng, n)
        held = getattr(self, "_heldout_keys", set())
        for i in range(n):
            while (int(a[i]), int(b[i])) in held:
                a[i:i + 1], b[i:i + 1] = self._draw(rng, 1)
        return a, b

    def prompts(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        """BOS + question + ``=`` + pauses, [N, prompt_len]."""
        content = self.encode(a, b)[:, :self.prompt_len - 1]
        return torch.as_tensor(self.with_bos(content))

    def answer(self, model: torch.nn.Module, prompts: torch.Tensor, generator: torch.Generator | None = None,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
        """Complete ``prompts`` with ``answer_len`` digits (greedy when ``temperature`` is 0)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        suppress = [t for t in range(VOCAB + 1) if t >= DIGITS]
        return sample_tokens(model, prompts, self.answer_len, generator, temperature=temperature, top_k=top_k,
                             top_p=top_p, batch_size=self.eval_batch_size, suppress=suppress)

    def sample(self, model, n, generator, temperature=1.0, top_k=0, top_p=1.0, **_):
        """Self-training data: the model's own answers (sampled) to ``n`` fresh questions."""
        a, b = self.fresh_questions(n, generator)
        tokens = self.answer(model, self.prompts(a, b), generator, temperature, top_k, top_p)
        return {"tokens": tokens.numpy().astype(np.int64)}

    # -- probes -------------------------------------------------------------------------
    def correct(self, tokens: np.ndarray) -> np.ndarray:
        """Bool [N]: whether each row's answer is the true product of its operands."""
        a, b = self.decode_operands(tokens)
        truth = _reversed_digits(a * b, self.answer_len)
        return (self.answers(tokens) == truth).all(axis=1)

    @torch.no_grad()
    def heldout_scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Exact match and digit accuracy of greedy answers, and answer NLL, on the held-out questions."""
        model.eval()
        tokens = torch.as_tensor(self.heldout_tokens)
        greedy = self.answer(model, tokens[:, :self.prompt_len]).numpy()
        hits = self.answers(greedy) == self.answers(self.heldout_tokens)
        return {"exact_match": float(hits.all(axis=1).mean()), "digit_accuracy": float(hits.mean()),
                "answer_nll": self.heldout_nll(model)}

    @torch.no_grad()
    def layer_ranks(self, model: torch.nn.Module) -> dict[str, float]:
        """Effective rank of each layer's held-out representations, averaged over the answer positions.

        At every position that predicts an answer digit, the [N, D] matrix of the
        ``rank_samples`` held-out sequences is one sample; ``rank_layer_0`` is the
        embedding output, ``rank_layer_i`` the output of block ``i``.
        """
        model.eval()
        tokens = torch.as_tensor(self.heldout_tokens[:self.rank_samples])
        hidden = self.forward(model, tokens, hidden_states=True).hidden_states
        positions = range(self.prompt_len - 1, tokens.shape[1] - 1)
        ranks = {f"rank_layer_{i}": float(np.mean([effective_rank(h[:, t]) for t in positions]))
                 for i, h in enumerate(hidden)}
        ranks["rank_mean"] = float(np.mean(list(ranks.values())))
        return ranks

    def evaluate(self, model, samples):
        metrics = self.heldout_scores(model)
        metrics.update(self.layer_ranks(model))
        if samples is not None and len(samples):
            metrics["synthetic_exact_match"] = float(self.correct(np.asarray(samples.arrays["tokens"])).mean())
        return metrics

    # -- experts: the exact product (Verifier, Corrector) ---------------------------------
    verifier_kind: ClassVar[str] = "exact answer check: the share of answer digits equal to the true product's (1 = exact)"
    corrector_kind: ClassVar[str] = "with probability strength an item's answer is replaced by the true product"

    def verify_items(self, items):
        """Share of each row's answer digits that equal the true product's (1.0 = an exact answer)."""
        tokens = np.asarray(items["tokens"])
        a, b = self.decode_operands(tokens)
        return (self.answers(tokens) == _reversed_digits(a * b, self.answer_len)).mean(axis=1).astype(np.float64)

    def correct_items(self, items, strength, generator):
        """Each row's answer replaced by the true product with probability ``strength`` (from ``generator``)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"correction strength must be in [0, 1], got {strength!r}")
        tokens = np.array(items["tokens"], copy=True)
        fix = (torch.rand(len(tokens), generator=generator) < strength).numpy()
        a, b = self.decode_operands(tokens[fix])
        tokens[fix, self.prompt_len:] = _reversed_digits(a * b, self.answer_len)
        return {**{k: np.asarray(v) for k, v in items.items()}, "tokens": tokens}

    # -- presets ------------------------------------------------------------------------
    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"digits": 2, "train_size": 256, "heldout_size": 64, "n_layer": 1, "n_embd": 16,
                           "batch_size": 32}, "trainer": {"max_steps": 20}, "generations": 2,
                  "variants": bench_variants},
        "cpu": {"task": {"digits": 2, "train_size": 7000, "heldout_size": 500, "n_layer": 4, "n_embd": 128,
                         "n_head": 4, "batch_size": 128, "lr": 2e-3}, "trainer": {"max_steps": 1500},
                "generations": 2, "seeds": [0, 1],
                # ~425 CPU-s per cell on the 2-core reference machine: the cheap tasks' 5 seeds already fill
                # the cpu suite's 45 minutes there (configs/bench/README.md), so it runs when named
                "opt_in": "14 cells of ~9 CPU-minutes each at 1 thread", "variants": bench_variants},
        "gpu": {"task": {"digits": 4, "train_size": 80000, "heldout_size": 1000, "n_layer": 6, "n_embd": 384,
                         "n_head": 6, "batch_size": 256, "lr": 5e-4}, "trainer": {"max_steps": 20000},
                "generations": 3, "variants": bench_variants},
        "gpu-5x5": {"task": {"digits": 5, "train_size": 200000, "heldout_size": 1000, "n_layer": 12,
                             "n_embd": 768, "n_head": 12, "batch_size": 256, "lr": 3e-4},
                    "trainer": {"max_steps": 40000}, "generations": 3, "variants": bench_variants},
    }
    """Run settings per bench preset:
    ``smoke`` (tests), ``cpu`` (2x2 digits, 5-6 min per method-seed on one core: the
    slowest task of the suite), ``gpu`` (4x4) and ``gpu-5x5`` (the paper's tasks)."""


def _reversed_digits(x: np.ndarray, width: int) -> np.ndarray:
    """Digits of ``x`` least significant first, zero-padded to ``width``: [N, width]."""
    x = np.asarray(x, dtype=np.int64)
    return (x[:, None] // 10 ** np.arange(width, dtype=np.int64)[None, :]) % 10


def _from_reversed(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=np.int64)
    return (d * 10 ** np.arange(d.shape[1], dtype=np.int64)[None, :]).sum(axis=1)
