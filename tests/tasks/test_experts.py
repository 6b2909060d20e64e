"""The tasks' experts (capabilities Verifier and Corrector) against plain computations: markov-text's exact source
likelihood and its corrector, multiplication's answer check and fix, and the digit tasks' judge (trained on the
digits outside both splits) and k-means corrector."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsekit import capabilities as caps
from collapsekit.plugins.tasks.digits_classify import DigitsClassify, perturb
from collapsekit.plugins.tasks.digits_diffusion import DigitsDiffusion
from collapsekit.plugins.tasks.experts import kmeans_centres, spare_indices, step_to_nearest
from collapsekit.plugins.tasks.image_diffusion import ImageDiffusion
from collapsekit.plugins.tasks.markov_text import MarkovText, correct_chain
from collapsekit.plugins.tasks.multiplication import Multiplication


@pytest.fixture(scope="module")
def markov():
    task = MarkovText(vocab_size=8, seq_len=6, train_size=40, heldout_size=10, n_layer=1, n_embd=8,
                      deterministic_share=0.5)
    task.setup(0)
    return task


def test_markov_verifier_is_the_exact_mean_log_likelihood(markov):
    tokens = markov.train_tokens[:5]
    expected = []
    for row in tokens[:, 1:].tolist():
        total = math.log(markov.initial[row[0]])
        for a, b in zip(row, row[1:]):
            total += math.log(markov.transition[a, b])
        expected.append(total / len(row))
    assert markov.verify_items({"tokens": tokens}) == pytest.approx(expected, rel=1e-12)


def test_markov_corrector_redraws_only_improbable_tokens_from_the_source(markov):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 8, size=(400, 6))                        # uniform noise: many improbable transitions
    threshold = 0.01
    same = correct_chain(tokens, markov.transition, markov.initial, threshold, 0.0, np.random.default_rng(1))
    assert (same == tokens).all()
    fixed = correct_chain(tokens, markov.transition, markov.initial, threshold, 1.0, np.random.default_rng(1))
    p_first = markov.initial[fixed[:, 0]]
    p_next = markov.transition[fixed[:, :-1], fixed[:, 1:]]
    bad_before = (markov.transition[tokens[:, :-1], tokens[:, 1:]] < threshold).mean()
    assert bad_before > 0.1 and (p_next < threshold).mean() < bad_before / 5     # redraws can still hit the tail
    assert (p_first >= threshold).mean() > 0.95
    kept = markov.transition[tokens[:, :-1], tokens[:, 1:]] >= threshold          # probable tokens stay where
    assert (fixed[:, 1:][kept & (fixed[:, :-1] == tokens[:, :-1])] == tokens[:, 1:][kept & (fixed[:, :-1] == tokens[:, :-1])]).all()
    out = markov.correct_items({"tokens": markov.with_bos(tokens)}, 0.5, torch.Generator().manual_seed(0))["tokens"]
    assert out.shape == (400, 7) and (out[:, 0] == markov.bos_id).all()


def test_multiplication_verifies_and_fixes_answers():
    task = Multiplication(digits=2, train_size=40, heldout_size=8, n_layer=1, n_embd=8)
    task.setup(0)
    tokens = task.train_tokens.copy()
    tokens[:10, -1] = (tokens[:10, -1] + 1) % 10                       # one wrong digit in 10 answers
    scores = task.verify_items({"tokens": tokens})
    assert scores[:10] == pytest.approx([1 - 1 / task.answer_len] * 10) and (scores[10:] == 1.0).all()
    fixed = task.correct_items({"tokens": tokens}, 1.0, torch.Generator().manual_seed(0))["tokens"]
    assert (fixed == task.train_tokens).all()
    assert (task.correct_items({"tokens": tokens}, 0.0, torch.Generator())["tokens"] == tokens).all()


def test_step_to_nearest_moves_each_item_a_share_of_the_way_to_its_labels_nearest_centre():
    centres = [np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[0.0, 5.0]])]
    x = np.array([[1.0, 1.0], [9.0, 2.0], [1.0, 1.0]])
    got = step_to_nearest(x, np.array([0, 0, 1]), centres, 0.25)
    np.testing.assert_allclose(got, [[0.75, 0.75], [9.25, 1.5], [0.75, 2.0]], rtol=1e-12)


def test_kmeans_centres_per_class_are_deterministic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.repeat([0, 1, 2], 20)
    a, b = kmeans_centres(x, y, 3, 4, seed=5), kmeans_centres(x, y, 3, 4, seed=5)
    assert [c.shape for c in a] == [(4, 3)] * 3 and all((p == q).all() for p, q in zip(a, b))


def test_digit_judges_train_on_the_spare_digits_and_are_accurate():
    classify = DigitsClassify(train_size=1000, heldout_size=500)
    classify.setup(0)
    data = classify.expert_data()
    assert len(data.spare_y) == 297
    assert set(spare_indices(1797, classify.train_index, classify.heldout_index)).isdisjoint(classify.train_index)
    noisy = perturb(torch.as_tensor(classify.heldout_images), 0.1, 0, torch.Generator().manual_seed(0))
    probs = classify.verify_items({"images": noisy.numpy(), "labels": classify.heldout_labels})
    assert probs.mean() > 0.85                                           # the judge's p(true label) on noisy digits
    wrong = classify.verify_items({"images": noisy.numpy(), "labels": (classify.heldout_labels + 1) % 10})
    assert wrong.mean() < 0.05
    diffusion = DigitsDiffusion(train_size=1000, heldout_size=500)
    diffusion.setup(0)
    assert diffusion.verify_items({"image": diffusion.heldout_x, "label": diffusion.heldout_y}).mean() > 0.85
    moved = diffusion.correct_items({"image": diffusion.heldout_x[:50], "label": diffusion.heldout_y[:50]}, 1.0,
                                    torch.Generator())["image"]
    assert moved.shape == (50, 1, 8, 8)                                  # the pool's image shape is kept
    centres = diffusion.centres()
    flat = moved.reshape(50, -1)
    assert all(np.abs(c - centres[y]).sum(1).min() < 1e-5 for c, y in zip(flat, diffusion.heldout_y[:50]))


def test_unlabelled_image_data_have_no_experts():
    assert {"verifier", "corrector"} <= caps.provides(ImageDiffusion())
    assert not {"verifier", "corrector"} & caps.provides(ImageDiffusion(label_key=None))
