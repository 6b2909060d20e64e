"""``facts-unlearning``: learn facts about fictitious people, then unlearn some of them.

The world is generated from ``(world_seed, run seed)``: ``num_people`` people with a
unique (first name, last name) pair, each with a city, a job and a hobby drawn at
random. Every person is one fixed-format sequence of word tokens::

    <bos> F3 L17 born in C5 , works as J2 , likes H9 .

The *question* is the name (content positions 0-1), the *answer* is the rest
(positions 2-12: template words and the three attribute *values* at 4, 8, 11).
A share ``forget_share`` of the people is the **forget** split, the others the
**retain** split; ``heldout_people`` further people (never trained on) measure
fluency: their template words are predictable, their values are not.

Generations map onto an unlearning experiment (use ``run.init: previous``):

* generation 0 learns every fact: its pool is the real pool (all people);
* generation ``g >= 1`` is unlearning phase ``g``, starting from generation
  ``g - 1``'s weights. The task does not choose that pool: an unlearning plugin
  (``collapsekit-npo``: ``gradient-ascent``, ``npo``, ``npo-rt``) returns
  :meth:`FactsUnlearning.forget_pool` from ``compose_pool`` and draws retain
  items from :meth:`FactsUnlearning.retain_pool` itself. Without such a plugin
  (method ``baseline``) the engine's ``replace`` policy keeps fine-tuning on the
  model's own samples: no unlearning.

``forget_data`` contract (what a plugin requiring it may use): ``forget_pool()``,
``retain_pool()`` (real items; batches carry ``"example_id"``, the person's
stable index, and synthetic items have ``-1``) and ``answer_mask(batch)``, the
bool mask [N, T] over ``step``'s ``"labels"`` of the answer tokens.

Metrics (``evaluate``): ``forget_acc`` / ``retain_acc`` (share of attribute values
predicted right, teacher-forced argmax; chance is about ``1/n_cities``),
``forget_nll`` / ``retain_nll`` (mean NLL per value token, nats), ``template_nll``
(mean NLL of the template words of held-out people: fluency), ``sample_valid``
(share of sampled sequences that follow the fact grammar), plus the token-task
probes (``heldout_nll``, ``distinct_n``, ...).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from collapsekit.capabilities import TextItems
from collapsekit.plugins.tasks.language import CausalLMTask, ForgetRetainRows
from ._bench import CHEAP_SEEDS

TEMPLATE_WORDS = ("born", "in", ",", "works", "as", "likes", ".")
# content layout: the name (2 tokens, the question) then the answer; slot names mark values
LAYOUT = ("first", "last", "born", "in", "city", ",", "works", "as", "job", ",", "likes", "hobby", ".")
SEQ_LEN = len(LAYOUT)
NAME_POSITIONS = (0, 1)
VALUE_POSITIONS = (4, 8, 11)
TEMPLATE_POSITIONS = tuple(i for i, s in enumerate(LAYOUT) if s in TEMPLATE_WORDS)
ANSWER_POSITIONS = tuple(range(2, SEQ_LEN))


def _unlearn_args(lr: float, steps: int) -> dict:
    """The same unlearning budget for each of the unlearning methods."""
    args = {"lr": lr, "steps": steps}
    return {"gradient-ascent": args, "npo": args, "npo-rt": args, "simnpo": args}


class FactsUnlearning(CausalLMTask, ForgetRetainRows, TextItems):
    """Fictitious facts on a small GPT-2: learn all (generation 0), unlearn a forget split (generations >= 1)."""

    name: ClassVar[str] = "facts-unlearning"
    pool_keys: ClassVar[tuple[str, ...]] = ("example_id", "tokens")
    headline: ClassVar[tuple[str, ...]] = ("forget_acc", "retain_acc", "template_nll", "sample_valid")
    bench_methods: ClassVar[tuple[str, ...]] = ("gradient-ascent", "npo", "npo-rt", "simnpo")
    #: RESULTS.md also compares SimNPO with NPO, paired by seed (what dropping the reference model changes)
    bench_controls: ClassVar[dict[str, str]] = {"simnpo": "npo"}
    higher_is_better: ClassVar[dict[str, bool]] = {
        **CausalLMTask.higher_is_better,
        "forget_acc": False, "forget_nll": True, "retain_acc": True, "retain_nll": False,
        "template_nll": False, "sample_valid": True,
    }

    def __init__(
        self,
        num_people: int = 200,
        forget_share: float = 0.1,
        heldout_people: int = 100,
        n_first: int = 32,
        n_last: int = 32,
        n_cities: int = 16,
        n_jobs: int = 16,
        n_hobbies: int = 16,
        world_seed: int = 1234,
        n_layer: int = 2,
        n_embd: int = 64,
        n_head: int = 2,
        batch_size: int = 32,
        lr: float = 3e-3,
        eval_batch_size: int = 512,
        backend: str = "hf",
        vllm: dict[str, Any] | None = None,
    ) -> None:
        sizes = {"n_first": n_first, "n_last": n_last, "n_cities": n_cities, "n_jobs": n_jobs,
                 "n_hobbies": n_hobbies}
        for key, value in sizes.items():
            if value < 2:
                raise ValueError(f"{key} must be >= 2, got {value}")
        if num_people < 2:
            raise ValueError(f"num_people must be >= 2, got {num_people}")
        if heldout_people < 1:
            raise ValueError(f"heldout_people must be >= 1, got {heldout_people}")
        if num_people + heldout_people > n_first * n_last:
            raise ValueError(f"num_people + heldout_people = {num_people + heldout_people} exceeds the "
                             f"{n_first * n_last} distinct names; raise n_first or n_last")
        if not 0 < forget_share < 1 or not 1 <= round(forget_share * num_people) < num_people:
            raise ValueError(f"forget_share must leave at least one person in each split, got {forget_share} "
                             f"of {num_people} people")
        self.vocab = (list(TEMPLATE_WORDS) + [f"F{i}" for i in range(n_first)] + [f"L{i}" for i in range(n_last)]
                      + [f"C{i}" for i in range(n_cities)] + [f"J{i}" for i in range(n_jobs)]
                      + [f"H{i}" for i in range(n_hobbies)])
        super().__init__(len(self.vocab), SEQ_LEN, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                         batch_size=batch_size, lr=lr, eval_batch_size=eval_batch_size, backend=backend,
                         vllm=vllm)
        self.num_people, self.forget_share, self.heldout_people = num_people, forget_share, heldout_people
        self.sizes = sizes
        self.world_seed = world_seed
        self.word_id = {w: i for i, w in enumerate(self.vocab)}
        start = len(TEMPLATE_WORDS)
        self.ranges: dict[str, tuple[int, int]] = {}
        for slot, n in (("first", n_first), ("last", n_last), ("city", n_cities), ("job", n_jobs),
                        ("hobby", n_hobbies)):
            self.ranges[slot] = (start, start + n)
            start += n
        self.forget_ids: np.ndarray | None = None
        self.retain_ids: np.ndarray | None = None

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"num_people": 64, "heldout_people": 32, "n_first": 16, "n_last": 16,
                           "n_cities": 8, "n_jobs": 8, "n_hobbies": 8, "forget_share": 0.125,
                           "n_layer": 1, "n_embd": 32, "batch_size": 32, "lr": 2e-2},
                  "trainer": {"max_steps": 300}, "generations": 4, "init": "previous",
                  "samples_per_generation": 64, "plugin_args": _unlearn_args(1e-3, 20)},
        "cpu": {"task": {"num_people": 200, "heldout_people": 100},
                "trainer": {"max_steps": 1100}, "generations": 6, "init": "previous",
                "samples_per_generation": 256, "plugin_args": _unlearn_args(3e-4, 20), "seeds": CHEAP_SEEDS},
        "gpu": {"task": {"num_people": 2000, "heldout_people": 500, "n_first": 64, "n_last": 64,
                         "n_cities": 64, "n_jobs": 64, "n_hobbies": 64, "n_layer": 4, "n_embd": 256,
                         "n_head": 4, "batch_size": 64, "lr": 1e-3},
                "trainer": {"max_steps": 20000}, "generations": 11, "init": "previous",
                "samples_per_generation": 2000, "plugin_args": _unlearn_args(1e-4, 20)},
    }
    """Run settings per bench preset:
    ``smoke`` (tests, seconds), ``cpu`` (1 learning + 5 unlearning generations, about
    10 s per method-seed on one core) and ``gpu``."""

    # -- data ---------------------------------------------------------------
    def world(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """People ``[num_people + heldout_people, 5]`` (first, last, city, job, hobby word ids) and the
        forget mask over the first ``num_people`` rows, both drawn from ``(world_seed, seed)``."""
        rng = np.random.default_rng([self.world_seed, seed])
        total = self.num_people + self.heldout_people
        nf, nl = self.sizes["n_first"], self.sizes["n_last"]
        names = rng.choice(nf * nl, size=total, replace=False)
        cols = [self.ranges["first"][0] + names // nl, self.ranges["last"][0] + names % nl]
        for slot in ("city", "job", "hobby"):
            lo, hi = self.ranges[slot]
            cols.append(rng.integers(lo, hi, size=total))
        people = np.stack(cols, axis=1).astype(np.int64)
        forget = np.zeros(self.num_people, dtype=bool)
        forget[rng.choice(self.num_people, size=int(round(self.forget_share * self.num_people)),
                          replace=False)] = True
        return people, forget

    def render(self, people: np.ndarray) -> np.ndarray:
        """Content tokens [N, SEQ_LEN] of ``people`` [N, 5] in the fact template."""
        out = np.empty((len(people), SEQ_LEN), dtype=np.int64)
        values = {"first": 0, "last": 1, "city": 2, "job": 3, "hobby": 4}
        for pos, slot in enumerate(LAYOUT):
            out[:, pos] = people[:, values[slot]] if slot in values else self.word_id[slot]
        return out

    def build_data(self, seed):
        people, forget = self.world(seed)
        self.forget_ids = np.flatnonzero(forget)
        self.retain_ids = np.flatnonzero(~forget)
        tokens = self.render(people)
        return tokens[:self.num_people], tokens[self.num_people:]

    @staticmethod
    def answer_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Bool [N, SEQ_LEN] over ``step``'s labels: True on the answer (every token after the name)."""
        n = len(batch["tokens"])
        mask = torch.zeros(n, SEQ_LEN, dtype=torch.bool, device=batch["tokens"].device)
        mask[:, list(ANSWER_POSITIONS)] = True
        return mask

    # -- probes ---------------------------------------------------------------
    def token_stats(self, model: torch.nn.Module, tokens: np.ndarray, positions: tuple[int, ...]
                    ) -> tuple[float, float]:
        """Mean NLL (nats) and argmax accuracy of ``tokens`` (BOS first) at content ``positions``."""
        mask = torch.zeros(len(tokens), SEQ_LEN, dtype=torch.bool)
        mask[:, list(positions)] = True
        return self.masked_stats(model, tokens, mask)

    def valid_share(self, content: np.ndarray) -> float:
        """Share of content rows [N, SEQ_LEN] that follow the fact grammar (each slot of its kind)."""
        if len(content) == 0:
            return 0.0
        ok = np.ones(len(content), dtype=bool)
        for pos, slot in enumerate(LAYOUT):
            col = content[:, pos]
            if slot in self.ranges:
                lo, hi = self.ranges[slot]
                ok &= (col >= lo) & (col < hi)
            else:
                ok &= col == self.word_id[slot]
        return float(ok.mean())

    def extra_metrics(self, model, samples):
        forget = self.train_tokens[self.forget_ids]
        retain = self.train_tokens[self.retain_ids]
        f_nll, f_acc = self.token_stats(model, forget, VALUE_POSITIONS)
        r_nll, r_acc = self.token_stats(model, retain, VALUE_POSITIONS)
        t_nll, _ = self.token_stats(model, self.heldout_tokens, TEMPLATE_POSITIONS)
        metrics = {"forget_acc": f_acc, "forget_nll": f_nll, "retain_acc": r_acc, "retain_nll": r_nll,
                   "template_nll": t_nll}
        if samples is not None and len(samples):
            metrics["sample_valid"] = self.valid_share(np.asarray(samples.arrays["tokens"])[:, 1:])
        return metrics

    def token_names(self) -> list[str]:
        """The words: template words, then first names ``F<i>``, last names ``L<i>``, cities, jobs, hobbies."""
        return list(self.vocab)
