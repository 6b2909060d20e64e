"""digits-diffusion = image-diffusion with the MLP denoiser on the built-in digits: its settings mapped onto
image-diffusion's (noise schedules against the formulas), the reverse process under an exact denoiser, the
MLP denoiser's time embedding and save_pretrained folder, contracts, a real two-generation run, its configs,
and the refusal of run folders of the former implementation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from collapsekit.dispatch import build_manager
from collapsekit.errors import CollapsekitError
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.denoiser import Denoiser, timestep_embedding
from collapsekit.plugins.tasks.digits_diffusion import DigitsDiffusion, noise_schedule
from collapsekit.plugins.tasks.image_diffusion import ImageDiffusion, make_scheduler
from collapsekit.pool import Pool
from collapsekit.run import Run, RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = DigitsDiffusion.preset("smoke")["task"]


@pytest.fixture(scope="module")
def task():
    t = DigitsDiffusion(**TINY)
    t.setup(0)
    return t


def ref_cosine_betas(T, s=0.008):
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    return np.array([min(1 - (f[t + 1] / f[0]) / (f[t] / f[0]), 0.999) for t in range(T)])


def test_settings_map_onto_image_diffusion(task):
    assert isinstance(task, ImageDiffusion) and task.model_kind == "mlp" and task.data is None
    assert (task.channels, task.size, task.num_classes, task.timesteps) == (1, 8, 10, TINY["timesteps"])
    assert task.sampler == "ddpm" and task.num_inference_steps == TINY["timesteps"]
    assert task.reverse_scheduler().timesteps.tolist() == list(range(TINY["timesteps"] - 1, -1, -1))
    cosine = make_scheduler(noise_schedule(50, "cosine")).betas.numpy()
    assert np.allclose(cosine, ref_cosine_betas(50), atol=1e-6)
    linear = make_scheduler(noise_schedule(100, "linear")).betas.numpy()
    assert linear[0] == pytest.approx(1e-3) and linear[-1] == pytest.approx(0.2) and np.all(np.diff(linear) > 0)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        noise_schedule(10, "quadratic")
    with pytest.raises(ValueError, match="timesteps"):
        noise_schedule(1, "cosine")
    for kwargs, match in [({"train_size": 1500, "heldout_size": 500}, "exceeds"),
                          ({"timesteps": 10, "encode_t": 10}, "encode_t"), ({"label_dropout": 1.0}, "label_dropout"),
                          ({"eval_samples": 5}, "eval_samples")]:
        with pytest.raises(ValueError, match=match):
            DigitsDiffusion(**kwargs)
    with pytest.raises(CollapsekitError, match="setup"):
        DigitsDiffusion(**TINY).real_pool()


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 3]), 7)
    assert emb.shape == (2, 7) and torch.all(emb[:, -1] == 0)
    assert torch.allclose(emb[0, :3], torch.ones(3)) and torch.allclose(emb[1, 3], torch.sin(torch.tensor(3.0)))


class Oracle(nn.Module):
    """The exact noise predictor for data that is one fixed image per class."""

    def __init__(self, task, images):
        super().__init__()
        self.abar, self.images = task.noise.alphas_cumprod, images
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_features(self, x, t, y):
        abar = self.abar[t].float()[:, None]
        return (x - abar.sqrt() * self.images[y]) / (1 - abar).sqrt(), x


def test_reverse_process_recovers_the_data_under_an_exact_denoiser(task):
    images = torch.stack([torch.as_tensor(task.train_x[np.flatnonzero(task.train_y == c)[0]]).flatten()
                          for c in range(10)])
    out = task.sample(Oracle(task, images), 30, torch.Generator().manual_seed(0))
    assert np.allclose(out["image"].reshape(30, 64), images[out["label"]].numpy(), atol=1e-4)


def test_step_sample_encode_and_evaluate(task):
    pool = task.real_pool()
    assert pool.keys == ("image", "label") and pool.arrays["image"].shape == (TINY["train_size"], 1, 8, 8)
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(iter(task.dataloader(pool, shuffle=False, seed=0)))
    out = task.step(model, batch, frozenset({"features"}))
    assert out["features"].shape == (TINY["batch_size"], TINY["hidden"]) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    a, b = (task.sample(model, 25, torch.Generator().manual_seed(5)) for _ in range(2))
    assert a["image"].shape == (25, 1, 8, 8) and np.array_equal(a["image"], b["image"])
    assert np.bincount(a["label"], minlength=10).max() - np.bincount(a["label"], minlength=10).min() <= 1
    z = task.encode(model, pool.arrays["image"][:7])
    assert z.shape == (7, TINY["hidden"]) and torch.equal(z, task.encode(model, pool.arrays["image"][:7]))
    assert task.features(pool.arrays["image"][:7]).shape == (7, task.evaluator_hidden)
    m1, m2 = task.evaluate(model, None), task.evaluate(model, None)
    assert set(m1) == set(DigitsDiffusion.higher_is_better) and m1 == m2
    assert all(math.isfinite(v) for v in m1.values()) and 0 <= m1["class_accuracy"] <= 1
    ref = task.reference_metrics()
    assert ref["fid"] < m1["fid"] and ref["class_accuracy"] > 0.9


def test_two_generation_run_saves_loadable_denoisers(tmp_path):
    task = DigitsDiffusion(**TINY)
    run = Run(RunConfig(name="dd", root=str(tmp_path), generations=2, seed=0), task, build_manager([]))
    metrics = execute(run, trainer_factory(max_steps=10, accelerator="cpu", enable_progress_bar=False,
                                           logger=False))
    assert len(metrics) == 2 and all(set(DigitsDiffusion.higher_is_better) <= set(m) for m in metrics)
    assert metrics[1]["pool/real_share"] == 0.0
    pool = Pool.load(tmp_path / "dd" / "gen_0" / "pool")
    assert len(pool) == TINY["train_size"] and np.all(pool.origin_generation == 0)
    loaded = Denoiser.from_pretrained(tmp_path / "dd" / "gen_1" / "model")
    assert torch.equal(loaded.out.weight, run.model_of(1).out.weight)
    assert (tmp_path / "dd" / "gen_1" / "samples.png").is_file()


def test_a_run_folder_of_the_former_implementation_is_refused_in_one_message(task):
    old = Pool.fresh({"x": np.zeros((2, 64), np.float32), "y": np.zeros(2, np.int64)}, 0)
    with pytest.raises(CollapsekitError, match="former digits-diffusion .* cannot resume.*--run.overwrite true"):
        task.check_pool(old)
    task.check_pool(task.real_pool())


def test_presets_and_configs():
    for name in ("smoke", "cpu", "gpu"):
        spec = DigitsDiffusion.preset(name)
        assert set(spec) >= {"task", "trainer", "generations"}
        DigitsDiffusion(**spec["task"])
    assert set(DigitsDiffusion.headline) <= set(DigitsDiffusion.higher_is_better)
    paths = sorted(CONFIGS.glob("digits-diffusion*.yaml"))
    assert paths
    for path in paths:
        config = yaml.safe_load(path.read_text())
        assert config["task"]["class_path"] == "collapsekit.plugins.tasks.digits_diffusion.DigitsDiffusion"
        DigitsDiffusion(**config["task"].get("init_args", {}))
        assert {"name", "generations", "plugins"} <= set(config["run"])
