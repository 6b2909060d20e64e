"""The one ``transformers`` code path of every language task.

:class:`LanguageTask` owns what a language task does with its model: build it from a
``transformers`` config (``AutoModelForCausalLM.from_config``), train it (:meth:`~LanguageTask.forward`,
:meth:`~LanguageTask.step`), read its next-token predictions (:meth:`~LanguageTask.token_logits`),
sample it (:func:`collapsekit.plugins.sampling.sample_tokens`; ``model.generate`` for beams and
penalties), score held-out text (:class:`~collapsekit.metrics.MeanNLL`, each process its
:func:`~collapsekit.distributed.shard` under DDP), and save each generation as ``gen_<k>/model/``:
``save_pretrained`` safetensors plus the task's tokenizer, so that
``AutoModelForCausalLM.from_pretrained(run_dir / "gen_<k>" / "model")`` and
``AutoTokenizer.from_pretrained`` of the same folder open it (and ``gen_<k>/samples.jsonl`` holds the
decoded samples). ``backend: vllm`` samples and scores with a vLLM engine over that saved folder instead
(:meth:`~LanguageTask.inference_backend`, :mod:`collapsekit.plugins.vllm_backend`). Tasks differ in their
data, probes and presets:

* :class:`CausalLMTask`, the base of the built-in token tasks (``markov-text``, ``bible-lm``,
  ``multiplication``, ``facts-unlearning``): a GPT-2 from scratch (``GPT2Config``) over a vocabulary
  of ``vocab_size`` content ids plus BOS, rows built by the subclass (:meth:`CausalLMTask.build_data`),
  and a tokenizer (:meth:`CausalLMTask.build_tokenizer`: one word per id by default, bible-lm's bytes);
* ``hf-lm`` (:class:`~collapsekit.plugins.tasks.hf_lm.HFCausalLM`): any transformers model and corpus.

Pools hold ``tokens`` [N, T] int64 whose first column is the BOS id. Run folders written before
this layout (``gen_<k>/model.pt``, a GPT-2 state dict) still resume: :meth:`~LanguageTask.load_model`
reads them.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from collapsekit.capabilities import (ForgetRetain, HiddenStates, Items, Sampler, StepFeatures, TokenSequences,
                                      TransformersLM)
from collapsekit.distributed import shard
from collapsekit.errors import ConfigError
from collapsekit.fileio import atomic_write_bytes
from collapsekit.metrics import MeanNLL
from collapsekit.plugins.probes import distinct_n, effective_rank, repetition, tail_coverage, unigram_entropy
from collapsekit.plugins.sampling import sample_tokens
from collapsekit.plugins.tasks.hf_data import load_hf, quiet_transformers, word_tokenizer
from collapsekit.plugins.vllm_backend import VLLMBackend, save_for_engine
from collapsekit.pool import REAL, Pool
from collapsekit.task import Task, legacy_state_dict, save_pretrained

SAMPLER_KEYS = ("temperature", "top_k", "top_p")
GENERATE_KEYS = ("num_beams", "repetition_penalty", "no_repeat_ngram_size")
IGNORE = -100
"""Label of a position left out of the loss (the ``LabelledLogits`` convention)."""


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode without gradients; its training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class LanguageTask(Task, Sampler, TokenSequences, HiddenStates, StepFeatures, Items, TransformersLM):
    """A causal language model task on the ``transformers`` path (see the module docstring). Every such task
    declares :class:`~collapsekit.capabilities.TransformersLM` (its model is a transformers causal LM over
    ``tokenizer``), so plugins that need one (``lm-eval``) serve every language task.

    A subclass sets, before :meth:`build_model`: ``model_config`` (a ``PretrainedConfig``),
    ``tokenizer``, ``bos_id``, ``pad_id``, ``vocab_size`` (content ids), ``logits_size`` (the model's
    vocabulary), ``context`` (its positions, or ``None``), ``suppress`` (ids the sampler never draws),
    ``n_layer``, ``eval_batch_size``, ``width`` (pool row width, BOS included) and ``inference``
    (:meth:`inference_backend`); and in ``setup``: ``train_tokens`` and ``heldout_tokens`` (rows starting
    with BOS).
    """

    pool_keys: ClassVar[tuple[str, ...]] = ("tokens",)
    #: the pool array that holds an item (what latent-space plugins encode)
    input_key: ClassVar[str] = "tokens"
    #: raw diversity (distinct-n, unigram entropy) and within-sample repetition are reported, not ranked:
    #: the real text sets their right level, and a collapsing model can be above it (spread-out mass,
    #: accumulated noise) as well as below (repetition, loops)
    higher_is_better: ClassVar[dict[str, bool | None]] = {
        "heldout_nll": False, "heldout_ppl": False, "effective_rank": True,
        "distinct_1": None, "distinct_2": None, "distinct_3": None, "unigram_entropy": None,
        "tail_coverage_1": True, "tail_coverage_2": True, "repetition": None,
    }
    #: held-out rows whose mean-pooled last hidden state gives ``effective_rank``
    rank_samples: ClassVar[int] = 256
    #: label ignored by the loss and the held-out NLL (``hf-lm``: its pad id)
    ignore_index: int = IGNORE
    # model settings (``hf-lm`` sets them from torch_dtype, gradient_checkpointing, lora)
    dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False
    lora: Any = None
    # synthesis: ``empty`` samples whole rows after BOS; ``generation`` overrides the ancestral plugin's settings
    prompt: str = "empty"
    prompt_tokens: int = 0
    generation: Mapping[str, Any] = {}
    #: the vLLM backend (``backend: vllm``); ``None``: the built-in sampler and the model's own forward pass
    inference: VLLMBackend | None = None
    context: int | None = None
    train_tokens: np.ndarray | None = None
    heldout_tokens: np.ndarray | None = None

    # -- data -------------------------------------------------------------------------
    def with_bos(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` [N, T] int64 with a BOS column in front: [N, T + 1]."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.concatenate([np.full((len(rows), 1), self.bos_id, dtype=np.int64), rows], axis=1)

    def real_pool(self) -> Pool:
        """The training rows (with ``example_id`` = row index when the task's pools carry it)."""
        arrays = {"tokens": self.train_tokens}
        if "example_id" in self.pool_keys:
            arrays["example_id"] = np.arange(len(self.train_tokens), dtype=np.int64)
        return Pool.fresh(arrays, REAL)

    def decode(self, items: np.ndarray) -> list[str]:
        """Text of token rows (BOS column dropped, special tokens skipped)."""
        rows = np.asarray(items)[:, 1:]
        return self.tokenizer.batch_decode(rows.tolist(), skip_special_tokens=True)

    # -- model ------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """A fresh init of ``model_config`` (the engine seeds the global RNG first)."""
        from transformers import AutoModelForCausalLM

        self.release_inference()
        quiet_transformers()
        return self.prepare(AutoModelForCausalLM.from_config(self.model_config))

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Cast to ``dtype``, enable gradient checkpointing and wrap with fresh LoRA adapters as configured;
        in train mode (``from_pretrained`` returns eval mode, which would switch dropout off in training)."""
        model = model.to(self.dtype).train()
        if self.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):            # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, copy.deepcopy(self.lora))
        return model

    def save_model(self, model: torch.nn.Module, directory: Path) -> list[str]:
        """``model/`` = ``save_pretrained`` (safetensors; LoRA merged into the weights) plus the tokenizer; with
        ``backend: vllm`` the engine of ``model`` loads that folder."""
        quiet_transformers()
        files = save_pretrained(directory, self.plain(model), self.tokenizer)
        if self.inference is not None:
            self.inference.remember(model, Path(directory) / "model")
        return files

    def plain(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as a plain transformers model (a merged copy when LoRA adapters are trained)."""
        return copy.deepcopy(model).merge_and_unload() if self.lora is not None else model

    def load_model(self, directory: Path) -> torch.nn.Module:
        """The model saved by :meth:`save_model` (merged weights; fresh LoRA adapters when ``lora`` is set);
        a folder of an earlier collapsekit holding ``model.pt`` (a state dict) is read into :meth:`build_model`."""
        from transformers import AutoModelForCausalLM

        self.release_inference()
        state = legacy_state_dict(directory)
        if state is not None:
            model = self.build_model()
            model.load_state_dict(state)
            return model
        path = Path(directory) / "model"
        return self.prepare(load_hf(AutoModelForCausalLM.from_pretrained, str(path), "model", dtype=self.dtype))

    def write_samples(self, samples: Pool, directory: Path) -> list[str]:
        """``samples.jsonl``: one ``{"text", "origin_generation", "origin_index"}`` line per sample."""
        texts = self.decode(np.asarray(samples.arrays["tokens"])) if len(samples) else []
        lines = [json.dumps({"text": t, "origin_generation": int(g), "origin_index": int(i)}, ensure_ascii=False)
                 for t, g, i in zip(texts, samples.origin_generation, samples.origin_index)]
        atomic_write_bytes(Path(directory) / "samples.jsonl", "".join(line + "\n" for line in lines).encode("utf8"))
        return ["samples.jsonl"]

    def configure_optimizers(self, model: torch.nn.Module) -> Any:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # -- training ---------------------------------------------------------------------
    def forward(self, model: torch.nn.Module, tokens: torch.Tensor, hidden_states: bool = False) -> Any:
        """Model output on ``tokens[:, :-1]`` (on the model's device); ``.logits[:, t]`` predicts ``tokens[:, t+1]``.

        ``use_cache`` stays the model's default: with ``use_cache=False`` and no cache, transformers (5.19) checks
        the position ids for packed sequences with a host sync in every forward pass."""
        tokens = tokens.to(model_device(model))
        return model(input_ids=tokens[:, :-1], output_hidden_states=hidden_states)

    def labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token targets ``tokens[:, 1:]`` of :meth:`forward`'s logits (a subclass may set left-out
        positions to ``ignore_index``)."""
        return tokens[:, 1:]

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """One vector per row of a last hidden state [N, T, D]: the mean over positions."""
        return hidden.mean(dim=1)

    def step(self, model, batch, requirements):
        """Next-token cross-entropy over :meth:`labels` (``ignore_index`` left out); ``logits``/``labels`` and,
        when asked, ``hidden_states`` and ``features`` (:meth:`pooled` last hidden state)."""
        tokens = batch["tokens"]
        want_hidden = bool({"hidden_states", "features"} & set(requirements))
        out = self.forward(model, tokens, hidden_states=want_hidden)
        labels = self.labels(tokens).to(out.logits.device)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=self.ignore_index)
        result: dict[str, Any] = {"loss": loss, "logits": out.logits, "labels": labels}
        if want_hidden:
            result["hidden_states"] = out.hidden_states
            result["features"] = self.pooled(out.hidden_states[-1])
        return result

    def token_logits(self, model: torch.nn.Module, tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits [N, T-1, V'] (no grad); ``[:, t]`` predicts ``tokens[:, t+1]``."""
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.from_numpy(np.array(tokens, dtype=np.int64))    # a copy: pools are read-only memmaps
        with evaluating(model):
            return torch.cat([self.forward(model, tokens[i:i + self.eval_batch_size]).logits
                              for i in range(0, len(tokens), self.eval_batch_size)])

    # -- synthesis --------------------------------------------------------------------
    def sample(self, model, n, generator, **options):
        """``n`` rows of the pool width: BOS (+ a real prefix with ``prompt: train_prefix``) and sampled tokens.

        ``options`` (the ancestral plugin's ``temperature``/``top_k``/``top_p``) apply unless
        ``generation`` sets them. Draws only from ``generator``.
        """
        settings = {**{k: v for k, v in options.items() if k in SAMPLER_KEYS}, **self.generation}
        prompts = torch.as_tensor(self.prompt_rows(n, generator))
        new = self.width - prompts.shape[1]
        tokens = self.continuation(model, prompts, new, generator, settings)
        out = {"tokens": tokens.numpy().astype(np.int64)}
        if "example_id" in self.pool_keys:
            out["example_id"] = np.full(n, -1, dtype=np.int64)
        return out

    def continuation(self, model, prompts: torch.Tensor, new: int, generator: torch.Generator,
                     settings: Mapping[str, Any]) -> torch.Tensor:
        """``prompts`` [n, P] continued by ``new`` sampled tokens: collapsekit's KV-cache sampler for plain
        sampling, :meth:`generate` for beams or penalties; with ``backend: vllm`` the vLLM engine of ``model``,
        one request per prompt seeded with one draw per item from ``generator`` (so items differ, and the same
        generator gives the same rows)."""
        if self.inference is not None:
            seeds = torch.randint(2 ** 63 - 1, (len(prompts),), generator=generator).tolist()
            return torch.as_tensor(self.engine(model).generate(
                prompts.tolist(), new, seeds, self.suppress, temperature=settings.get("temperature", 1.0),
                top_k=settings.get("top_k", 0), top_p=settings.get("top_p", 1.0),
                repetition_penalty=settings.get("repetition_penalty", 1.0)))
        plain = settings.get("num_beams", 1) == 1 and settings.get("repetition_penalty", 1.0) == 1.0 \
            and not settings.get("no_repeat_ngram_size")
        if not plain:
            return self.generate(model, prompts, new, generator, settings)
        return sample_tokens(model, prompts, new, generator, temperature=settings.get("temperature", 1.0),
                             top_k=settings.get("top_k", 0), top_p=settings.get("top_p", 1.0),
                             batch_size=self.eval_batch_size, suppress=self.suppress)

    # -- inference backend ------------------------------------------------------------
    def inference_backend(self, backend: str, vllm: Mapping[str, Any] | None) -> VLLMBackend | None:
        """The vLLM backend (``backend: vllm``), or ``None`` for the built-in path (``hf``); one error line for
        settings vLLM cannot honour (call it after ``generation`` and ``dtype`` are set)."""
        if backend not in ("hf", "vllm"):
            raise ConfigError(f"{self.name}: backend must be 'hf' or 'vllm', got {backend!r}")
        if backend == "hf":
            if vllm is not None:
                raise ConfigError(f"{self.name}: vllm settings are given but backend is 'hf'; set backend: vllm or "
                                  "drop vllm")
            return None
        beams = self.generation.get("num_beams", 1) != 1
        if beams or self.generation.get("no_repeat_ngram_size"):
            setting = "num_beams" if beams else "no_repeat_ngram_size"
            raise ConfigError(f"{self.name}: backend vllm cannot honour generation.{setting} (vLLM's sampling has "
                              f"no {'beam search' if beams else 'n-gram blocking'}); drop it or use backend: hf")
        return VLLMBackend(vllm, self.dtype, what=self.name)

    def engine(self, model: torch.nn.Module):
        """The vLLM engine serving ``model`` (its saved ``gen_<k>/model/``, or a temporary copy)."""
        width = self.width + 1                          # scoring a full row asks for one token more
        context = min(width, self.context) if self.context else width
        return self.inference.engine_for(model, lambda d: save_for_engine(self.plain(model), self.tokenizer, d),
                                         max_model_len=context)

    def release_inference(self) -> None:
        """Shut down the inference engine, if any (before measuring and before the next model trains)."""
        if self.inference is not None:
            self.inference.release()

    def token_scores(self, model, tokens, k):
        """Scores of ``tokens`` over the content ids: from the model's logits, or vLLM's ``prompt_logprobs``.
        vLLM scores a row only with room for one generated token after it, so rows as long as the model's
        context (the built-in tasks' GPT-2 has exactly one row of positions) are scored from the logits."""
        if self.inference is None or (self.context is not None and np.shape(tokens)[1] >= self.context):
            return super().token_scores(model, tokens, k)
        return self.engine(model).score(np.asarray(tokens), k, self.vocab_size, self.logits_size)

    def prompt_rows(self, n: int, generator: torch.Generator) -> np.ndarray:
        """[n, 1 + prompt_tokens]: BOS, or BOS + the first ``prompt_tokens`` of real rows (picked by a permutation
        from ``generator``, cycled when ``n`` exceeds the real rows)."""
        if self.prompt == "empty":
            return np.full((n, 1), self.bos_id, dtype=np.int64)
        real = self.train_tokens
        order = torch.randperm(len(real), generator=generator).numpy()
        return np.asarray(real[np.resize(order, n), : 1 + self.prompt_tokens], dtype=np.int64)

    def generate(self, model, prompts: torch.Tensor, new: int, generator: torch.Generator,
                 settings: Mapping[str, Any]) -> torch.Tensor:
        """``model.generate`` for beams / penalties: exactly ``new`` tokens, ``suppress`` ids never drawn, global
        RNG seeded from ``generator`` inside ``fork_rng`` (the caller's RNG state is untouched)."""
        from transformers import GenerationConfig

        temperature = settings.get("temperature", 1.0)
        config = GenerationConfig(
            max_new_tokens=new, min_new_tokens=new, do_sample=temperature > 0,
            num_beams=settings.get("num_beams", 1), repetition_penalty=settings.get("repetition_penalty", 1.0),
            no_repeat_ngram_size=settings.get("no_repeat_ngram_size", 0),
            **({"temperature": temperature, "top_k": settings.get("top_k", 0), "top_p": settings.get("top_p", 1.0)}
               if temperature > 0 else {}),
            suppress_tokens=self.suppress, pad_token_id=self.pad_id, bos_token_id=self.bos_id,
            eos_token_id=None)
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        device = model_device(model)
        parts = []
        with evaluating(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for i in range(0, len(prompts), self.eval_batch_size):
                chunk = prompts[i:i + self.eval_batch_size].to(device)
                out = model.generate(input_ids=chunk, attention_mask=torch.ones_like(chunk),
                                     generation_config=config)
                parts.append(out[:, : chunk.shape[1] + new].cpu())
        return torch.cat(parts)

    # -- probes -------------------------------------------------------------------------
    def heldout_nll(self, model: torch.nn.Module) -> float:
        """Mean NLL (nats) per :meth:`labels` token of the held-out rows (``ignore_index`` left out; under DDP
        each process takes its :func:`~collapsekit.distributed.shard` of the rows and the mean is reduced)."""
        metric = MeanNLL().to(model_device(model))
        rows = shard(len(self.heldout_tokens))
        with evaluating(model):
            for i in range(rows.start, rows.stop, self.eval_batch_size):
                chunk = torch.as_tensor(self.heldout_tokens[i:min(i + self.eval_batch_size, rows.stop)])
                logits = self.forward(model, chunk).logits.float()
                labels = self.labels(chunk).to(logits.device)
                nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=self.ignore_index,
                                      reduction="sum")
                metric.update(nll, (labels != self.ignore_index).sum())
        return float(metric.compute())

    def heldout_rank(self, model: torch.nn.Module, limit: int | None = None) -> float:
        """Effective rank of the :meth:`pooled` last hidden state of up to ``limit`` (``rank_samples``) held-out
        rows."""
        tokens = torch.as_tensor(self.heldout_tokens[:limit or self.rank_samples])
        with evaluating(model):
            features = torch.cat([self.pooled(self.forward(model, tokens[i:i + self.eval_batch_size], True)
                                              .hidden_states[-1].float()).cpu()
                                  for i in range(0, len(tokens), self.eval_batch_size)])
        return effective_rank(features)

    def masked_stats(self, model: torch.nn.Module, tokens: np.ndarray | torch.Tensor, mask: torch.Tensor
                     ) -> tuple[float, float]:
        """Mean NLL (nats) and teacher-forced argmax accuracy of the labels of ``tokens`` where ``mask``
        [N, T-1] is true."""
        tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        logp = torch.log_softmax(self.token_logits(model, tokens).float().cpu(), -1)
        labels = tokens[:, 1:]
        nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        acc = (logp.argmax(-1) == labels).float()
        return float(nll[mask].mean()), float(acc[mask].mean())

    def generated(self, samples: Pool) -> np.ndarray:
        """The sampled tokens of a pool's rows (BOS and prompt dropped)."""
        return np.asarray(samples.arrays["tokens"])[:, 1 + self.prompt_tokens:]

    def evaluate(self, model, samples):
        """Held-out ``heldout_nll`` / ``heldout_ppl`` / ``effective_rank`` (and ``heldout_bpb`` where the task has
        :meth:`bits_per_byte`); of the samples' generated tokens: ``distinct_1/2/3``, ``unigram_entropy``,
        ``tail_coverage_1/2`` (rare held-out n-grams still produced) and ``repetition`` (1 - distinct 4-grams /
        4-grams within each sample, averaged); then :meth:`extra_metrics`. The inference engine is shut down first."""
        self.release_inference()
        nll = self.heldout_nll(model)
        metrics = {"heldout_nll": nll, "heldout_ppl": float(np.exp(min(nll, 700.0))),
                   "effective_rank": self.heldout_rank(model)}
        bpb = self.bits_per_byte(nll)
        if bpb is not None:
            metrics["heldout_bpb"] = bpb
        if samples is not None and len(samples):
            gen = self.generated(samples)
            ref = self.heldout_tokens[:, 1:]
            metrics.update({f"distinct_{n}": distinct_n(gen, n, ignore=self.pad_id) for n in (1, 2, 3)})
            metrics["unigram_entropy"] = unigram_entropy(gen, ignore=self.pad_id)
            metrics.update({f"tail_coverage_{n}": tail_coverage(ref, gen, n=n) for n in (1, 2)})
            metrics["repetition"] = repetition(gen, 4, ignore=self.pad_id)
        metrics.update(self.extra_metrics(model, samples))
        return metrics

    def bits_per_byte(self, nll: float) -> float | None:
        """Held-out ``heldout_bpb`` of the mean token NLL ``nll``; ``None`` (not reported) where tokens are not text."""
        return None

    def extra_metrics(self, model: torch.nn.Module, samples: Pool | None) -> dict[str, float]:
        """Task-specific metrics added to :meth:`evaluate`."""
        return {}


