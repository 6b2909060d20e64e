"""edit_tokens / edit_statistics against a plain float64 loop and hand-computed cases."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from collapsekit_token_editing import candidate_weights, edit_statistics, edit_tokens, token_probabilities


# -- independent reference: the paper's rule written as plain Python loops at float64 ----------------
def ref_probs(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    z = sum(e)
    return [x / z for x in e]


def ref_edit(tokens, logits, threshold, top_k, temperature, drop_below, generator):
    """Flag p > threshold (or p < drop_below), draw one uniform per flagged position in row-major
    order, pick the first top-k candidate whose cumulative weight p_j^(1/T) / sum exceeds it."""
    tokens = tokens.tolist()
    logits = logits.double().tolist()
    flagged = []
    for n, row in enumerate(tokens):
        for t, tok in enumerate(row):
            p = ref_probs(logits[n][t])[tok]
            if p > threshold or (drop_below is not None and p < drop_below):
                flagged.append((n, t))
    uniforms = torch.rand(len(flagged), dtype=torch.float64, generator=generator).tolist() if flagged else []
    out = [row[:] for row in tokens]
    for (n, t), u in zip(flagged, uniforms):
        probs = ref_probs(logits[n][t])
        cands = sorted(range(len(probs)), key=lambda j: -probs[j])[:top_k]
        w = [probs[j] ** (1.0 / temperature) for j in cands]
        acc, choice = 0.0, cands[-1]
        for j, wj in zip(cands, w):
            acc += wj / sum(w)
            if acc > u:
                choice = j
                break
        out[n][t] = choice
    return torch.tensor(out)


def fixed_inputs(n=10, t=8, v=9, boost=(4.0, 7.0), seed=0):
    """Random logits (no ties); at about a third of positions the true token's logit is raised
    by a uniform amount in ``boost`` (p from about 0.6 to above 0.999)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g, dtype=torch.float64) * 2.0
    tokens = torch.randint(0, v, (n, t), generator=g)
    boosted = torch.rand(n, t, generator=g) < 0.35
    amount = boost[0] + (boost[1] - boost[0]) * torch.rand(n, t, generator=g, dtype=torch.float64)
    logits.scatter_add_(-1, tokens[..., None], (boosted.double() * amount)[..., None])
    return tokens, logits


def probs_of(*ps):
    """Logits whose softmax is exactly the given probabilities (up to rounding)."""
    return torch.tensor([math.log(p) for p in ps], dtype=torch.float64)


@pytest.mark.parametrize("threshold", [0.99, 0.6])
@pytest.mark.parametrize("top_k,temperature", [(1, 1.0), (3, 1.0), (3, 1.5), (8, 0.5), (50, 1.0)])
@pytest.mark.parametrize("drop_below", [None, 0.01])
def test_matches_plain_loop(threshold, top_k, temperature, drop_below):
    tokens, logits = fixed_inputs()
    got = edit_tokens(tokens, logits, threshold, top_k, torch.Generator().manual_seed(7),
                      temperature=temperature, drop_below=drop_below)
    want = ref_edit(tokens, logits, threshold, top_k, temperature, drop_below, torch.Generator().manual_seed(7))
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", [7, 8])
def test_matches_plain_loop_when_many_tokens_change(seed):
    # low threshold and a hot temperature: most flagged tokens move, so the inverse-CDF picks are exercised
    tokens, logits = fixed_inputs()
    got = edit_tokens(tokens, logits, 0.3, 5, torch.Generator().manual_seed(seed), temperature=3.0, drop_below=0.01)
    want = ref_edit(tokens, logits, 0.3, 5, 3.0, 0.01, torch.Generator().manual_seed(seed))
    assert torch.equal(got, want)
    assert (got != tokens).sum() >= 20


def test_threshold_above_everything_leaves_tokens_and_generator_alone():
    tokens, logits = fixed_inputs()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = edit_tokens(tokens, logits, threshold=1.0, top_k=8, generator=g)
    assert torch.equal(out, tokens) and out is not tokens
    assert torch.equal(g.get_state(), state)   # nothing flagged -> no random draw


def test_top_k_one_replaces_by_argmax():
    # p(token 1) = 0.4 > 0.3 -> redrawn from top-1 = {0}; p(token 0) = 0.5 is argmax already.
    logits = torch.stack([probs_of(0.5, 0.4, 0.1), probs_of(0.5, 0.4, 0.1), probs_of(0.05, 0.15, 0.8)])[None]
    tokens = torch.tensor([[1, 0, 0]])          # p = 0.4, 0.5, 0.05
    out = edit_tokens(tokens, logits, threshold=0.3, top_k=1, generator=torch.Generator().manual_seed(0))
    assert out.tolist() == [[0, 0, 0]]           # last one: p = 0.05 <= 0.3, untouched


