"""The pool policies wired through real runs (real pluggy, real Lightning Trainer) on the analytic
tasks: pool sizes and lineage per generation, without-replacement draws, real shares, reading only
the chosen rows, determinism and resume, entry points, errors, the shipped configs."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import collapsekit
from collapsekit import hookimpl
from collapsekit.dispatch import build_manager
from collapsekit.errors import PluginConflict, PluginLoadError
from collapsekit.plugins.tasks.gaussian import Gaussian
from collapsekit.plugins.tasks.linear_regression import LinearRegression
from collapsekit.pool import REAL, Pool
from collapsekit.run import Run, RunConfig
from collapsekit.seeds import numpy_rng
from collapsekit.testing import PluginConformance, run_tiny
from collapsekit_accumulate import fresh_fraction
from collapsekit_accumulate.plugin import AccumulateSubsample

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
N = 16


def gaussian() -> Gaussian:
    return Gaussian(dim=2, train_size=N, replicates=2)


def lineage(root: Path, name: str, g: int) -> tuple[np.ndarray, np.ndarray]:
    lin = Pool.load(root / name / f"gen_{g}" / "train_lineage")
    return np.asarray(lin.origin_generation), np.asarray(lin.origin_index)


def composed(root: Path, name: str, task, plugin_spec, g: int, seed: int = 0, generations: int = 99) -> Pool:
    """Recompute generation ``g``'s training pool of a finished run from its on-disk history."""
    run = Run(RunConfig(name=name, root=str(root), generations=generations, seed=seed), task)
    hooks = build_manager([plugin_spec])
    _, pool = hooks.first("compose_pool", run=run, generation=g, real=task.real_pool(), history=run.history(g))
    return pool


def assert_lineage_correct(pool: Pool, real: Pool, run_dir: Path) -> None:
    """Every item equals the item its lineage names (real pool or a generation's kept pool)."""
    for i, (g, j) in enumerate(zip(pool.origin_generation, pool.origin_index)):
        if g == REAL:
            src, pos = real, int(j)
        else:
            src = Pool.load(run_dir / f"gen_{g}" / "pool")
            pos = int(np.flatnonzero(np.asarray(src.origin_index) == j)[0])
        for k in pool.keys:
            np.testing.assert_array_equal(pool.arrays[k][i], src.arrays[k][pos])


class DropEveryThird:
    """In-process filter: drops synthetic items whose index is a multiple of 3 (so lineage index != row)."""

    @hookimpl
    def filter_samples(self, samples):
        return np.asarray(samples.origin_index) % 3 != 0


@pytest.fixture
def drop_third():
    with collapsekit.registered(DropEveryThird(), name="drop-third"):
        yield


KEPT = sum(1 for i in range(N) if i % 3)   # synthetic items kept per generation by DropEveryThird


# -- discovery and settings ---------------------------------------------------------------------------------
def test_entry_points_are_installed():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="collapsekit")}
    for name, cls in [("accumulate", "Accumulate"), ("accumulate-subsample", "AccumulateSubsample"),
                      ("fresh-mix", "FreshMix")]:
        assert eps[name].value == f"collapsekit_accumulate.plugin:{cls}"
        assert eps[name].dist.name == "collapsekit-accumulate"


@pytest.mark.parametrize("spec, match", [
    ({"class_path": "accumulate", "init_args": {"keep_real": "yes"}}, "keep_real must be true or false"),
    ({"class_path": "accumulate-subsample", "init_args": {"budget": 0}}, "budget must be an integer >= 1"),
    ({"class_path": "fresh-mix", "init_args": {"alpha": 1.5}}, r"alpha must be in \[0, 1\]"),
    ({"class_path": "fresh-mix", "init_args": {"schedule": "cosine"}}, "unknown schedule 'cosine'"),
    ({"class_path": "fresh-mix", "init_args": {"horizon": 0}}, "horizon must be an integer >= 1"),
    ({"class_path": "fresh-mix", "init_args": {"ratio": 0.5}}, "bad init_args"),
])
def test_bad_settings_name_the_plugin_and_the_fix(spec, match):
    with pytest.raises(PluginLoadError, match=match) as info:
        build_manager([spec])
    assert spec["class_path"] in str(info.value)


