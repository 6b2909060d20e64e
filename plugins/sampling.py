"""Batched ancestral sampling for causal language models with a KV cache.

Works with any ``transformers`` causal LM whose forward takes ``use_cache=True`` and a KV cache
as ``cache=`` (returned as ``.cache``, transformers >= 5.20) or ``past_key_values=`` (returned as
``.past_key_values``, earlier 5.x releases, which the vLLM CPU build pins).
"""
from __future__ import annotations

import inspect

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-``k`` and outside the nucleus of mass ``top_p`` with ``-inf``."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` for sampling there: ``generator`` itself on its own device, else a
    ``device`` generator seeded by one draw from ``generator`` (so that the seed chain stays intact and
    no token's probabilities need to travel to the host)."""
    if torch.device(device).type == generator.device.type:
        return generator
    seed = int(torch.randint(2**62, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def cache_argument(model: torch.nn.Module) -> str:
    """The name under which ``model``'s forward takes and returns its KV cache: ``cache`` or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_tokens(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    new_tokens: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 256,
    suppress: list[int] | None = None,
) -> torch.Tensor:
    """Continue every row of ``prompts`` [N, P] by ``new_tokens`` tokens; return [N, P+new_tokens].

    Sampling draws only from ``generator`` (on the model's device: see :func:`device_generator`;
    on CPU the draws are those of ``generator`` itself). ``temperature`` 0 means greedy.
    ``suppress`` lists token ids never sampled (e.g. a BOS or pad id).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = device_generator(generator, device)
    cache_name = cache_argument(model)
    out = []
    for start in range(0, len(prompts), batch_size):
        seq = prompts[start:start + batch_size].to(device)
        cache = None
        step_input = seq
        pieces = [seq]
        for _ in range(new_tokens):
            result = model(input_ids=step_input, use_cache=True, **{cache_name: cache})
            cache = getattr(result, cache_name)
            logits = result.logits[:, -1, :].float()
            if suppress:
                logits[:, suppress] = float("-inf")
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = filter_logits(logits / temperature, top_k, top_p)
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            pieces.append(nxt)
            step_input = nxt
        out.append(torch.cat(pieces, dim=1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else prompts.new_zeros((0, prompts.shape[1] + new_tokens))
