"""Task capabilities: what a plugin may rely on a task to do, declared by subclassing.

A capability is an abstract base class with a docstring contract. A task *declares*
it by inheriting from it (nominal typing: a method that merely has the right name,
such as an ``encode(a, b)`` that means something else, never counts), and
:attr:`collapsekit.task.Task.provides` is derived from the capabilities it inherits.

A plugin checks what it needs in its ``configure`` hook with :func:`require`, which
stops the run *before anything trains* with one message naming the capability, the
task and the plugin. Plugins may also ask for a capability by name through the
``requirements`` hook (the names in :data:`CAPABILITIES`, plus the engine-provided
:data:`ENGINE_REQUIREMENTS`).
"""
from __future__ import annotations

import abc
import dataclasses
import difflib
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import TaskIncompatible


class Capability(abc.ABC):
    """Base of every capability; ``requirement`` is its name in ``Task.provides`` and ``requirements``."""

    requirement: ClassVar[str] = ""


class Sampler(Capability):
    """The task can draw new items from a trained model (ancestral sampling).

    ``sample(model, n, generator, **options)`` returns ``dict[str, numpy.ndarray]`` with the
    task's ``pool_keys``, ``n`` items each, drawing randomness only from ``generator``.
    """

    requirement = "sampler"

    @abc.abstractmethod
    def sample(self, model: torch.nn.Module, n: int, generator: torch.Generator, **options: Any
               ) -> dict[str, np.ndarray]:
        """Draw ``n`` items from ``model``."""


class LabelledLogits(Capability):
    """The task's ``step`` returns class scores and their targets.

    Outputs ``"logits"`` ``[..., C]`` and ``"labels"`` ``[...]`` (class indices, ``-100`` for
    positions left out): what a replacement of the cross-entropy (label smoothing, MaxSup)
    needs.
    """

    requirement = "logits"