def test_two_policies_are_refused():
    with pytest.raises(PluginConflict, match="two compose_pool policies"):
        build_manager(["accumulate", "fresh-mix"])


# -- accumulate ------------------------------------------------------------------------------------------------
def test_accumulate_grows_by_each_kept_generation_with_correct_lineage(tmp_path, drop_third):
    task = gaussian()
    metrics = run_tiny(tmp_path, ["accumulate"], task, name="acc", generations=4, max_steps=1)
    for g in range(4):
        gen, idx = lineage(tmp_path, "acc", g)
        assert len(gen) == N + g * KEPT == metrics[g]["pool/size"]
        assert metrics[g]["pool/real_share"] == pytest.approx(N / (N + g * KEPT))
        assert (gen == REAL).sum() == N and all((gen == k).sum() == KEPT for k in range(g))
        assert len(set(zip(gen.tolist(), idx.tolist()))) == len(gen)       # nothing twice
        pool = composed(tmp_path, "acc", task, "accumulate", g)
        np.testing.assert_array_equal(pool.origin_generation, gen)          # the pool trained on
        np.testing.assert_array_equal(pool.origin_index, idx)
        assert_lineage_correct(pool, task.real_pool(), tmp_path / "acc")


def test_accumulate_without_real_data(tmp_path):
    spec = {"class_path": "accumulate", "init_args": {"keep_real": False}}
    run_tiny(tmp_path, [spec], gaussian(), name="nr", generations=3, max_steps=1)
    assert (lineage(tmp_path, "nr", 0)[0] == REAL).all()
    gen, _ = lineage(tmp_path, "nr", 2)
    assert sorted(set(gen.tolist())) == [0, 1] and len(gen) == 2 * N


# -- accumulate-subsample --------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [None, 5])
def test_subsample_keeps_the_budget_without_replacement(tmp_path, drop_third, budget):
    task = gaussian()
    spec = {"class_path": "accumulate-subsample", "init_args": {"budget": budget}}
    metrics = run_tiny(tmp_path, [spec], task, name="sub", generations=5, max_steps=1)
    seen = set()
    for g in range(5):
        gen, idx = lineage(tmp_path, "sub", g)
        assert len(gen) == (budget or N) == metrics[g]["pool/size"]
        pairs = set(zip(gen.tolist(), idx.tolist()))
        assert len(pairs) == len(gen)                                        # without replacement
        assert gen.max() < g and gen.min() >= REAL
        seen |= set(gen.tolist())
        pool = composed(tmp_path, "sub", task, spec, g)
        np.testing.assert_array_equal(pool.origin_generation, gen)
        np.testing.assert_array_equal(pool.origin_index, idx)
        assert_lineage_correct(pool, task.real_pool(), tmp_path / "sub")
    assert REAL in seen and len(seen) >= 3                                   # drawn from across the accumulation


