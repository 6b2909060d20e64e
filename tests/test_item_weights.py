"""Per-item loss weights: the weighted fits of the analytic tasks against plain formulas, the weighted loss of
digits-classify, and the engine passing a policy's weights to the step (or refusing a task that ignores them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import collapsekit
from collapsekit import hookimpl
from collapsekit.dispatch import build_manager
from collapsekit.errors import CollapsekitError
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.digits_classify import DigitsClassify
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.linear_regression import LinearRegression
from collapsekit.pool import Pool
from collapsekit.run import Run, RunConfig

W = np.array([0.2, 1.7, 0.4, 3.0, 1.0, 0.05, 2.2, 0.9, 1.3, 0.6])


def test_gaussian_weighted_fit_is_the_weighted_mle():
    task = Gaussian(dim=2, train_size=10, replicates=3)
    task.setup(0)
    model = task.build_model().train()
    out = task.step(model, {"x": torch.as_tensor(task.x), "weight": torch.as_tensor(W)}, frozenset())
    x = task.x                                                        # [N, R, d]
    p = W / W.sum()
    mean = np.einsum("n,nrd->rd", p, x)
    cov = np.einsum("n,nri,nrj->rij", p, x - mean, x - mean)
    np.testing.assert_allclose(model.mean.detach().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(model.covariance().detach().numpy(), cov, rtol=1e-10)
    nll = -model(torch.as_tensor(x)).detach().numpy()                 # [N, R]
    assert out["loss"].item() == pytest.approx(np.mean(W * nll.mean(1)), rel=1e-12)


def test_linear_regression_weighted_fit_is_weighted_least_squares():
    task = LinearRegression(dim=3, train_size=10, replicates=2)
    task.setup(0)
    model = task.build_model().train()
    out = task.step(model, {"x": torch.as_tensor(task.x), "y": torch.as_tensor(task.y), "weight": torch.as_tensor(W)},
                    frozenset())
    for r in range(2):                                                # (X^T W X)^-1 X^T W y per replicate
        x, y = task.x[:, r], task.y[:, r]
        expected = np.linalg.solve(x.T @ (W[:, None] * x), x.T @ (W * y))
        np.testing.assert_allclose(model.weight[r].detach().numpy(), expected, rtol=1e-9)
    pred = np.einsum("nrd,rd->nr", task.x, model.weight.detach().numpy())
    assert out["loss"].item() == pytest.approx(np.mean(W * ((pred - task.y) ** 2).mean(1)), rel=1e-12)


def test_digits_classify_weighted_loss_is_the_weighted_item_mean_and_ones_change_nothing():
    task = DigitsClassify(train_size=10, heldout_size=10, hidden=8, feature_dim=4)
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model()
    batch = {"images": torch.as_tensor(task.train_images), "labels": torch.as_tensor(task.train_labels)}
    plain = task.step(model, batch, frozenset())["loss"]
    weighted = task.step(model, {**batch, "weight": torch.as_tensor(W)}, frozenset())["loss"]
    ce = F.cross_entropy(model(batch["images"]).double(), batch["labels"], reduction="none").detach().numpy()
    assert weighted.item() == pytest.approx(np.mean(W * ce), rel=1e-5)
    ones = task.step(model, {**batch, "weight": torch.ones(10, dtype=torch.float64)}, frozenset())["loss"]
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)


class Weighted:
    """A pool policy giving the real items of generation 0 the weights ``W`` (cycled)."""

    @hookimpl
    def compose_pool(self, generation, real):
        return real.with_weights(np.resize(W, len(real)))


def run_with(tmp_path, task, name):
    with collapsekit.registered(Weighted(), name="weighted"):
        run = Run(RunConfig(name=name, root=str(tmp_path), generations=1), task, build_manager([]))
        return execute(run, trainer_factory(max_steps=1, enable_progress_bar=False, logger=False))


def test_the_engine_passes_the_weights_to_the_step_and_records_them(tmp_path):
    task = Gaussian(dim=2, train_size=10, replicates=2)
    [m] = run_with(tmp_path, task, "w")
    model = task.load_model(tmp_path / "w" / "gen_0")
    np.testing.assert_allclose(model.mean.detach().numpy(), np.einsum("n,nrd->rd", W / W.sum(), task.x), rtol=1e-12)
    assert m["pool/real_weight_share"] == 1.0
    assert Pool.load(tmp_path / "w" / "gen_0" / "train_lineage").weights.tolist() == W.tolist()


def test_a_task_that_ignores_weights_is_refused_before_training(tmp_path, tiny_task):
    with pytest.raises(CollapsekitError, match="does not have the capability ItemWeights"):
        run_with(tmp_path, tiny_task, "refused")
    assert not (tmp_path / "refused" / "gen_0" / "model.pt").exists()