class TokenSequences(LabelledLogits):
    """Items are token sequences, and the model predicts the next token.

    * pools hold ``"tokens"``: ``int64 [N, T]`` whose first column is a BOS id;
    * ``vocab_size`` content ids are ``0 .. vocab_size - 1``; ids ``>= vocab_size`` (BOS,
      specials) are never content;
    * ``eval_batch_size``: rows per forward pass for evaluation-style work;
    * :meth:`token_logits` gives the prediction of every next token;
    * the task's ``step`` returns ``"logits"`` ``[N, T-1, V']`` and ``"labels"`` ``[N, T-1]``
      (``logits[:, t]`` predicts ``labels[:, t] = tokens[:, t+1]``).
    """

    requirement = "tokens"
    vocab_size: int
    eval_batch_size: int

    @abc.abstractmethod
    def token_logits(self, model: torch.nn.Module, tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits ``[N, T-1, V']`` of ``tokens [N, T]`` (no grad): ``[:, t]`` predicts ``tokens[:, t+1]``."""

    def token_scores(self, model: torch.nn.Module, tokens: np.ndarray | torch.Tensor, k: int) -> TokenScores:
        """:class:`TokenScores` of ``tokens [N, T]`` with the ``k`` most likely content ids per position.

        Default: from :meth:`token_logits` (ids ``>= vocab_size`` masked out before the softmax). A task
        whose model is served by another inference engine (e.g. vLLM's ``prompt_logprobs``) overrides it.
        """
        logits = self.token_logits(model, tokens).detach().cpu().float()
        logits[..., self.vocab_size:] = float("-inf")
        return TokenScores.from_logits(torch.as_tensor(np.asarray(tokens))[:, 1:], logits, k)


@dataclasses.dataclass
class TokenScores:
    """Next-token scores of token rows, over the content ids ``0 .. vocab_size - 1`` (float64).

    For rows ``tokens [N, T]``: ``logp [N, T-1]`` is the log-probability of ``tokens[:, t+1]`` given
    ``tokens[:, :t+1]``; ``ids [N, T-1, k]`` are the ``k`` most likely content ids at each position in
    descending probability and ``top_logp [N, T-1, k]`` their log-probabilities. Probabilities are
    renormalised over the content ids.
    """

    logp: torch.Tensor
    ids: torch.Tensor
    top_logp: torch.Tensor

    @classmethod
    def from_logits(cls, targets: torch.Tensor, logits: torch.Tensor, k: int) -> "TokenScores":
        """Scores of ``targets [N, T]`` under ``logits [N, T, V]`` (``logits[:, t]`` predicts ``targets[:, t]``;
        ids to leave out already at ``-inf``)."""
        logp = torch.log_softmax(logits.double(), dim=-1)
        top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
        return cls(logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1), top.indices, top.values)


class HiddenStates(Capability):
    """The task's ``step`` returns per-layer hidden states when asked.

    With ``"hidden_states"`` in the requirements passed to ``step``, the outputs hold
    ``"hidden_states"``: a tuple of ``[N, T, D]`` tensors for sequence models (the embeddings
    first, then the output of each of the ``n_layer`` blocks) or ``[N, D]`` for flat models (the
    output of each of the ``n_layer`` hidden layers); optionally ``"attention_mask"`` ``[N, T]``
    (true = real position).
    """

    requirement = "hidden_states"
    n_layer: int


class StepFeatures(Capability):
    """The task's ``step`` returns one representation vector per item when asked.

    With ``"features"`` in the requirements passed to ``step``, the outputs hold
    ``"features"``: ``[N, D]``, differentiable, from the model being trained.
    """

    requirement = "features"


class Items(Capability):
    """The task names the pool array that holds an item, and the one holding its label.

    ``input_key``: pool array of the item; ``label_key``: pool array of the label an item was
    generated for, or ``None`` for unlabelled items; ``num_classes``: number of labels
    (``None`` when unlabelled).
    """

    requirement = "items"
    input_key: ClassVar[str]
    label_key: ClassVar[str | None] = None
    num_classes: ClassVar[int | None] = None


class LatentEncoder(Items):
    """The task maps items into a latent space of one of its models.

    :meth:`encode` returns ``[N, D]`` latents of items (arrays of the ``input_key`` pool
    array) under ``model``, without gradients.
    """

    requirement = "latents"

    @abc.abstractmethod
    def encode(self, model: torch.nn.Module, items: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Latents ``[N, D]`` of ``items`` under ``model``."""


class FrozenFeatures(Items):
    """The task has a frozen feature extractor of items, fixed for the run (e.g. an evaluator)."""

    requirement = "frozen_features"

    @abc.abstractmethod
    def features(self, items: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features ``[N, D]`` of ``items``."""


class TextItems(Items):
    """Items can be decoded to text."""

    requirement = "text"

    @abc.abstractmethod
    def decode(self, items: np.ndarray) -> list[str]:
        """The text of each item."""


class ForgetRetain(Capability):
    """The task splits its real data into a forget set and a retain set (unlearning).

    ``forget_pool()`` / ``retain_pool()`` are real-data pools whose batches carry
    ``"example_id"`` (one id per item, unique in the task); ``answer_mask(batch)`` marks the
    label positions ``[N, T-1]`` that belong to the answer; the task's ``step`` returns
    ``"logits"`` and ``"labels"`` (per-sequence log-probabilities are summed over the mask).
    """

    requirement = "forget_data"

    @abc.abstractmethod
    def forget_pool(self) -> Any:
        """The items to unlearn."""

    @abc.abstractmethod
    def retain_pool(self) -> Any:
        """The items whose knowledge must be kept."""

    @abc.abstractmethod
    def answer_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Boolean ``[N, T-1]``: which label positions are the answer."""


class TwoViews(Capability):
    """The task can produce two augmented views of a batch (joint-embedding regularizers).

    ``augmented_views(model, batch)`` returns two step-output dicts, each with
    ``"features"`` ``[N, D]`` of the same items under independent augmentations.
    """

    requirement = "views"

    @abc.abstractmethod
    def augmented_views(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> Sequence[Mapping]:
        """Two views' outputs of ``batch``."""


class PauseTokens(Capability):
    """The task can insert ``pause_tokens`` learnable pause tokens between question and answer.

    ``pause_tokens`` may be set before the task's data are built (in ``configure``).
    """

    requirement = "pause_tokens"
    pause_tokens: int


class TransformersLM(Capability):
    """The task's models are ``transformers`` causal language models over the task's tokenizer.

    ``tokenizer``: a ``transformers`` tokenizer whose ids are the model's. The model the task builds,
    trains and hands to the ``metrics`` hook is a ``transformers.PreTrainedModel`` with a causal-LM
    head (possibly wrapped by ``peft``), so tools that take such a model and tokenizer in memory
    (lm-evaluation-harness) can evaluate it. Use a copy of ``tokenizer`` to change its settings.
    """

    requirement = "transformers_lm"
    tokenizer: Any


class ItemWeights(Capability):
    """The task's ``step`` honours per-item loss weights.

    When the batch holds ``"weight"`` ``[N]`` (float, >= 0: the training pool's
    :attr:`~collapsekit.pool.Pool.weights`), the returned ``"loss"`` is ``mean_i(w_i * l_i)``, where
    ``l_i`` is item ``i``'s own loss as the unweighted loss counts it (so weights of 1 give exactly the
    unweighted loss); an exact-fit task fits the correspondingly weighted estimate. Without the key the
    loss is unchanged. The engine refuses a weighted pool for a task without this capability.
    """

    requirement = "item_weights"


class Verifier(Capability):
    """The task can check its items against ground truth that the trained models never see.

    :meth:`verify_items` scores items (higher = more correct), deterministically: an exact source's
    likelihood, an exact answer check, or a judge trained on real data outside the training and
    held-out splits. ``verifier_kind`` names which, in a few words.
    """

    requirement = "verifier"
    verifier_kind: ClassVar[str] = ""

    @abc.abstractmethod
    def verify_items(self, items: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores ``float64 [N]`` of the items ``items`` (pool arrays with the task's ``pool_keys``)."""


class Corrector(Capability):
    """The task can push its items toward the real data with an expert correction of given strength.

    :meth:`correct_items` returns the corrected items (same array names, shapes and dtypes): strength 0
    leaves every item unchanged, strength 1 applies the full correction; randomness only from
    ``generator``. ``corrector_kind`` names the correction, in a few words.
    """

    requirement = "corrector"
    corrector_kind: ClassVar[str] = ""

    @abc.abstractmethod
    def correct_items(self, items: Mapping[str, np.ndarray], strength: float, generator: torch.Generator
                ) -> dict[str, np.ndarray]:
        """The items after a correction of ``strength`` in [0, 1]."""


CAPABILITIES: dict[str, type[Capability]] = {c.requirement: c for c in (
    Sampler, LabelledLogits, TokenSequences, HiddenStates, StepFeatures, Items, LatentEncoder, FrozenFeatures, TextItems,
    ForgetRetain, TwoViews, PauseTokens, TransformersLM, ItemWeights, Verifier, Corrector)}
"""Every capability by its requirement name."""

ENGINE_REQUIREMENTS = frozenset({"reference_model"})
"""Requirements the engine satisfies for every task: ``reference_model`` (a frozen copy of the model
as it was when the generation started, ``module.reference_model``)."""

REQUIREMENTS = frozenset(CAPABILITIES) | ENGINE_REQUIREMENTS
"""Every name a plugin may declare through the ``requirements`` hook."""


def provided_by(task_class: type) -> frozenset[str]:
    """Requirement names of the capabilities ``task_class`` inherits."""
    return frozenset(c.requirement for c in CAPABILITIES.values() if issubclass(task_class, c))


def describe(capability: type[Capability]) -> str:
    """``Name ('requirement': first line of its contract)``, for error messages."""
    first = (capability.__doc__ or "").strip().splitlines()[0].replace("``", "").rstrip(".")
    return f"{capability.__name__} ({capability.requirement!r}: {first[0].lower()}{first[1:]})"


def provides(task: Any) -> frozenset[str]:
    """What ``task`` provides: its class's capabilities, narrowed by an instance ``provides`` attribute
    (a task whose capability depends on its settings, e.g. forget data only when given)."""
    return frozenset(getattr(task, "provides", provided_by(type(task)))) & provided_by(type(task))


def unmet(task: Any, names: Iterable[str]) -> list[str]:
    """The requirement names (sorted) that neither ``task`` nor the engine provides."""
    return sorted(set(names) - ENGINE_REQUIREMENTS - provides(task))


def check_requirements(task: Any, names: Iterable[str]) -> None:
    """Raise unless every requirement name is known and satisfied by ``task`` or the engine."""
    names = set(names)
    unknown = sorted(names - REQUIREMENTS)
    if unknown:
        from .errors import CollapsekitError

        hints = {u: difflib.get_close_matches(u, sorted(REQUIREMENTS), n=1) for u in unknown}
        shown = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise CollapsekitError(f"unknown requirement {shown} declared by the active plugins; "
                               f"known requirements: {', '.join(sorted(REQUIREMENTS))}")
    missing = unmet(task, names)
    if missing:
        name = getattr(task, "name", type(task).__name__)
        shown = "; ".join(describe(CAPABILITIES[m]) for m in missing)
        raise TaskIncompatible(
            f"task {name!r} cannot provide {missing} required by the active plugins: {shown}. It provides "
            f"{sorted(provides(task)) or 'nothing extra'}; pick another task or plugin")


def require(task: Any, *capabilities: type[Capability], plugin: str, why: str = "") -> None:
    """Raise :class:`~collapsekit.errors.TaskIncompatible` unless ``task`` has every capability.

    The message names the first missing capability, the task and ``plugin``; ``why`` may add
    what the plugin uses it for. Call it in ``configure``: the run then stops before training.
    """
    for capability in capabilities:
        if not isinstance(task, capability) or capability.requirement not in provides(task):
            name = getattr(task, "name", type(task).__name__)
            reason = f" to {why}" if why else ""
            raise TaskIncompatible(
                f"{plugin} needs the task capability {describe(capability)}{reason}, but task {name!r} "
                f"({type(task).__name__}) does not provide it (it provides: "
                f"{', '.join(sorted(provides(task))) or 'none'}); pick a task that does, "
                f"or remove {plugin} from run.plugins")
