"""image-diffusion: an image folder read through `datasets`, real two-generation Lightning runs (baseline,
accumulate-subsample, + latent-filter, latent-filter-accumulated), DDPM/DDIM sampling, save_pretrained
models, torchmetrics FID/KID, the sample-grid report, and every data/config error before training."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from collapsekit.dispatch import build_manager
from collapsekit.errors import CollapsekitError
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.digits import load_digit_images
from collapsekit.plugins.tasks.image_diffusion import ImageDiffusion, image_grid, ole_objective, split_indices
from collapsekit.pool import REAL
from collapsekit.run import Run, RunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_UNET = {"block_out_channels": [8, 16], "norm_num_groups": 4}
PER_CLASS = 12


def tiny(**overrides) -> dict:
    """Task arguments of a run of a few seconds."""
    args = {"train_size": 80, "heldout_size": 40, "unet": TINY_UNET, "scheduler": {"num_train_timesteps": 50},
            "sampler": "ddim", "num_inference_steps": 3, "eval_samples": 40, "evaluator_steps": 30,
            "evaluator_hidden": 16, "batch_size": 32, "kid_subset_size": 40, "kid_subsets": 5}
    args.update(overrides)
    return args


def write_folder(root: Path, per_class: int = PER_CLASS, size: int = 8, mode: str = "L") -> Path:
    """``root/<digit>/<i>.png``: the first ``per_class`` scikit-learn digits of each class as PNGs."""
    images, labels = load_digit_images()
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(np.flatnonzero(labels == c)[:per_class]):
            pixels = (images[k] * 255 / 16).round().astype(np.uint8)
            Image.fromarray(pixels).convert(mode).resize((size, size)).save(root / str(c) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("digits_folder"))


@pytest.fixture(scope="module")
def task(folder):
    t = ImageDiffusion(data={"path": "imagefolder", "data_dir": str(folder)}, **tiny())
    t.setup(0)
    return t


def run_method(tmp_path: Path, name: str, plugins: list, task_args: dict, generations: int = 2, steps: int = 4):
    task = ImageDiffusion(**task_args)
    config = RunConfig(name=name, root=str(tmp_path), generations=generations, seed=0, plugins=plugins,
                       samples_per_generation=40)
    run = Run(config, task, build_manager(plugins))
    metrics = execute(run, trainer_factory(max_steps=steps, accelerator="cpu", enable_progress_bar=False,
                                           logger=False))
    return run, metrics


# -- data ---------------------------------------------------------------------------------------------
def test_image_folder_is_read_through_datasets_and_split_by_seed(task, folder):
    assert (task.channels, task.size, task.num_classes) == (1, 8, 10)
    pool = task.real_pool()
    x, y = pool.arrays["image"], pool.arrays["label"]
    assert x.shape == (80, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == -1.0 and x.max() <= 1.0 and np.all(pool.origin_generation == REAL)
    assert set(y.tolist()) <= set(range(10))
    # an image of class 3 read back from its file equals the pool item with that lineage
    images = {tuple(np.asarray(Image.open(p), dtype=np.float32).ravel() / 127.5 - 1.0)
              for p in sorted((folder / "3").glob("*.png"))}
    assert all(tuple(img.ravel()) in images for img in x[y == 3])
    assert not set(task.train_index) & set(task.heldout_index)
    again = ImageDiffusion(data={"path": "imagefolder", "data_dir": str(folder)}, **tiny())
    again.setup(0)
    assert np.array_equal(again.train_index, task.train_index)
    assert not np.array_equal(split_indices(120, 80, 40, 1)[0], task.train_index)


def test_rgb_folder_gives_three_channels_and_resolution_resizes(tmp_path):
    root = write_folder(tmp_path / "rgb", per_class=3, size=12, mode="RGB")
    t = ImageDiffusion(data={"path": "imagefolder", "data_dir": str(root)}, resolution=8,
                       **tiny(train_size=20, heldout_size=10))
    t.setup(0)
    assert (t.channels, t.size) == (3, 8) and t.real_pool().arrays["image"].shape == (20, 3, 8, 8)
    assert t.build_model().config.in_channels == 3


# -- model, loss, sampling ---------------------------------------------------------------------------------
def test_loss_target_follows_prediction_type(task):
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 20, 49])
    assert torch.equal(task.target(x0, noise, t), noise)
    v = ImageDiffusion(**tiny(scheduler={"num_train_timesteps": 50, "prediction_type": "v_prediction"}))
    abar = v.noise.alphas_cumprod[t].float()[:, None, None, None]
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert torch.allclose(v.target(x0, noise, t), expected, atol=1e-6)


def test_step_outputs_features_and_gradients(task):
    torch.manual_seed(0)
    model = task.build_model()
    assert model.config.num_class_embeds == 11 and model.config.sample_size == 8
    batch = next(iter(task.dataloader(task.real_pool(), shuffle=False, seed=0)))
    out = task.step(model, batch, frozenset({"features"}))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["features"].shape[0] == 32
    out["loss"].backward()
    assert sum(p.grad is not None for p in model.parameters()) > 0.9 * len(list(model.parameters()))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_is_seeded_by_the_generator_only_and_batched(task, sampler):
    t = ImageDiffusion(data=task.data, **tiny(sampler=sampler, eval_batch_size=7))
    t.setup(0)
    torch.manual_seed(0)
    model = t.build_model()
    torch.manual_seed(123)
    a = t.sample(model, 15, torch.Generator().manual_seed(5))
    torch.manual_seed(456)                        # the global RNG must not matter
    b = t.sample(model, 15, torch.Generator().manual_seed(5))
    c = t.sample(model, 15, torch.Generator().manual_seed(6))
    assert a["image"].shape == (15, 1, 8, 8) and a["image"].dtype == np.float32 and a["label"].dtype == np.int64
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert not np.array_equal(a["image"], c["image"]) and np.abs(a["image"]).max() <= 1.0
    assert np.bincount(a["label"], minlength=10).max() - np.bincount(a["label"], minlength=10).min() <= 1
    with pytest.raises(ValueError, match="top_k"):
        t.sample(model, 2, torch.Generator(), top_k=3)


def test_mlp_model_option_and_unconditional_data(task):
    t = ImageDiffusion(data=task.data, label_key=None, model="mlp", mlp={"hidden": 32, "depth": 1}, **tiny())
    t.setup(0)
    assert t.num_classes is None and t.label_key is None and not t.conditional
    torch.manual_seed(0)
    model = t.build_model()
    batch = next(iter(t.dataloader(t.real_pool(), shuffle=False, seed=0)))
    assert t.step(model, batch, frozenset({"features"}))["features"].shape == (32, 32)
    drawn = t.sample(model, 6, torch.Generator().manual_seed(0))
    assert drawn["image"].shape == (6, 1, 8, 8) and (drawn["label"] == 0).all()
    metrics = t.evaluate(model, None)
    assert {"fid", "kid", "effective_rank", "heldout_loss"} == set(metrics)


def test_encode_is_deterministic_and_label_free(task):
    torch.manual_seed(0)
    model = task.build_model()
    x = task.real_pool().arrays["image"][:5]
    z = task.encode(model, x)
    assert z.ndim == 2 and len(z) == 5 and torch.equal(z, task.encode(model, x))
    assert task.features(x).shape == (5, 16)


# -- metrics ----------------------------------------------------------------------------------------------
def ref_ole(z, y):
    z = np.asarray(z, dtype=np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    per_class = sum(np.linalg.norm(z[np.asarray(y) == c], "nuc") for c in sorted(set(y.tolist())))
    return (per_class - np.linalg.norm(z, "nuc")) / len(z)


def test_ole_matches_reference_and_is_zero_for_orthogonal_classes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=30)
    z = rng.normal(size=(30, 6)) + 2.0 * rng.normal(size=(3, 6))[y]
    assert ole_objective(z, y) == pytest.approx(ref_ole(z, y), rel=1e-10)
    assert ole_objective(z, y) > 0
    # each class spans its own coordinate block: orthogonal subspaces -> 0
    ortho = np.zeros((30, 6))
    for i, c in enumerate(y):
        ortho[i, 2 * c:2 * c + 2] = rng.normal(size=2)
    assert ole_objective(ortho, y) == pytest.approx(0.0, abs=1e-10)
    # every class on one line: the objective grows to (sum_c ||Z_c||_* - ||Z||_*) / N > 0
    line = np.ones((30, 6)) * rng.uniform(0.5, 1.5, size=(30, 1))
    assert ole_objective(line, y) == pytest.approx(ref_ole(line, y), rel=1e-10)


def test_fid_and_kid_of_real_images_are_near_zero_and_of_noise_large(task):
    fid_self, kid_self = task.fid_kid(task.heldout_x)
    noise = np.random.default_rng(0).uniform(-1, 1, task.heldout_x.shape).astype(np.float32)
    fid_noise, kid_noise = task.fid_kid(noise)
    fid_train, kid_train = task.fid_kid(task.train_x)
    # KID is unbiased, so of a set against itself slightly negative (the diagonal of the kernel is left out)
    assert abs(fid_self) < 1e-6 and abs(kid_self) < 0.25 * kid_noise
    assert 0 < fid_train < fid_noise / 4 and kid_train < kid_noise / 4 and kid_noise > 0.2
    assert task.fid_kid(noise) == (fid_noise, kid_noise)                 # KID's subsets are seeded
    ref = task.reference_metrics()
    assert ref["class_accuracy"] > 0.8 and set(ref) == {"fid", "kid", "effective_rank", "class_accuracy", "ole"}


def test_evaluate_reports_every_declared_metric_deterministically(task):
    torch.manual_seed(0)
    model = task.build_model()
    m1, m2 = task.evaluate(model, None), task.evaluate(model, None)
    assert set(m1) == set(ImageDiffusion.higher_is_better) and m1 == m2
    assert all(math.isfinite(v) for v in m1.values()) and 0 <= m1["class_accuracy"] <= 1


def test_image_grid_sorts_by_label():
    images = np.stack([np.full((1, 4, 4), v, np.float32) for v in (1.0, -1.0, 0.0)])
    grid = np.asarray(image_grid(images, np.array([2, 0, 1]), min_side=4, columns=3))
    assert grid.shape == (8, 3 * 6 + 2)
    assert grid[2, 2] == 0 and grid[2, 8] == 128 and grid[2, 14] == 255
    # ten classes of 30 items each: one row per class, ten per row
    many = np.stack([np.full((1, 2, 2), c / 10, np.float32) for c in range(10) for _ in range(30)])
    grid = np.asarray(image_grid(many, np.repeat(np.arange(10), 30), min_side=2))
    assert grid.shape == (10 * 4 + 2, 10 * 4 + 2)
    assert [grid[2 + 4 * r, 2 + 4 * c] for r in (0, 9) for c in (0, 9)] == [128, 128, 242, 242]


# -- real runs ----------------------------------------------------------------------------------------------
def test_two_generation_runs_of_every_method(tmp_path, task):
    args = tiny(data=task.data)
    runs = {}
    for name, plugins in [("baseline", []), ("acc", ["accumulate-subsample"]),
                          ("lsf", ["accumulate-subsample", {"class_path": "latent-filter", "init_args": {"keep": 0.5}}]),
                          ("lsf-acc", ["latent-filter-accumulated"])]:
        runs[name] = run_method(tmp_path, name, plugins, args)
    for name, (run, metrics) in runs.items():
        assert len(metrics) == 2 and set(ImageDiffusion.higher_is_better) <= set(metrics[1]), name
        assert metrics[1]["pool/size"] == (40 if name == "baseline" else 80) and metrics[1]["train/steps"] == 4
        assert (run.dir / "gen_1" / "samples.png").is_file()
    assert runs["baseline"][1][1]["pool/real_share"] == 0.0
    assert 0 < runs["acc"][1][1]["pool/real_share"] < 1
    assert runs["lsf"][1][0]["synthetic/kept"] == 20            # keep 0.5 of 40
    acc = runs["lsf-acc"][1][1]
    # the accumulated rule: real share of the accumulated pool (80 real, 40 synthetic), top 27 by xi
    assert acc["pool/real_share"] == pytest.approx(53 / 80)
    assert acc["latent_filter_accumulated/synthetic"] == 27
    assert acc["latent_filter_accumulated/rejected_score"] <= acc["latent_filter_accumulated/threshold"]
    # the saved UNet loads with diffusers alone and is the trained model
    from diffusers import UNet2DModel

    run = runs["baseline"][0]
    loaded = UNet2DModel.from_pretrained(run.dir / "gen_1" / "model")
    assert (run.dir / "gen_1" / "model" / "diffusion_pytorch_model.safetensors").is_file()
    assert torch.equal(loaded.conv_in.weight, run.model_of(1).conv_in.weight)
    drawn = task.sample(loaded, 3, torch.Generator().manual_seed(0))
    assert drawn["image"].shape == (3, 1, 8, 8)
    # collapsekit report shows the generations' sample grids side by side
    from collapsekit.bench.report import report

    written = report(run.dir)
    assert run.dir / "plots" / "samples.png" in written


# -- errors, all before training ----------------------------------------------------------------------------
def _setup(**args):
    ImageDiffusion(**tiny(**args)).setup(0)


def test_data_errors_are_clear(tmp_path):
    mixed_mode = write_folder(tmp_path / "modes", per_class=3)
    Image.new("RGB", (8, 8)).save(mixed_mode / "0" / "odd.png")
    with pytest.raises(CollapsekitError, match=r"mixed modes: .*\.png is L, .*odd\.png is RGB"):
        _setup(data={"path": "imagefolder", "data_dir": str(mixed_mode)}, train_size=20, heldout_size=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollapsekitError, match="holds no files \\(empty folder\\?\\)"):
        _setup(data={"path": "imagefolder", "data_dir": str(tmp_path / "empty")})
    ok = write_folder(tmp_path / "ok", per_class=3)
    with pytest.raises(CollapsekitError, match="label_key 'class' is not a column"):
        _setup(data={"path": "imagefolder", "data_dir": str(ok)}, label_key="class", train_size=20, heldout_size=5)
    with pytest.raises(CollapsekitError, match="exceeds"):
        _setup(data={"path": "imagefolder", "data_dir": str(ok)}, train_size=30, heldout_size=5)


def test_config_errors_are_clear():
    with pytest.raises(CollapsekitError, match=r"unet.in_channels = 3 does not match the data, which need 1"):
        _setup(unet={**TINY_UNET, "in_channels": 3})
    with pytest.raises(CollapsekitError, match=r"unet.sample_size = 16 does not match"):
        _setup(unet={**TINY_UNET, "sample_size": 16})
    with pytest.raises(CollapsekitError, match="num_class_embeds"):
        _setup(unet={**TINY_UNET, "num_class_embeds": 10})
    with pytest.raises(CollapsekitError, match="halves the image"):
        _setup(resolution=6, unet={**TINY_UNET, "block_out_channels": [8, 16, 16],
                                   "down_block_types": ["DownBlock2D"] * 3, "up_block_types": ["UpBlock2D"] * 3})
    with pytest.raises(CollapsekitError, match="mid block"):
        _setup(unet={**TINY_UNET, "mid_block_type": None})
    with pytest.raises(ValueError, match="unknown scheduler 'EulerScheduler'"):
        ImageDiffusion(scheduler={"class_name": "EulerScheduler"})
    with pytest.raises(ValueError, match="unknown DDPMScheduler settings"):
        ImageDiffusion(scheduler={"num_steps": 10})
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        ImageDiffusion(sampler="euler")
    with pytest.raises(ValueError, match="unknown model"):
        ImageDiffusion(model="dit")


def test_inception_path_errors(tmp_path):
    with pytest.raises(CollapsekitError, match="is not a file"):
        _setup(inception_path=str(tmp_path / "missing.pth"))
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(CollapsekitError, match="torch-fidelity"):
            _setup(inception_path=str(weights))


def test_config_error_stops_a_run_before_training(tmp_path):
    with pytest.raises(CollapsekitError, match="in_channels"):
        run_method(tmp_path, "bad", [], tiny(unet={**TINY_UNET, "in_channels": 3}))
    assert not (tmp_path / "bad" / "gen_0" / "model").exists()


# -- presets and configs ------------------------------------------------------------------------------------
def test_presets_and_configs():
    for name in ("smoke", "cpu", "gpu"):
        spec = ImageDiffusion.preset(name)
        assert set(spec) >= {"task", "trainer", "generations"}
        ImageDiffusion(**spec["task"])
    gpu = ImageDiffusion(**ImageDiffusion.preset("gpu")["task"])
    gpu.size, gpu.channels, gpu.num_classes = 32, 1, 10          # the 32x32 stand-in, without loading it
    assert gpu.resolved_unet_config()["block_out_channels"] == [128, 128, 256, 256, 512, 512]
    assert set(ImageDiffusion.headline) <= set(ImageDiffusion.higher_is_better)
    for path in sorted(CONFIGS.glob("image-diffusion*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["task"]["class_path"] == "collapsekit.plugins.tasks.image_diffusion.ImageDiffusion"
        assert {"name", "generations", "plugins"} <= set(config["run"])
        ImageDiffusion(**config["task"]["init_args"])


def test_mixed_sizes_are_resized_when_resolution_is_set(tmp_path):
    folder = write_folder(tmp_path / "sizes", per_class=3)
    Image.new("L", (12, 12), color=255).save(folder / "0" / "odd.png")
    task = ImageDiffusion(**tiny(data={"path": "imagefolder", "data_dir": str(folder)}, resolution=8,
                                 train_size=20, heldout_size=11, evaluator_steps=0))
    task.setup(0)
    images = np.concatenate([task.train_x, task.heldout_x])
    assert images.shape == (31, 1, 8, 8) and (images == 1.0).all(axis=(1, 2, 3)).sum() == 1   # the white 12x12
    with pytest.raises(CollapsekitError, match=r"mixed sizes: .*\.png is 8x8, .*odd\.png is 12x12; set resolution"):
        _setup(data={"path": "imagefolder", "data_dir": str(folder)}, resolution=None, train_size=20, heldout_size=5)


def test_a_corrupt_image_is_named(tmp_path):
    folder = write_folder(tmp_path / "corrupt", per_class=2)
    (folder / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(CollapsekitError, match=r"^image-diffusion: cannot read the image .*4/broken\.png "
                                               r"\(UnidentifiedImageError: .*\); replace or delete that file$"):
        _setup(data={"path": "imagefolder", "data_dir": str(folder)}, train_size=10, heldout_size=5)


def test_the_defaults_fit_a_300_image_folder_quietly(tmp_path, capfd):
    """Held-out share 0.2 and the rest for training; a local folder shows no download bars."""
    folder = write_folder(tmp_path / "three_hundred", per_class=30)
    capfd.readouterr()
    task = ImageDiffusion(data={"path": "imagefolder", "data_dir": str(folder)}, evaluator_steps=0)
    task.setup(0)
    assert (len(task.train_x), len(task.heldout_x)) == (240, 60)
    assert not set(task.train_index) & set(task.heldout_index)
    shown = capfd.readouterr()
    assert "Downloading" not in shown.err + shown.out and "Generating" not in shown.err + shown.out
