"""ToEdit token-level editing as pure tensor functions (plain torch; no Lightning, no collapsekit).

Conventions shared by every function here:

* ``tokens`` [N, T] integer ids, ``logits`` [N, T, V] float, where ``logits[:, t]``
  is the *prior* model's prediction for ``tokens[:, t]`` (already shifted: a
  causal LM's output at position ``t - 1``). Columns without a prediction (a
  BOS column) must be left out by the caller or excluded with ``mask``.
* ``p[n, t] = softmax(logits[n, t])[tokens[n, t]]``, computed at float64.
* ``mask`` [N, T] bool (optional): positions that may be edited; others never change
  and are not counted in the statistics.

Editing rule (Zhu et al., "How to Synthesize Text Data without Model Collapse?",
ICML 2025, and their official code):

1. a token with ``p > threshold`` is redrawn from the prior's ``top_k`` most
   probable ids with weights ``softmax(log p_j / temperature)`` over those ids
   (= ``p_j^(1/temperature)`` renormalised); the original token may be drawn again;
2. optional (``drop_below`` set, default off): a token with ``p < drop_below``
   (the official setting is 0.001) is redrawn in the same way. The official code
   *drops* such tokens; dropping would change the sequence length, which fixed-shape
   token pools cannot hold, so here "drop" means "replace by a top-k redraw".

Every other token is returned unchanged.
"""
from __future__ import annotations

import math

import torch

__all__ = ["token_probabilities", "candidate_weights", "edit_positions", "edit_tokens", "edit_statistics",
           "scores_of", "edit_scored", "scored_statistics"]