class SpyArray:
    """Array stand-in that records every row selection and refuses to be read whole."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.reads = data, []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        index = np.asarray(index)
        self.reads.append(index)
        return self.data[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("a whole source array was read; only the chosen rows may be")


def test_subsample_reads_only_the_chosen_rows():
    def spy_pool(generation: int, n: int) -> Pool:
        data = np.arange(n * 2, dtype=np.float64).reshape(n, 2) + 1000 * generation
        return Pool({"x": SpyArray(data)}, np.full(n, generation), np.arange(n))

    real, history = spy_pool(REAL, 50), [spy_pool(g, 50) for g in range(3)]
    run = SimpleNamespace(rng=lambda g, role: numpy_rng(0, g, role))
    pool = AccumulateSubsample(budget=20).compose_pool(run=run, generation=3, real=real, history=history)
    assert len(pool) == 20
    rows = 0
    for src in [real] + history:
        for read in src.arrays["x"].reads:
            assert read.dtype.kind == "i" and len(set(read.tolist())) == len(read)
            rows += len(read)
    assert rows == 20
    for i, (g, j) in enumerate(zip(pool.origin_generation, pool.origin_index)):
        assert pool.arrays["x"][i, 0] == 2 * j + 1000 * g


def test_subsample_is_seeded_and_resumes_identically(tmp_path):
    spec = {"class_path": "accumulate-subsample", "init_args": {"budget": 6}}
    run_tiny(tmp_path, [spec], gaussian(), name="a", generations=4, max_steps=1, seed=0)
    run_tiny(tmp_path, [spec], gaussian(), name="b", generations=2, max_steps=1, seed=0)
    run_tiny(tmp_path, [spec], gaussian(), name="b", generations=4, max_steps=1, seed=0)    # resume
    run_tiny(tmp_path, [spec], gaussian(), name="c", generations=4, max_steps=1, seed=1)
    for g in range(4):
        for a, b in zip(lineage(tmp_path, "a", g), lineage(tmp_path, "b", g)):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(lineage(tmp_path, "a", g)[1], lineage(tmp_path, "c", g)[1]) for g in range(4))


# -- fresh-mix ---------------------------------------------------------------------------------------------------
def test_fresh_mix_real_share_matches_alpha(tmp_path):
    task = LinearRegression(dim=2, train_size=N, replicates=2)
    spec = {"class_path": "fresh-mix", "init_args": {"alpha": 0.25}}
    metrics = run_tiny(tmp_path, [spec], task, name="fm", generations=3, max_steps=1)
    assert metrics[0]["pool/real_share"] == 1.0 and metrics[0]["fresh_mix/alpha"] == 1.0
    real_draws = []
    for g in (1, 2):
        gen, idx = lineage(tmp_path, "fm", g)
        assert len(gen) == N and metrics[g]["pool/real_share"] == 0.25 and metrics[g]["fresh_mix/alpha"] == 0.25
        assert set(gen.tolist()) == {REAL, g - 1}                              # real + the latest generation
        assert len(set(idx[gen == REAL].tolist())) == 4 and len(set(idx[gen == g - 1].tolist())) == 12
        real_draws.append(set(idx[gen == REAL].tolist()))
        assert_lineage_correct(composed(tmp_path, "fm", task, spec, g, generations=3), task.real_pool(),
                               tmp_path / "fm")
    assert real_draws[0] != real_draws[1]                                      # fresh draw each generation


@pytest.mark.parametrize("schedule, extra", [("linear", {"alpha_end": 0.25}),
                                             ("exponential", {"alpha_end": 0.0, "decay": 0.5})])
def test_fresh_mix_schedules(tmp_path, schedule, extra):
    spec = {"class_path": "fresh-mix", "init_args": {"alpha": 0.75, "schedule": schedule, **extra}}
    metrics = run_tiny(tmp_path, [spec], gaussian(), name="s", generations=4, max_steps=1)
    for g, m in enumerate(metrics):
        alpha = fresh_fraction(g, 0.75, schedule, horizon=3, **extra)
        assert m["fresh_mix/alpha"] == pytest.approx(alpha)
        assert m["pool/real_share"] == pytest.approx(round(alpha * N) / N)
    if schedule == "linear":
        assert [m["fresh_mix/alpha"] for m in metrics] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_fresh_mix_budget_shrinks_to_keep_the_share(tmp_path, drop_third):
    spec = {"class_path": "fresh-mix", "init_args": {"alpha": 0.0, "budget": N}}
    metrics = run_tiny(tmp_path, [spec], gaussian(), name="sh", generations=2, max_steps=1)
    assert metrics[1]["pool/size"] == KEPT and metrics[1]["pool/real_share"] == 0.0


# -- conformance kit (hooks, pickling, determinism, well-formed results) -----------------------------------------
class TestAccumulateConformance(PluginConformance):
    plugin_name = "accumulate"
    task_factory = staticmethod(gaussian)
    generations, max_steps = 3, 1


class TestAccumulateSubsampleConformance(PluginConformance):
    plugin_name = "accumulate-subsample"
    plugin_args = {"budget": 8}
    task_factory = staticmethod(gaussian)
    generations, max_steps = 3, 1


class TestFreshMixConformance(PluginConformance):
    plugin_name = "fresh-mix"
    plugin_args = {"alpha": 0.5, "schedule": "exponential"}
    task_factory = staticmethod(gaussian)
    generations, max_steps = 3, 1


# -- the shipped configs ----------------------------------------------------------------------------------------
def run_config(path: Path, root: Path, *overrides: str) -> Path:
    """Parse a shipped config as ``collapsekit run`` does (with overrides) and run it; return the run dir."""
    from collapsekit.cli import load_run_config
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.testing import quiet_lightning

    _, cfg, run_config, task, config_dict = load_run_config(
        ["--config", str(path), "--run.root", str(root), "--run.generations", "3", *overrides])
    assert cfg.trainer.max_steps >= 1
    run = Run(run_config, task, build_manager(run_config.plugins), config_dict)
    with quiet_lightning():
        execute(run, trainer_factory(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False))
    return run.dir


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")
                                          if p.name.startswith(("gaussian-", "linear-regression-"))))
def test_config_runs(tmp_path, config):
    run_dir = run_config(CONFIGS / config, tmp_path, "--task.init_args.replicates", "3")
    assert run_dir.name == config[:-len(".yaml")]
    assert Pool.load(run_dir / "gen_2" / "train_lineage").origin_generation.max() == 1


def test_markov_text_accumulate_config_runs(tmp_path):
    run_dir = run_config(CONFIGS / "markov-text-accumulate.yaml", tmp_path, "--task.init_args.train_size", "16",
                         "--task.init_args.heldout_size", "8", "--task.init_args.seq_len", "8",
                         "--task.init_args.n_embd", "8")
    gen, _ = lineage(tmp_path, run_dir.name, 2)
    assert (gen == REAL).sum() == 16 and (gen == 0).sum() == 16 and (gen == 1).sum() == 16


def test_fresh_mix_weighs_real_data_by_the_golden_ratio(tmp_path):
    """real_weight: golden gives the real half of a 1:1 pool 61.8% of the loss; the gaussian task fits the
    correspondingly weighted MLE (its mean is the weighted mean of the pool it trained on)."""
    task = gaussian()
    spec = {"class_path": "fresh-mix", "init_args": {"alpha": 0.5, "real_weight": "golden"}}
    metrics = run_tiny(tmp_path, [spec], task, name="gold", generations=2, max_steps=1)
    golden = (5 ** 0.5 - 1) / 2
    assert "fresh_mix/real_weight" not in metrics[0] and "pool/real_weight_share" not in metrics[0]
    assert metrics[1]["fresh_mix/real_weight"] == pytest.approx(golden, rel=1e-12)
    assert metrics[1]["pool/real_weight_share"] == pytest.approx(golden, rel=1e-12)
    lineage_pool = Pool.load(tmp_path / "gold" / "gen_1" / "train_lineage")
    real = lineage_pool.origin_generation == REAL
    assert lineage_pool.weights.mean() == pytest.approx(1.0) and real.mean() == 0.5
    assert lineage_pool.weights[real].sum() / lineage_pool.weights.sum() == pytest.approx(golden, rel=1e-12)
    x = np.concatenate([task.real_pool().arrays["x"][lineage_pool.origin_index[real]],
                        Pool.load(tmp_path / "gold" / "gen_0" / "pool").arrays["x"][lineage_pool.origin_index[~real]]])
    w = np.r_[lineage_pool.weights[real], lineage_pool.weights[~real]]
    model = task.load_model(tmp_path / "gold" / "gen_1")
    np.testing.assert_allclose(model.mean.detach().numpy(), np.einsum("n,nrd->rd", w / w.sum(), x), rtol=1e-10)
    with pytest.raises(PluginLoadError, match="real_weight must be null, 'golden' or a number in"):
        run_tiny(tmp_path, [{"class_path": "fresh-mix", "init_args": {"real_weight": 2.0}}], task, name="bad")
