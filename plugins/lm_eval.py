"""``lm-eval``: lm-evaluation-harness on every generation's model, in memory.

After each generation, the trained model is wrapped, as it is in memory, in lm-eval's Hugging Face
model class (``HFLM(pretrained=model, tokenizer=...)``; nothing is saved or reloaded) with a copy of
the task's tokenizer, and ``lm_eval.simple_evaluate`` runs the tasks the run names. Every numeric
result lands in ``metrics.json`` (and so in the run's loggers) as ``lm_eval/<task>/<metric>``
(``lm_eval/<task>/<metric>/<filter>`` for a filter other than ``none``; ``..._stderr`` too when
lm-eval computes one). Tasks are lm-eval task or group names: lm-eval's own (``hellaswag``,
``arc_easy``, ...) or the ``task:`` names of YAML files under ``include_path``. When every task is
found under ``include_path``, lm-eval's ~15,000 built-in task configs are not indexed (that takes
about 15 CPU seconds).

Works with any task that declares :class:`~collapsekit.capabilities.TransformersLM` (a
``transformers`` causal LM and its tokenizer: every language task, ``hf-lm``, ``bible-lm``,
``markov-text``, ``multiplication``, ``facts-unlearning``); any other task stops the run before
training with one message. ``hf-lm`` and ``bible-lm`` (byte-level by default) encode any text; the
tokenizers of ``markov-text``, ``multiplication`` and ``facts-unlearning`` know only their own
words, so their lm-eval tasks must be written in those words (a YAML under ``include_path``).
Needs the harness: ``pip install 'collapsekit[lm-eval]'``.

Task data load as ``hf-lm``'s data do (:mod:`collapsekit.plugins.tasks.hub`): local data files, the
``datasets`` cache, or the Hub when it answers (with ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set or
the endpoint silent, the cache only). The tasks are loaded once when the run starts, so a dataset that
cannot be had stops it before anything trains. Under DDP the evaluation runs in global rank 0 alone and the others receive
its numbers (:func:`collapsekit.distributed.from_lead`). lm-eval seeds Python's, NumPy's and torch's
global generators (its fixed defaults, so numbers compare with other lm-eval runs); their states are
restored afterwards, so the run's own numbers do not depend on whether the plugin is active.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

from collapsekit.capabilities import TransformersLM, require
from collapsekit.distributed import from_lead
from collapsekit.errors import CollapsekitError, ConfigError, PluginError
from collapsekit.markers import hookimpl
from collapsekit.plugins.tasks import hub
from collapsekit.seeds import global_rng_states, set_global_rng_states

PLUGIN = "lm-eval"


def harness_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``simple_evaluate(...)["results"]`` as flat ``lm_eval/<task>/<metric>[/<filter>]`` numbers
    (entries without a filter, such as ``alias``, and non-finite or non-numeric values such as an
    ``"N/A"`` stderr, are left out)."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, kind = key.partition(",")
            if not kind or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            out[f"lm_eval/{task}/{metric}" + ("" if kind == "none" else f"/{kind}")] = float(value)
    return out


@contextlib.contextmanager
def _quiet_harness() -> Iterator[None]:
    """lm-eval's expected warnings (e.g. that the model is passed as an object) at ERROR only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class LMEval:
    """Evaluate every generation's model with lm-evaluation-harness.

    Args:
        tasks: lm-eval task or group names (lm-eval's own, or ``task:`` names of YAMLs under ``include_path``).
        include_path: folder (or folders) of your own lm-eval task YAMLs.
        limit: examples per task (a count, or a share below 1); ``None``: every example. lm-eval
            advises limits only for tests and quick looks.
        num_fewshot: few-shot examples per request (``None``: each task's default, else 0).
        batch_size: requests per forward pass (an integer, or ``"auto"``).
        add_bos_token: prepend the tokenizer's BOS to every request, as collapsekit's language tasks
            start every training row with it (``false``: the tokenizer's own behaviour, lm-eval's default).
        model_args: further ``lm_eval.models.huggingface.HFLM`` arguments (e.g. ``max_length``).
        evaluate_args: further ``lm_eval.simple_evaluate`` arguments (e.g. ``bootstrap_iters``,
            ``apply_chat_template``, ``gen_kwargs``, ``fewshot_random_seed``).
    """

    def __init__(self, tasks: Sequence[str], include_path: str | Sequence[str] | None = None,
                 limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int | str = 8,
                 add_bos_token: bool = True, model_args: Mapping[str, Any] | None = None,
                 evaluate_args: Mapping[str, Any] | None = None) -> None:
        if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"{PLUGIN}: tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
        reserved = {"model", "tasks", "limit", "num_fewshot", "task_manager", "batch_size"} & set(evaluate_args or {})
        if reserved:
            raise ConfigError(f"{PLUGIN}: set {sorted(reserved)} as the plugin's own arguments, not in evaluate_args")
        self.tasks = list(tasks)
        self.include_path = [include_path] if isinstance(include_path, str) else list(include_path or [])
        self.limit, self.num_fewshot, self.batch_size = limit, num_fewshot, batch_size
        self.add_bos_token = add_bos_token
        self.model_args = dict(model_args or {})
        self.evaluate_args = {"log_samples": False, **dict(evaluate_args or {})}
        self._manager: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without lm-eval's task index (rebuilt on first use in the receiving process)."""
        return {**self.__dict__, "_manager": None}

    # -- hooks ---------------------------------------------------------------------------------
    @hookimpl
    def configure(self, run):
        """Check the task, the harness and the lm-eval tasks (names and data) before anything trains."""
        require(run.task, TransformersLM, plugin=PLUGIN, why="evaluate its model with lm-evaluation-harness")
        try:
            from lm_eval.tasks import TaskManager
        except ImportError as exc:
            raise PluginError(f"{PLUGIN} needs lm-evaluation-harness, which does not import here ({exc}); "
                              "install it with: pip install 'collapsekit[lm-eval]'") from None
        self._manager = self._task_manager(TaskManager)
        offline = hub.offline_reason()
        with _quiet_harness(), hub.datasets_mode(offline=offline is not None, bars=False):
            try:
                self._manager.load(self.tasks)
            except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many types; one message each
                where = f"from the local caches only ({offline})" if offline else "from the Hub or the local caches"
                raise ConfigError(f"{PLUGIN}: cannot load the data of the lm-eval tasks {self.tasks} {where}: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}. "
                                  "Give local data files in the task YAML (dataset_path: json, dataset_kwargs: "
                                  "{data_files: ...}), or load the dataset once where the network is allowed so "
                                  "that it is in the datasets cache") from None

    @hookimpl
    def metrics(self, run, model, generation):
        return from_lead(lambda: self.evaluate(run.task, model))

    # -- the evaluation ----------------------------------------------------------------------------
    def evaluate(self, task: Any, model: Any) -> dict[str, float]:
        """lm-eval's metrics for ``model`` (in memory) with a copy of ``task.tokenizer``."""
        return harness_metrics(self.harness(task, model)["results"])

    def harness(self, task: Any, model: Any) -> dict[str, Any]:
        """What ``lm_eval.simple_evaluate`` returns for ``model`` (in memory) with a copy of ``task.tokenizer``."""
        import transformers
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        base = model.get_base_model() if hasattr(model, "get_base_model") else model     # peft-wrapped
        if not isinstance(base, transformers.PreTrainedModel):
            raise CollapsekitError(f"{PLUGIN}: task {getattr(task, 'name', type(task).__name__)!r} handed the "
                                   f"metrics hook a {type(model).__name__}, not a transformers causal LM; lm-eval "
                                   "evaluates transformers models only")
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            self._manager = self._task_manager(TaskManager)
        states = global_rng_states()
        try:
            with _quiet_harness(), hub.datasets_mode(offline=True, bars=False):   # fetched at configure: cached
                lm = HFLM(pretrained=model, tokenizer=self._tokenizer(task), batch_size=self.batch_size,
                          add_bos_token=self.add_bos_token, **self.model_args)
                out = simple_evaluate(lm, tasks=list(self.tasks), task_manager=self._manager, limit=self.limit,
                                      num_fewshot=self.num_fewshot, **self.evaluate_args)
        except Exception as exc:
            if "Missing [UNK] token" in str(exc):           # a word-level tokenizer met a word it does not know
                raise self._unknown_word_error(task) from None
            raise
        finally:
            set_global_rng_states(states)
        return out

    def _unknown_word_error(self, task: Any) -> ConfigError:
        ids, special = task.tokenizer.get_vocab(), set(task.tokenizer.all_special_tokens)
        vocab = [w for w in sorted(ids, key=ids.get) if w not in special]
        shown = " ".join(vocab[:8]) + (" ..." if len(vocab) > 8 else "")
        return ConfigError(f"{PLUGIN}: the text of lm-eval task(s) {', '.join(self.tasks)} has a word that task "
                           f"{getattr(task, 'name', type(task).__name__)!r}'s tokenizer does not know: it knows only "
                           f"the task's own {len(vocab)} words ({shown}); write the lm-eval task in those words, or "
                           "evaluate a task whose tokenizer encodes any text (hf-lm, bible-lm)")

    def _tokenizer(self, task: Any) -> Any:
        """A copy of the task's tokenizer (lm-eval may add a pad token), prepending BOS when asked."""
        tokenizer = copy.deepcopy(task.tokenizer)
        if self.add_bos_token:
            tokenizer.add_bos_token = True
            bos = tokenizer.bos_token_id
            specials = set(tokenizer.all_special_ids)
            probe = tokenizer.decode(next(([i] for i in range(len(tokenizer)) if i not in specials), []))
            if bos is None or tokenizer(probe)["input_ids"][:1] != [bos]:      # a text of the tokenizer's own words
                raise ConfigError(f"{PLUGIN}: the task's tokenizer ({type(tokenizer).__name__}) cannot be made to "
                                  "prepend a BOS token; set add_bos_token: false")
        return tokenizer

    def _task_manager(self, manager_class: Any) -> Any:
        """lm-eval's task index: only ``include_path`` when it holds every task, else also lm-eval's own;
        an unknown task name is one message with the closest names."""
        if self.include_path:
            local = manager_class(include_path=self.include_path, include_defaults=False)
            if not self._unknown(local):
                return local
        manager = manager_class(include_path=self.include_path or None)
        unknown = self._unknown(manager)
        if unknown:
            hints = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in unknown}
            shown = "; ".join(f"{n!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
            raise ConfigError(f"{PLUGIN}: unknown lm-eval task {shown}; list lm-eval's tasks with `lm-eval ls "
                              "tasks`, or give the folder of your task YAMLs as include_path")
        return manager

    def _unknown(self, manager: Any) -> list[str]:
        known = set(manager.all_tasks)
        return [name for name in self.tasks if name not in known]
