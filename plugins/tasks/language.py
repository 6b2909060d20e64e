"""Shared base for token tasks: a small GPT-2 trained from scratch on token sequences.

Pools hold ``tokens`` [N, T] int64 whose first column is the BOS id. Subclasses
provide the data (``build_data``) and may add metrics in ``extra_metrics``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from collapsekit.distributed import shard
from collapsekit.metrics import MeanNLL
from collapsekit.pool import REAL, Pool
from collapsekit.capabilities import HiddenStates, Items, Sampler, StepFeatures, TokenSequences
from collapsekit.task import Task
from collapsekit.plugins.probes import distinct_n, effective_rank, tail_coverage, unigram_entropy
from collapsekit.plugins.sampling import sample_tokens


class CausalLMTask(Task, Sampler, TokenSequences, HiddenStates, StepFeatures, Items):
    """Token-sequence task on a randomly initialised ``transformers`` GPT-2."""

    pool_keys: ClassVar[tuple[str, ...]] = ("tokens",)
    #: the pool array that holds an item (what latent-space plugins encode)
    input_key: ClassVar[str] = "tokens"
    #: raw diversity (distinct-n, unigram entropy) is reported, not ranked: the real text sets its right
    #: level, and a collapsing model can be above it (spread-out mass) as well as below (repetition)
    higher_is_better: ClassVar[dict[str, bool | None]] = {
        "heldout_nll": False,
        "heldout_ppl": False,
        "distinct_1": None,
        "distinct_2": None,
        "unigram_entropy": None,
        "tail_coverage_1": True,
        "tail_coverage_2": True,
        "effective_rank": True,
    }

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        n_layer: int = 2,
        n_embd: int = 64,
        n_head: int = 2,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        eval_batch_size: int = 256,
    ) -> None:
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.vocab_size = vocab_size          # content tokens 0..V-1
        self.bos_id = vocab_size              # one extra id
        self.seq_len = seq_len                # content tokens per sequence (BOS excluded)
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.eval_batch_size = eval_batch_size
        self.train_tokens: np.ndarray | None = None
        self.heldout_tokens: np.ndarray | None = None

    # -- data ---------------------------------------------------------------
    def build_data(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(train, heldout)`` content tokens, each [N, seq_len] int64 in [0, V)."""
        raise NotImplementedError

    def setup(self, seed: int) -> None:
        super().setup(seed)
        train, heldout = self.build_data(seed)
        self.train_tokens = self.with_bos(train)
        self.heldout_tokens = self.with_bos(heldout)

    def with_bos(self, content: np.ndarray) -> np.ndarray:
        content = np.asarray(content, dtype=np.int64)
        bos = np.full((len(content), 1), self.bos_id, dtype=np.int64)
        return np.concatenate([bos, content], axis=1)

    def real_pool(self) -> Pool:
        return Pool.fresh({"tokens": self.train_tokens}, REAL)

    # -- model --------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        config = GPT2Config(
            vocab_size=self.vocab_size + 1,
            n_positions=self.seq_len + 1,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            bos_token_id=self.bos_id,
            eos_token_id=self.bos_id,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(config)

    def forward(self, model: torch.nn.Module, tokens: torch.Tensor, hidden_states: bool = False):
        """Model output on ``tokens[:, :-1]``; ``.logits[:, t]`` predicts ``tokens[:, t+1]``."""
        return model(input_ids=tokens[:, :-1], output_hidden_states=hidden_states)

    def step(self, model, batch, requirements):
        tokens = batch["tokens"]
        want_hidden = bool({"hidden_states", "features"} & set(requirements))
        out = self.forward(model, tokens, hidden_states=want_hidden)
        labels = tokens[:, 1:]
        loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
        result: dict[str, Any] = {"loss": loss, "logits": out.logits, "labels": labels}
        if want_hidden:
            result["hidden_states"] = out.hidden_states
            result["features"] = out.hidden_states[-1].mean(dim=1)
        return result

    @torch.no_grad()
    def token_logits(self, model: torch.nn.Module, tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits [N, T, V+1] where ``[:, t]`` is the prediction for ``tokens[:, t+1]``."""
        model.eval()
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.from_numpy(np.array(tokens, dtype=np.int64))   # a copy: pools are read-only memmaps
        parts = [self.forward(model, tokens[i:i + self.eval_batch_size]).logits
                 for i in range(0, len(tokens), self.eval_batch_size)]
        return torch.cat(parts)

    # -- synthesis ------------------------------------------------------------
    def sample(self, model, n, generator, temperature=1.0, top_k=0, top_p=1.0, **_):
        prompts = torch.full((n, 1), self.bos_id, dtype=torch.long)
        tokens = sample_tokens(model, prompts, self.seq_len, generator, temperature=temperature,
                               top_k=top_k, top_p=top_p, batch_size=self.eval_batch_size,
                               suppress=[self.bos_id])
        return {"tokens": tokens.numpy().astype(np.int64)}

    # -- probes ---------------------------------------------------------------
    @torch.no_grad()
    def heldout_nll(self, model: torch.nn.Module) -> float:
        """Mean per-token negative log-likelihood (nats) of the held-out real text (under DDP each
        process takes its :func:`~collapsekit.distributed.shard` of the sequences; the mean is reduced)."""
        model.eval()
        device = next(model.parameters()).device
        rows = shard(len(self.heldout_tokens))
        tokens = torch.as_tensor(self.heldout_tokens[rows.start:rows.stop])
        metric = MeanNLL().to(device)
        for i in range(0, len(tokens), self.eval_batch_size):
            chunk = tokens[i:i + self.eval_batch_size].to(device)
            logits = self.forward(model, chunk).logits
            labels = chunk[:, 1:]
            metric.update(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"),
                          labels.numel())
        return float(metric.compute())

    @torch.no_grad()
    def heldout_features(self, model: torch.nn.Module, limit: int = 512) -> torch.Tensor:
        """Mean-pooled last hidden state of up to ``limit`` held-out sequences."""
        model.eval()
        tokens = torch.as_tensor(self.heldout_tokens[:limit])
        return self.forward(model, tokens, hidden_states=True).hidden_states[-1].mean(1)

    def evaluate(self, model, samples):
        nll = self.heldout_nll(model)
        metrics = {"heldout_nll": nll, "heldout_ppl": float(np.exp(nll)),
                   "effective_rank": effective_rank(self.heldout_features(model))}
        if samples is not None and len(samples):
            gen = np.asarray(samples.arrays["tokens"])[:, 1:]
            ref = self.heldout_tokens[:, 1:]
            metrics.update(
                distinct_1=distinct_n(gen, 1),
                distinct_2=distinct_n(gen, 2),
                unigram_entropy=unigram_entropy(gen),
                tail_coverage_1=tail_coverage(ref, gen, n=1),
                tail_coverage_2=tail_coverage(ref, gen, n=2),
            )
        metrics.update(self.extra_metrics(model, samples))
        return metrics

    def extra_metrics(self, model: torch.nn.Module, samples: Pool | None) -> dict[str, float]:
        """Task-specific metrics added to :meth:`evaluate`."""
        return {}