def _check_inputs(tokens: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None) -> None:
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [N, T], got shape {tuple(tokens.shape)}")
    if logits.dim() != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits must be [N, T, V] with [N, T] = tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(logits.shape)}; shift the logits so that logits[:, t] predicts tokens[:, t]")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= logits.shape[-1]):
        raise ValueError(f"tokens must be ids in [0, {logits.shape[-1]}) (the logits' vocabulary), "
                         f"got range [{int(tokens.min())}, {int(tokens.max())}]")
    if mask is not None and (mask.shape != tokens.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(tokens.shape)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")


def _check_settings(threshold: float, drop_below: float | None) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    if drop_below is not None and not 0.0 < drop_below < 1.0:
        raise ValueError(f"drop_below must be None (off) or a probability in (0, 1), got {drop_below}")


def token_probabilities(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``p[n, t]``: the prior's probability (float64) of the token actually present, [N, T]."""
    _check_inputs(tokens, logits, None)
    return _token_logp(tokens, logits).exp()


def _token_logp(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def candidate_weights(logits: torch.Tensor, top_k: int = 8, temperature: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Redraw candidates of each prediction in ``logits`` [..., V].

    Returns ``(ids, weights)``, both [..., k] with ``k = min(top_k, V)``: the ids of
    the ``k`` most probable tokens in descending probability and their weights
    ``softmax(log p / temperature)`` over those ``k`` (float64, summing to 1).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logp = torch.log_softmax(logits.double(), dim=-1)
    top = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
    return top.indices, torch.softmax(top.values / temperature, dim=-1)


def edit_positions(tokens: torch.Tensor, logits: torch.Tensor, threshold: float = 0.99,
                   drop_below: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [N, T]: positions that :func:`edit_tokens` redraws (``p > threshold`` or ``p < drop_below``)."""
    _check_settings(threshold, drop_below)
    p = token_probabilities(tokens, logits)
    flagged = p > threshold
    if drop_below is not None:
        flagged |= p < drop_below
    if mask is not None:
        _check_inputs(tokens, logits, mask)
        flagged &= mask.to(flagged.device)
    return flagged


def edit_tokens(tokens: torch.Tensor, logits: torch.Tensor, threshold: float = 0.99, top_k: int = 8,
                generator: torch.Generator | None = None, temperature: float = 1.0,
                drop_below: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ToEdit: redraw every over-confident token from the prior's top-k; return new tokens [N, T].

    See the module docstring for the rule. Randomness: for the M flagged positions,
    taken in row-major order, exactly one call ``torch.rand(M, dtype=float64,
    generator=generator)`` is made and position ``i`` takes the first candidate
    whose normalised cumulative weight exceeds ``u[i]`` (inverse CDF). No call is
    made when nothing is flagged. The input is not modified. Equal to :func:`edit_scored`
    on the scores of ``logits`` (:func:`scores_of`).
    """
    _check_inputs(tokens, logits, mask)
    _check_settings(threshold, drop_below)
    logp, ids, top_logp = scores_of(tokens, logits, top_k)
    return edit_scored(tokens, logp, ids, top_logp, threshold, generator, temperature, drop_below, mask)


def scores_of(tokens: torch.Tensor, logits: torch.Tensor, top_k: int = 8
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp [N, T], ids [N, T, k], top_logp [N, T, k])``: the log-probability (float64) of each token,
    and the ``k = min(top_k, V)`` most probable ids at each position with their log-probabilities."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    logp = torch.log_softmax(logits.double(), dim=-1)
    top = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1), top.indices, top.values


def edit_scored(tokens: torch.Tensor, logp: torch.Tensor, ids: torch.Tensor, top_logp: torch.Tensor,
                threshold: float = 0.99, generator: torch.Generator | None = None, temperature: float = 1.0,
                drop_below: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`edit_tokens` from scores instead of logits: ``logp [N, T]`` the log-probability of each token,
    ``ids [N, T, k]`` the prior's ``k`` most probable ids at each position (descending) and ``top_logp
    [N, T, k]`` theirs (e.g. from vLLM's ``prompt_logprobs``). The same rule and the same draws."""
    _check_settings(threshold, drop_below)
    if logp.shape != tokens.shape or ids.shape[:2] != tokens.shape or top_logp.shape != ids.shape:
        raise ValueError(f"scores must be logp [N, T] and ids / top_logp [N, T, k] with [N, T] = tokens' shape "
                         f"{tuple(tokens.shape)}, got {tuple(logp.shape)}, {tuple(ids.shape)}, {tuple(top_logp.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    flagged = _flagged(logp.double().exp(), threshold, drop_below, mask)
    out = tokens.clone()
    where = flagged.nonzero(as_tuple=True)
    count = int(flagged.sum())
    if count == 0:
        return out
    weights = torch.softmax(top_logp[where].double() / temperature, dim=-1)
    cdf = weights.cumsum(-1)
    cdf = cdf / cdf[:, -1:]
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(count, dtype=torch.float64, generator=generator, device=device).to(cdf.device)
    choice = (cdf <= u[:, None]).sum(-1).clamp_max(cdf.shape[-1] - 1)
    out[where] = ids[where].gather(-1, choice[:, None]).squeeze(-1).to(out.dtype)
    return out


def _flagged(p: torch.Tensor, threshold: float, drop_below: float | None, mask: torch.Tensor | None) -> torch.Tensor:
    flagged = p > threshold
    if drop_below is not None:
        flagged |= p < drop_below
    if mask is not None:
        if mask.shape != p.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(p.shape)}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        flagged &= mask.to(flagged.device)
    return flagged


def edit_statistics(tokens: torch.Tensor, edited: torch.Tensor, logits: torch.Tensor, threshold: float = 0.99,
                    drop_below: float | None = None, mask: torch.Tensor | None = None) -> dict[str, float]:
    """Shares over the editable positions (all, or ``mask``) of one editing pass.

    Returns ``positions`` (count of editable positions), ``share_above`` (share with
    ``p > threshold``), ``share_changed`` (share where ``edited != tokens``; a redraw
    can give the original token back, so this is at most the flagged share) and, when
    ``drop_below`` is set, ``share_below`` (share with ``p < drop_below``). Shares are
    0.0 when there is no editable position.
    """
    _check_settings(threshold, drop_below)
    _check_inputs(tokens, logits, mask)
    return scored_statistics(tokens, edited, _token_logp(tokens, logits), threshold, drop_below, mask)


def scored_statistics(tokens: torch.Tensor, edited: torch.Tensor, logp: torch.Tensor, threshold: float = 0.99,
                      drop_below: float | None = None, mask: torch.Tensor | None = None) -> dict[str, float]:
    """:func:`edit_statistics` from the tokens' log-probabilities ``logp [N, T]`` (see :func:`edit_scored`)."""
    _check_settings(threshold, drop_below)
    if edited.shape != tokens.shape or logp.shape != tokens.shape:
        raise ValueError(f"edited and logp must have the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(edited.shape)} and {tuple(logp.shape)}")
    p = logp.double().exp()
    mask = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.to(p.device)
    positions = int(mask.sum())
    denom = max(positions, 1)
    stats = {
        "positions": float(positions),
        "share_above": float(((p > threshold) & mask).sum()) / denom,
        "share_changed": float(((edited.to(tokens.device) != tokens).to(p.device) & mask).sum()) / denom,
    }
    if drop_below is not None:
        stats["share_below"] = float(((p < drop_below) & mask).sum()) / denom
    return stats
