"""Checks that a ``transformers`` model can train as a causal language model, each failing with one
:class:`~collapsekit.errors.ConfigError` that names the cause and the fix.

* :func:`check_causal_lm_class`: the config's ``model_type`` has an ``AutoModelForCausalLM`` class
  (encoder-decoder and encoder-only types such as T5 or DistilBERT have none);
* :func:`check_causal`: the model's prediction at a position does not change with later tokens (a
  ``BertConfig`` with ``is_decoder: false`` loads as ``BertLMHeadModel`` with bidirectional attention:
  it "predicts" the next token by looking at it, and every metric of such a run is meaningless);
* :func:`check_trainable_dtype`: full training in ``float16`` is refused (AdamW's ``eps`` = 1e-8
  and small squared gradients underflow to 0 in float16, so the first step writes inf/NaN weights);
* :func:`check_lora_targets`: ``lora.target_modules`` name layers of the model (checked on a
  ``meta``-device copy, without weights).
"""
from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import torch

from collapsekit.errors import ConfigError

PROBE_TOKENS = 8
"""Length of the two token rows :func:`check_causal` compares."""


def check_causal_lm_class(config: Any, name: str) -> None:
    """Raise unless ``AutoModelForCausalLM`` has a class for ``config``'s model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        kind = "an encoder-decoder" if getattr(config, "is_encoder_decoder", False) else "not a causal"
        raise ConfigError(f"hf-lm: {name} (model_type {config.model_type!r}) is {kind} language model: transformers "
                          "has no AutoModelForCausalLM class for it; give a decoder-only model (GPT-2, Llama, OPT, "
                          "Mistral, GPT-NeoX, ...)")


def check_causal(model: torch.nn.Module, vocab_size: int, context: int | None, name: str) -> None:
    """Raise when the logits of the first half of a token row change with its second half, i.e. the model
    attends to later tokens. Two forward passes of :data:`PROBE_TOKENS` tokens in eval mode, without
    gradients, compared within a few units of the weights' dtype precision (a causal model gives the same
    prefix logits); the global random state is not used."""
    length = max(2, min(PROBE_TOKENS, context or PROBE_TOKENS))
    half = length // 2
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, length), generator=generator)
    other = torch.cat([ids[:, :half], (ids[:, half:] + torch.randint(1, max(vocab_size, 2), (1, length - half),
                                                                      generator=generator)) % vocab_size], 1)
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a, b = (model(input_ids=x.to(parameter.device), use_cache=False).logits[0, :half].float()
                    for x in (ids, other))
    finally:
        model.train(was_training)
    tolerance = 16 * torch.finfo(parameter.dtype).eps * (1.0 + float(a.abs().max()))
    if float((a - b).abs().max()) > tolerance:
        config = getattr(model, "config", None)
        hint = ", is_decoder: false" if getattr(config, "is_decoder", None) is False else ""
        raise ConfigError(
            f"hf-lm: {name} ({type(model).__name__}{hint}) is not a causal language model: its prediction for a "
            f"position changes with the tokens after it (bidirectional attention, as in an encoder such as BERT), "
            f"so it would be trained and measured on text it can see; give a decoder-only model (GPT-2, Llama, "
            f"OPT, ...)")


def check_trainable_dtype(dtype: torch.dtype, lora: Any) -> None:
    """Refuse full training with ``float16`` weights (LoRA adapters train in float32 and are fine)."""
    if dtype == torch.float16 and lora is None:
        raise ConfigError(
            "hf-lm: torch_dtype float16 trains float16 weights with AdamW, whose eps (1e-8) and small squared "
            "gradients underflow to 0 in float16, so the first step writes inf/NaN into the weights (on any "
            "device); use torch_dtype bfloat16, or float32 with trainer.precision bf16-mixed (or 16-mixed on a "
            "GPU), or keep float16 with lora (the adapters train in float32)")


def _adaptable_layers(model: torch.nn.Module) -> dict[str, str]:
    """``{module name: last name component}`` of the layers LoRA can adapt (linear, Conv1D, embedding, conv)."""
    kinds = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d")
    return {n: n.rsplit(".", 1)[-1] for n, m in model.named_modules()
            if n and type(m).__name__ in kinds and not list(m.children())}


def check_lora_targets(config: Any, lora: Any, name: str) -> None:
    """Raise when a name in ``lora.target_modules`` matches no layer of the model of ``config`` (peft itself
    only refuses when none matches) or ``peft.get_peft_model`` refuses ``lora``, naming the model's
    adaptable layers. Built on the ``meta`` device: no weights are allocated or loaded."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = _adaptable_layers(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_peft_model(model, copy.deepcopy(lora))
    except ValueError as exc:
        problem = f"peft refuses the lora settings for {name} ({str(exc).splitlines()[0]})"
    else:
        problem = None
    targets = lora.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        missing = [] if any(re.fullmatch(targets, n) for n in layers) else [targets]
    elif isinstance(targets, str):
        missing = []
    else:
        missing = sorted(t for t in (targets or ()) if not any(n == t or n.endswith("." + t) for n in layers))
    shown = ", ".join(sorted(set(layers.values())))
    if missing:
        raise ConfigError(f"hf-lm: lora.target_modules {missing} name no layer of {name}; its adaptable layers are "
                          f"named {shown} (or use target_modules: all-linear)")
    if problem is not None:
        raise ConfigError(f"hf-lm: {problem}; its adaptable layers are named {shown} (or use target_modules: "
                          f"all-linear)")