class ForgetRetainRows(ForgetRetain):
    """Forget / retain splits as index arrays ``forget_ids`` / ``retain_ids`` into the real pool (set in ``setup``)."""

    forget_ids: np.ndarray | None = None
    retain_ids: np.ndarray | None = None

    def _split(self, ids: np.ndarray | None) -> Pool:
        if ids is None:
            raise RuntimeError("call setup(seed) before asking for the forget or retain split")
        return self.real_pool().select(ids)

    def forget_pool(self) -> Pool:
        """The rows to unlearn (real items; ``example_id`` = index in the real pool)."""
        return self._split(self.forget_ids)

    def retain_pool(self) -> Pool:
        """The rows to keep (real items; ``example_id`` = index in the real pool)."""
        return self._split(self.retain_ids)


class CausalLMTask(LanguageTask):
    """Token-sequence task on a GPT-2 trained from scratch (``GPT2Config``, no dropout).

    Content ids are ``0 .. vocab_size - 1`` and BOS is ``vocab_size``; rows are ``seq_len`` content
    tokens after BOS. Subclasses provide the data (:meth:`build_data`), may name the ids
    (:meth:`token_names`) or give their own tokenizer (:meth:`build_tokenizer`), and add probes in
    :meth:`extra_metrics`. ``backend`` (``hf`` or ``vllm``) and ``vllm`` (``vllm.LLM`` arguments) choose the
    inference backend (:meth:`LanguageTask.inference_backend`).
    """

    #: held-out rows of ``effective_rank``
    rank_samples: ClassVar[int] = 512

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
        backend: str = "hf",
        vllm: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.vocab_size = vocab_size          # content tokens 0..V-1
        self.bos_id = self.pad_id = vocab_size    # one extra id
        self.suppress = [self.bos_id]
        self.seq_len = seq_len                # content tokens per sequence (BOS excluded)
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.eval_batch_size = eval_batch_size
        self.inference = self.inference_backend(backend, vllm)

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The task's tokenizer (:meth:`build_tokenizer`), built when first used."""
        return self.build_tokenizer()

    @property
    def width(self) -> int:
        """Pool row width: BOS + ``seq_len`` content tokens."""
        return self.seq_len + 1

    @property
    def context(self) -> int:
        """The model's positions (``n_positions``): one row."""
        return self.seq_len + 1

    @property
    def logits_size(self) -> int:
        """The model's vocabulary: the content ids and BOS."""
        return self.vocab_size + 1

    @property
    def model_config(self) -> Any:
        """The ``GPT2Config`` of the current sizes (``seq_len + 1`` positions; dropout off)."""
        from transformers import GPT2Config

        quiet_transformers()
        return GPT2Config(
            vocab_size=self.vocab_size + 1, n_positions=self.seq_len + 1, n_embd=self.n_embd,
            n_layer=self.n_layer, n_head=self.n_head, bos_token_id=self.bos_id, eos_token_id=self.bos_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

    def token_names(self) -> list[str]:
        """The text of each content id (default: the id's digits)."""
        return [str(i) for i in range(self.vocab_size)]

    def build_tokenizer(self) -> Any:
        """The tokenizer saved with each generation's model: one word per content id
        (:meth:`token_names`, whitespace-separated) and ``<bos>`` = ``vocab_size``."""
        return word_tokenizer(self.token_names())

    # -- data ---------------------------------------------------------------
    def build_data(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(train, heldout)`` content tokens, each [N, seq_len] int64 in [0, V)."""
        raise NotImplementedError

    def setup(self, seed: int) -> None:
        super().setup(seed)
        train, heldout = self.build_data(seed)
        self.train_tokens = self.with_bos(train)
        self.heldout_tokens = self.with_bos(heldout)