def test_candidate_weights_and_temperature():
    logits = probs_of(0.1, 0.6, 0.3)
    ids, w = candidate_weights(logits, top_k=2, temperature=1.0)
    assert ids.tolist() == [1, 2]
    assert torch.allclose(w, torch.tensor([0.6 / 0.9, 0.3 / 0.9], dtype=torch.float64), atol=1e-12)
    _, w2 = candidate_weights(logits, top_k=2, temperature=2.0)
    s = math.sqrt(0.6) + math.sqrt(0.3)
    assert torch.allclose(w2, torch.tensor([math.sqrt(0.6) / s, math.sqrt(0.3) / s], dtype=torch.float64),
                          atol=1e-12)
    _, w3 = candidate_weights(logits, top_k=5, temperature=1.0)   # k clipped to V, weights = p
    assert torch.allclose(w3, torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_draw_frequencies_follow_tempered_weights(temperature):
    n = 20000
    logits = probs_of(0.991, 0.006, 0.003).expand(n, 1, 3)
    tokens = torch.zeros(n, 1, dtype=torch.long)        # p = 0.991 > 0.99 everywhere
    out = edit_tokens(tokens, logits, 0.99, top_k=2, temperature=temperature,
                      generator=torch.Generator().manual_seed(1))
    a, b = 0.991 ** (1 / temperature), 0.006 ** (1 / temperature)
    expected = b / (a + b)                               # chance to move to token 1; token 2 is not in top-2
    share = (out == 1).double().mean().item()
    assert abs(share - expected) < 5 * math.sqrt(expected * (1 - expected) / n)
    assert (out == 2).sum() == 0


def test_drop_rule_is_off_by_default_and_redraws_rare_tokens():
    logits = torch.stack([probs_of(0.7, 0.2995, 0.0005), probs_of(0.7, 0.2995, 0.0005)])[None]
    tokens = torch.tensor([[2, 1]])             # p = 0.0005 (< 0.001) and 0.2995
    g = torch.Generator().manual_seed(0)
    assert edit_tokens(tokens, logits, 0.99, top_k=1, generator=g).tolist() == [[2, 1]]
    dropped = edit_tokens(tokens, logits, 0.99, top_k=1, drop_below=0.001, generator=g)
    assert dropped.tolist() == [[0, 1]]         # the rare token becomes the top-1 candidate


def test_mask_protects_positions():
    tokens, logits = fixed_inputs()
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, ::2] = True
    out = edit_tokens(tokens, logits, 0.3, 5, torch.Generator().manual_seed(0), temperature=3.0, mask=mask)
    assert torch.equal(out[~mask], tokens[~mask])
    assert not torch.equal(out[mask], tokens[mask])


def test_statistics_hand_case():
    # positions: p = 0.995 (-> redrawn), 0.995 (-> redrawn), 0.5, 0.0005
    logits = torch.stack([probs_of(0.995, 0.004, 0.0005, 0.0005)] * 2
                         + [probs_of(0.4995, 0.5, 0.0004, 0.0001), probs_of(0.4995, 0.5, 0.0004, 0.0001)])[None]
    tokens = torch.tensor([[0, 0, 1, 2]])
    edited = torch.tensor([[0, 1, 1, 2]])       # one of the two flagged tokens came out different
    stats = edit_statistics(tokens, edited, logits, threshold=0.99, drop_below=0.001)
    assert stats == {"positions": 4.0, "share_above": 0.5, "share_changed": 0.25, "share_below": 0.25}
    mask = torch.tensor([[False, True, True, True]])
    stats = edit_statistics(tokens, edited, logits, threshold=0.99, mask=mask)
    assert stats == {"positions": 3.0, "share_above": 1 / 3, "share_changed": 1 / 3}


def test_statistics_of_a_real_edit():
    tokens, logits = fixed_inputs(n=100, t=10)
    out = edit_tokens(tokens, logits, 0.9, top_k=8, generator=torch.Generator().manual_seed(0))
    stats = edit_statistics(tokens, out, logits, 0.9)
    p = [ref_probs(logits[n, t].tolist())[tokens[n, t]] for n in range(100) for t in range(10)]
    assert stats["share_above"] == sum(x > 0.9 for x in p) / 1000
    assert stats["share_changed"] == (out != tokens).sum().item() / 1000
    # a token at p > 0.9 is redrawn with weights ~p, so it mostly comes back: changed << above
    assert 0 < stats["share_changed"] < 0.2 * stats["share_above"]
    assert torch.allclose(token_probabilities(tokens, logits).flatten(), torch.tensor(p, dtype=torch.float64))


def test_deterministic_under_a_fixed_generator():
    tokens, logits = fixed_inputs(n=30, t=10, boost=(1.0, 3.0))
    run = lambda seed: edit_tokens(tokens, logits, 0.5, 8, torch.Generator().manual_seed(seed), temperature=1.5)
    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_float32_logits_and_int32_tokens():
    tokens, logits = fixed_inputs()
    a = edit_tokens(tokens, logits, 0.6, generator=torch.Generator().manual_seed(0))
    b = edit_tokens(tokens.int(), logits.float(), 0.6, generator=torch.Generator().manual_seed(0))
    assert b.dtype == torch.int32 and torch.equal(a, b.long())


@pytest.mark.parametrize("kwargs,match", [
    ({"threshold": 1.5}, "threshold"),
    ({"top_k": 0}, "top_k"),
    ({"temperature": 0.0}, "temperature"),
    ({"drop_below": 1.0}, "drop_below"),
])
def test_bad_settings_raise(kwargs, match):
    tokens, logits = fixed_inputs()
    with pytest.raises(ValueError, match=match):
        edit_tokens(tokens, logits, **kwargs)


def test_bad_shapes_raise():
    tokens, logits = fixed_inputs()
    with pytest.raises(ValueError, match="shift the logits"):
        edit_tokens(tokens[:, 1:], logits)
    with pytest.raises(ValueError, match=r"ids in \[0, 9\)"):
        edit_tokens(tokens + 9, logits)
    with pytest.raises(ValueError, match="integer ids"):
        edit_tokens(tokens.double(), logits)


def test_pure_layer_does_not_import_collapsekit():
    code = ("import sys, collapsekit_token_editing; "
            "assert not any(m == 'collapsekit' or m.startswith('collapsekit.') for m in sys.modules), "
            "'collapsekit imported'; assert 'lightning' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
