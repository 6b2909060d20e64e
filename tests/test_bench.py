"""The benchmark runner (collapsekit.bench.runner), its rendering (collapsekit.bench.report) and the perf smoke."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from collapsekit.bench import check_method, method_parts, method_plugins, plan, run_bench
from collapsekit.errors import CollapsekitError, ConfigError, PluginLoadError, PluginNotFound
from collapsekit.registry import PluginInfo

TINY = {"task": {"vocab_size": 16, "seq_len": 16, "train_size": 64, "heldout_size": 32, "n_layer": 1,
                 "n_embd": 16, "n_head": 2, "batch_size": 16},
        "trainer": {"max_steps": 3}, "generations": 2}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """One real smoke bench: markov-text x baseline x seed 0, 2 generations, tiny sizes."""
    out = tmp_path_factory.mktemp("bench")
    results = run_bench("smoke", tasks=["markov-text"], methods=["baseline"], seeds=[0], out=out, progress=False,
                        overrides={"markov-text": TINY}, fail_fast=True)
    return out, results


def test_results_json_has_exactly_the_long_format(bench_dir):
    out, returned = bench_dir
    results = json.loads((out / "results.json").read_text())
    assert results == returned
    assert set(results) == {"meta", "metrics", "rows"}
    meta = results["meta"]
    for key in ("version", "commit", "torch", "lightning", "device", "seeds", "preset", "wall_time_s"):
        assert key in meta, key
    assert meta["preset"] == "smoke" and meta["seeds"] == [0]
    wall = meta["wall_time_s"]
    assert [(c["task"], c["method"], c["seed"]) for c in wall["cells"]] == [("markov-text", "baseline", 0)]
    assert wall["total"] == pytest.approx(sum(c["seconds"] for c in wall["cells"])) and wall["total"] > 0
    rows = results["rows"]
    assert rows and all(set(r) == {"task", "method", "seed", "generation", "metric", "value"} for r in rows)
    assert {(r["task"], r["method"], r["seed"]) for r in rows} == {("markov-text", "baseline", 0)}
    assert {r["generation"] for r in rows} == {0, 1}
    assert all(isinstance(r["value"], float) or r["value"] is None for r in rows)
    assert {r["metric"] for r in rows} == set(results["metrics"])
    assert all(set(v) == {"higher_is_better"} and v["higher_is_better"] in (True, False, None)
               for v in results["metrics"].values())
    assert results["metrics"]["kl"] == {"higher_is_better": False}
    assert results["metrics"]["tail_coverage_2"] == {"higher_is_better": True}
    assert results["metrics"]["pool/size"] == {"higher_is_better": None}   # engine diagnostic: not ranked


def test_rows_are_the_run_directory_metrics(bench_dir):
    out, results = bench_dir
    run_dir = out / "runs" / "smoke" / "markov-text" / "baseline-s0"
    for g in (0, 1):
        on_disk = json.loads((run_dir / f"gen_{g}" / "metrics.json").read_text())
        rows = {r["metric"]: r["value"] for r in results["rows"] if r["generation"] == g}
        assert rows == {k: (v if math.isfinite(v) else None) for k, v in on_disk.items()}
    config = (run_dir / "config.yaml").read_text()
    assert "MarkovText" in config and "max_steps: 3" in config


def test_results_md_and_plots(bench_dir):
    out, results = bench_dir
    md = (out / "RESULTS.md").read_text()
    assert "## markov-text" in md and "| `baseline` | 1 |" in md
    assert "`kl` ↓" in md and "`tail_coverage_2` ↑" in md
    assert "**preset**: smoke" in md and results["meta"]["commit"] in md
    final_kl = next(r["value"] for r in results["rows"] if r["generation"] == 1 and r["metric"] == "kl")
    assert f"{final_kl:.4g}" in md
    png = out / "plots" / "markov-text.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "![markov-text](plots/markov-text.png)" in md


def test_rerun_resumes_without_retraining(bench_dir):
    out, results = bench_dir
    done = out / "runs" / "smoke" / "markov-text" / "baseline-s0" / "gen_1" / "done"
    stamp = done.stat().st_mtime_ns
    again = run_bench("smoke", tasks=["markov-text"], methods=["baseline"], seeds=[0], out=out, progress=False,
                      overrides={"markov-text": TINY}, fail_fast=True)
    assert done.stat().st_mtime_ns == stamp
    assert again["rows"] == results["rows"]
    assert again["meta"]["wall_time_s"]["cells"] == results["meta"]["wall_time_s"]["cells"]


def test_later_calls_with_other_cells_merge_into_results(tmp_path):
    one = {"markov-text": {**TINY, "generations": 1, "trainer": {"max_steps": 1}}}
    run_bench("smoke", tasks=["markov-text"], methods=["baseline"], seeds=[0], out=tmp_path, progress=False,
              overrides=one, fail_fast=True)
    merged = run_bench("smoke", tasks=["markov-text"], methods=["baseline"], seeds=[1], out=tmp_path,
                       progress=False, overrides=one, fail_fast=True)
    assert {r["seed"] for r in merged["rows"]} == {0, 1}
    assert merged["meta"]["seeds"] == [0, 1] and merged["meta"]["tasks"]["markov-text"]["seeds"] == [0, 1]
    assert [c["seed"] for c in merged["meta"]["wall_time_s"]["cells"]] == [0, 1]
    assert "| `baseline` | 2 |" in (tmp_path / "RESULTS.md").read_text()


def test_report_rerenders_a_bench_dir(bench_dir):
    from collapsekit.bench.report import report

    out, _ = bench_dir
    before = (out / "RESULTS.md").read_text()
    (out / "RESULTS.md").unlink()
    (out / "plots" / "markov-text.png").unlink()
    paths = report(out)
    assert out / "RESULTS.md" in paths and (out / "plots" / "markov-text.png").is_file()
    assert (out / "RESULTS.md").read_text() == before


def test_report_plots_a_single_run(tmp_path, tiny_task):
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.bench.report import report
    from collapsekit.run import Run, RunConfig

    config = RunConfig(name="r", root=str(tmp_path), generations=2)
    task_config = {"class_path": "collapsekit.plugins.tasks.markov_text.MarkovText", "init_args": {}}
    run = Run(config, tiny_task, build_manager([]), {"run": vars(config), "task": task_config})
    execute(run, trainer_factory(max_steps=2, enable_progress_bar=False, logger=False))
    paths = report(tmp_path / "r")
    # every language task writes samples.jsonl, which the report shows as samples.md
    assert {p.name for p in paths} == {"metrics.png", "headline.png", "samples.md"}
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths if p.suffix == ".png")
    assert "## generation 1" in (tmp_path / "r" / "plots" / "samples.md").read_text()
    with pytest.raises(CollapsekitError, match="neither a run directory"):
        report(tmp_path)


def _table_lines(md, method):
    return [line for line in md.splitlines() if line.startswith(f"| `{method}`")]


def test_markdown_table_mean_std_and_no_bold_with_two_seeds():
    from collapsekit.bench.report import render_markdown

    values = {("a", 0): 2.0, ("a", 1): 4.0, ("b", 0): 1.0, ("b", 1): 1.5}   # loss: lower is better
    rows = [{"task": "t", "method": m, "seed": s, "generation": g, "metric": "loss", "value": v + g}
            for (m, s), v in values.items() for g in (0, 1)]
    rows += [{"task": "t", "method": m, "seed": s, "generation": 1, "metric": "acc", "value": 0.5 + s / 10}
             for m in "ab" for s in (0, 1)]
    rows += [{"task": "t", "method": m, "seed": s, "generation": 1, "metric": name, "value": 1.0 + s}
             for m in "ab" for s in (0, 1) for name in ("entropy", "pool/size")]
    md = render_markdown({"meta": {"preset": "x", "tasks": {"t": {"metrics": ["acc", "entropy", "loss"]}}},
                          "rows": rows,
                          "metrics": {"loss": {"higher_is_better": False}, "acc": {"higher_is_better": True},
                                      "entropy": {"higher_is_better": None},
                                      "pool/size": {"higher_is_better": None}}})
    line_a, line_b = _table_lines(md, "a")[0], _table_lines(md, "b")[0]
    assert line_a.startswith("| `a` (reference) |")        # no baseline: the first method is the reference
    mean_a, sd_a = statistics.mean([3.0, 5.0]), statistics.stdev([3.0, 5.0])
    mean_b, sd_b = statistics.mean([2.0, 2.5]), statistics.stdev([2.0, 2.5])
    assert f"{mean_a:.4g} ± {sd_a:.2g}" in line_a and f"{mean_b:.4g} ± {sd_b:.2g}" in line_b
    assert "**" not in line_a + line_b and "▲" not in md.split("## t")[1]     # 2 seeds: nothing marked
    assert "Difference from `a`: n/a (needs ≥ 3 seeds paired with the reference; this table has 2)" in md
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "`entropy` |" in header and "`loss` ↓" in header and "pool/size" not in header  # declared, unranked
    assert "1.5 ± 0.71 |" in line_a


def test_markdown_marks_only_significant_differences_with_their_interval():
    from collapsekit.bench.report import render_markdown
    from collapsekit.bench.stats import compare, holm_adjust

    seeds = range(5)
    base = {s: 10.0 + s for s in seeds}
    final = {"baseline": base,
             "good": {s: base[s] - 1.0 - 0.05 * s for s in seeds},            # lower loss on every seed
             "noisy": {s: base[s] + (0.5, -0.5, 0.3, -0.2, 0.1)[s] for s in seeds},
             "bad": {s: base[s] + 2.0 + 0.1 * (s % 2) for s in seeds}}
    rows = [{"task": "t", "method": m, "seed": s, "generation": 0, "metric": "loss", "value": v}
            for m, by_seed in final.items() for s, v in by_seed.items()]
    md = render_markdown({"meta": {"preset": "x", "tasks": {"t": {"metrics": ["loss"],
                                                                  "methods": list(final)}}},
                          "rows": rows, "metrics": {"loss": {"higher_is_better": False}}})
    assert "paired bootstrap" in md and "paired t-test" in md
    table = {m: _table_lines(md, m) for m in final}
    assert table["baseline"][0].startswith("| `baseline` (reference) | 5 |") and len(table["baseline"]) == 1
    good_row, good_diff = table["good"]
    family = holm_adjust({m: compare(final[m], base, higher_is_better=False) for m in ("good", "noisy", "bad")})
    c = family["good"]
    assert c.significant and c.better and c.p > c.p_raw      # the p shown is Holm-adjusted over the 3
    assert "Holm-adjusted over the 3 comparisons of this table" in md
    assert "** ▲" not in good_row and good_row.count("**") == 2 and "▲**" in good_row
    assert f"{c.mean:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}] p={c.p:.2g} ▲" in good_diff
    noisy_row, noisy_diff = table["noisy"]
    assert "**" not in noisy_row and "▲" not in noisy_row + noisy_diff and "▼" not in noisy_row + noisy_diff
    n = compare(final["noisy"], base, higher_is_better=False)
    assert not n.significant and f"{n.mean:+.3g} [{n.ci[0]:+.3g}, {n.ci[1]:+.3g}]" in noisy_diff
    bad_row, bad_diff = table["bad"]
    assert "▼" in bad_row and "▼" in bad_diff and "**" not in bad_row


def test_method_names():
    assert method_parts("baseline") == []
    assert method_parts("accumulate+latent_filter") == ["accumulate", "latent_filter"]
    with pytest.raises(ConfigError, match="cannot be combined"):
        method_parts("baseline+accumulate")
    with pytest.raises(ConfigError, match="bad method"):
        method_parts("a++b")
    assert method_plugins("a+b", {"B": {"x": 1}}) == ["a", {"class_path": "b", "init_args": {"x": 1}}]


def test_method_variants_are_their_plugin_with_other_init_args():
    variants = {"b-random": {"plugin": "b", "init_args": {"scorer": "random"}}}
    # the variant keeps the plugin's plugin_args (same kept share) and overrides its own keys
    assert method_plugins("a+b-random", {"b": {"keep": 0.3, "scorer": "probe"}}, variants) == \
        ["a", {"class_path": "b", "init_args": {"keep": 0.3, "scorer": "random"}}]
    assert method_plugins("b", {"b": {"keep": 0.3}}, variants) == [{"class_path": "b", "init_args": {"keep": 0.3}}]
    with pytest.raises(ConfigError, match="variant 'bad'"):
        method_plugins("bad", None, {"bad": {"init_args": {}}})


def test_a_variant_of_task_settings_adds_no_plugin_and_changes_the_cell_task_args():
    from collapsekit.bench.runner import method_task_args

    variants = {"vllm": {"task_args": {"backend": "vllm"}}}
    assert method_plugins("accumulate+vllm", None, variants) == ["accumulate"]
    assert method_task_args("accumulate+vllm", variants) == {"backend": "vllm"} and method_task_args("a") == {}
    cells, _ = plan("gpu-quick", tasks=["hf-lm"], progress=False)
    by_method = {c["method"]: c for c in cells}
    assert by_method["vllm"]["plugins"] == [] and by_method["vllm"]["task_args"]["backend"] == "vllm"
    assert {k: v for k, v in by_method["vllm"]["task_args"].items() if k != "backend"} == \
        by_method["baseline"]["task_args"] and "backend" not in by_method["baseline"]["task_args"]


def test_digits_diffusion_runs_lsf_beside_its_random_filter_control():
    cells, info = plan("cpu", tasks=["digits-diffusion"], seeds=[0], progress=False)
    by_method = {c["method"]: c["plugins"] for c in cells}
    lsf, control = "accumulate-subsample+latent-filter", "accumulate-subsample+latent-filter-random"
    assert lsf in by_method and control in by_method
    assert by_method[lsf] == ["accumulate-subsample", "latent-filter"]
    assert by_method[control] == ["accumulate-subsample", {"class_path": "latent-filter",
                                                           "init_args": {"scorer": "random"}}]


def test_image_diffusion_runs_both_lsf_rules_beside_their_random_controls():
    """Each LSF rule is paired with the same rule keeping the same share at random (its blind control)."""
    cells, info = plan("cpu", tasks=["image-diffusion"], seeds=[0], progress=False)
    by_method = {c["method"]: c["plugins"] for c in cells}
    assert by_method["accumulate-subsample+latent-filter-random"] == [
        "accumulate-subsample", {"class_path": "latent-filter", "init_args": {"scorer": "random"}}]
    assert by_method["latent-filter-accumulated-random"] == [
        {"class_path": "latent-filter-accumulated", "init_args": {"scorer": "random"}}]
    assert info["tasks"]["image-diffusion"]["controls"] == {
        "accumulate-subsample+latent-filter": "accumulate-subsample+latent-filter-random",
        "latent-filter-accumulated": "latent-filter-accumulated-random"}


def test_unknown_method_is_an_error_with_did_you_mean(tmp_path):
    with pytest.raises(PluginNotFound, match="Did you mean 'baseline'"):
        run_bench("smoke", tasks=["markov-text"], methods=["basline"], out=tmp_path / "b", progress=False)
    with pytest.raises(PluginNotFound, match="Did you mean 'ancestral'"):
        run_bench("smoke", tasks=["markov-text"], methods=["ancestrl"], out=tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()
    broken = {"broken": PluginInfo("broken", "collapsekit-broken", "0.1", error="ImportError: no torch")}
    with pytest.raises(PluginLoadError, match="collapsekit-broken"):
        check_method("broken", broken)


class FakeTask:
    bench_methods = ("baseline", "not-installed-plugin", "ancestral+not-installed-either")
    headline = ("m",)
    higher_is_better = {"m": True}

    @classmethod
    def preset(cls, name):
        if name != "cpu":
            raise ValueError(f"unknown preset {name!r}")
        return {"task": {"size": 3}, "trainer": {"max_steps": 7}, "generations": 2, "seeds": [4, 5]}


def test_plan_skips_default_methods_that_are_not_installed(monkeypatch, capsys):
    import collapsekit.bench.runner as bench

    monkeypatch.setattr(bench, "load_tasks", lambda names=None: ({"fake": FakeTask},
                                                                 {"gone": "collapsekit-x: ImportError: boom"}))
    cells, info = plan("cpu")
    assert [(c["method"], c["seed"]) for c in cells] == [("baseline", 4), ("baseline", 5)]
    assert all(c["trainer"]["max_steps"] == 7 and c["generations"] == 2 and c["plugins"] == [] for c in cells)
    assert [s["method"] for s in info["skipped"]] == ["not-installed-plugin", "ancestral+not-installed-either"]
    assert info["task_errors"] == {"gone": "collapsekit-x: ImportError: boom"}
    printed = capsys.readouterr().out
    assert "'gone' failed to import" in printed and "not-installed-plugin" in printed
    # explicit seeds and an override apply to every method alike; a missing preset is reported
    cells, _ = plan("cpu", methods=["baseline", "ancestral"], seeds=[0],
                    overrides={"*": {"trainer": {"max_steps": 2}}}, progress=False)
    assert [(c["method"], c["trainer"]["max_steps"]) for c in cells] == [("baseline", 2), ("ancestral", 2)]
    _, info = plan("gpu", progress=False)
    assert info["skipped"][0]["task"] == "fake" and "no 'gpu' preset" in info["skipped"][0]["reason"]


def test_requested_task_that_fails_to_import_is_an_error(monkeypatch):
    import collapsekit.registry as registry

    broken = {"markov-text": PluginInfo("markov-text", "collapsekit", "0", error="SyntaxError: bad")}
    monkeypatch.setattr(registry, "discover", lambda group="collapsekit": broken)
    with pytest.raises(PluginLoadError, match="SyntaxError"):
        plan("smoke", tasks=["markov-text"])
    with pytest.raises(PluginNotFound, match="Did you mean 'markov-text'"):
        plan("smoke", tasks=["markov-txt"])


def test_perf_smoke_writes_every_section(tmp_path):
    from collapsekit.bench.perf import run_perf

    result = run_perf(tmp_path, smoke=True)
    text = (tmp_path / "PERF.md").read_text()
    for title in ("Engine overhead", "Plugin dispatch", "Synthesis throughput (GPT-2)", "Synthesis throughput (Llama)",
                  "NPO", "Token editing", "Time and memory per generation", "Engine overhead: one generation's "
                  "training, 6 steps", "Host syncs per training step", "Scaling: time of one generation",
                  "Synthesis throughput on vLLM (Llama)"):
        assert f"## {title}" in text, title
    assert len(result["sections"]) == 11
    syncs = next(s for s in result["sections"] if s["title"] == "Host syncs per training step")
    assert syncs["passed"] and [r["host syncs"] for r in syncs["rows"]] == [0] * len(syncs["rows"])
    assert [r["plugins"] for r in syncs["rows"]] == ["(none)", "vicreg", "maxsup", "label-smoothing",
                                                     "seqvcr, pause-tokens", "npo", "npo-rt", "gradient-ascent"]
    scaling = next(s for s in result["sections"] if s["title"].startswith("Scaling"))
    assert [(r["varied"], r["value"]) for r in scaling["rows"]] == \
        [("pool size", n) for n in (16, 32, 64)] + [("model width (n_embd)", w) for w in (8, 16, 32)]
    assert json.loads((tmp_path / "perf.json").read_text())["sections"][0]["title"].startswith("Engine")
    assert "max |weight difference| between the two trained models = 0" in text   # the same steps


def _body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("preset", ["cpu", "gpu", "gpu-quick"])
def test_shipped_bench_configs_are_what_the_suite_runs(tmp_path, cli, preset):
    """configs/bench/ holds every planned cell (seed 0) exactly as `bench --write-configs` writes it."""
    from pathlib import Path

    shipped_dir = Path(__file__).resolve().parents[1] / "configs" / "bench"
    code, out, _ = cli("bench", "--preset", preset, "--write-configs", tmp_path)
    assert code == 0
    written = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in shipped_dir.glob(f"*-{preset}*.yaml")
               if preset == "gpu-quick" or "-gpu-quick" not in p.name}
    assert len(out.splitlines()) == len(written) > 0
    assert sorted(written) == sorted(shipped), "configs/bench is stale: run collapsekit bench --write-configs"
    for name in written:
        assert _body(written[name]) == _body(shipped[name]), f"configs/bench/{name} is stale"


def test_gpu_quick_is_the_gpu_preset_cut_to_minutes():
    """Every task in gpu-quick: the gpu sizes, bf16 on a GPU accelerator, one seed, at most 2
    generations and a twentieth of the gpu step budget (20 to 400 steps)."""
    quick, _ = plan("gpu-quick", progress=False)
    full = {(c["task"], c["method"]): c for c in plan("gpu", progress=False)[0] if c["seed"] == 0}
    extra = {("hf-lm", "vllm")}                     # the baseline on the vLLM backend: a gpu-quick cell only
    assert {c["task"] for c in quick} == {t for t, _ in full} and len(quick) == len(full) + len(extra)
    for cell in quick:
        gpu = full[(cell["task"], "baseline" if (cell["task"], cell["method"]) in extra else cell["method"])]
        assert cell["seed"] == 0 and {k: v for k, v in cell["task_args"].items() if k != "backend"} == gpu["task_args"]
        assert cell["trainer"]["precision"] == "bf16-mixed" and cell["trainer"]["accelerator"] == "auto"
        assert cell["generations"] == min(gpu["generations"], 2)
        steps, full_steps = cell["trainer"]["max_steps"], gpu["trainer"]["max_steps"]
        assert steps == max(min(full_steps, 20), min(full_steps // 20, 400))


def test_bench_cli_rejects_bad_jobs(cli):
    code, _, err = cli("bench", "--jobs", "0")
    assert code == 2 and "--jobs must be at least 1" in err


def test_an_opt_in_preset_runs_only_when_its_task_is_named(monkeypatch):
    import collapsekit.bench.runner as bench

    class Costly(FakeTask):
        bench_methods = ("baseline",)

        @classmethod
        def preset(cls, name):
            return {**FakeTask.preset(name), "opt_in": "an hour per seed"}

    tasks = {"costly": Costly, "fake": FakeTask}
    monkeypatch.setattr(bench, "load_tasks", lambda names=None: ({n: tasks[n] for n in names or tasks}, {}))
    cells, info = plan("cpu", progress=False)
    assert {c["task"] for c in cells} == {"fake"}
    assert {"task": "costly", "reason": "opt-in (an hour per seed); name it to run it: --tasks costly"} \
        in info["skipped"]
    cells, _ = plan("cpu", tasks=["costly"], progress=False)
    assert {c["task"] for c in cells} == {"costly"}



def test_opt_in_methods_run_only_when_named():
    """markov-text's cpu preset leaves the methods added after the budget out; --methods runs them, and
    writing every cell's config includes them."""
    cells, info = plan("cpu", tasks=["markov-text"], progress=False)
    ran = {c["method"] for c in cells}
    assert ran == {"baseline", "accumulate", "accumulate-subsample", "fresh-mix", "token-editing"}
    skipped = {s["method"]: s["reason"] for s in info["skipped"]}
    assert set(skipped) == {"verifier-filter", "verifier-filter-typical", "verifier-filter-model",
                            "verifier-filter-random", "self-correct", "detector-reweight", "detector-reweight-random"}
    assert skipped["self-correct"].startswith("opt-in (7 methods added after the cpu budget") \
        and skipped["self-correct"].endswith("name it to run it: --methods self-correct")
    cells, _ = plan("cpu", tasks=["markov-text"], methods=["self-correct"], seeds=[0], progress=False)
    assert [(c["method"], c["seed"]) for c in cells] == [("self-correct", 0)]
    all_cells, _ = plan("cpu", tasks=["markov-text"], seeds=[0], progress=False, include_opt_in=True)
    assert {c["method"] for c in all_cells} == ran | set(skipped)

def test_cpu_preset_gives_cheap_tasks_enough_seeds_for_paired_statistics():
    """A paired comparison needs >= 3 seeds; the cheap tasks get 5 (budget in configs/bench/README.md)."""
    from collapsekit.bench.stats import MIN_SEEDS

    _, info = plan("cpu", progress=False, require_installed=False)
    seeds = {task: entry["seeds"] for task, entry in info["tasks"].items()}
    cheap = ("gaussian", "linear-regression", "markov-text", "digits-classify", "digits-diffusion", "bible-lm",
             "facts-unlearning")
    for task in cheap:
        assert len(seeds[task]) >= 5 >= MIN_SEEDS, (task, seeds[task])
    # the expensive tasks do not fit the 45-minute budget beside them: they run when named
    assert {s["task"] for s in info["skipped"] if "opt-in" in s["reason"] and "method" not in s} \
        == {"multiplication", "image-diffusion"}
    _, info = plan("cpu", tasks=["multiplication"], progress=False, require_installed=False)
    assert info["tasks"]["multiplication"]["seeds"] == [0, 1]


def test_each_task_ranks_a_metric_by_its_own_direction():
    """Two tasks may rank the same metric name differently; each table follows its own task."""
    from collapsekit.bench.report import direction, render_markdown

    tasks = {"ranked": {"metrics": ["m"], "directions": {"m": True}},
             "unranked": {"metrics": ["m"], "directions": {"m": None}}}
    results = {"meta": {"preset": "x", "tasks": tasks}, "metrics": {"m": {"higher_is_better": True}}, "rows": [
        {"task": t, "method": m, "seed": s, "generation": 0, "metric": "m", "value": v + s / 100}
        for t in tasks for s in range(5) for m, v in (("baseline", 0.5), ("up", 0.6))]}
    assert direction(results, "ranked", "m") is True and direction(results, "unranked", "m") is None
    md = render_markdown(results)
    ranked, unranked = md.split("## ranked")[1].split("## unranked")[0], md.split("## unranked")[1]
    rows = {t: [x for x in part.splitlines() if x.startswith("| `up`")] for t, part in (("r", ranked), ("u", unranked))}
    assert "`m` ↑" in ranked and all("▲" in x for x in rows["r"])
    assert "`m` |" in unranked and all("▲" not in x and "≠" in x for x in rows["u"])   # different, not ranked


def test_text_tasks_do_not_rank_raw_diversity():
    """distinct-n and unigram entropy have a right level set by the real text, not a better direction;
    results.json written before tasks recorded their directions falls back to the task class."""
    from collapsekit.bench.report import direction
    from collapsekit.bench.runner import load_tasks

    classes, _ = load_tasks(["markov-text", "bible-lm", "facts-unlearning", "hf-lm"])
    for name, cls in classes.items():
        for metric in ("distinct_1", "distinct_2"):
            assert cls.higher_is_better[metric] is None, (name, metric)
        results = {"meta": {"tasks": {name: {"class_path": f"{cls.__module__}.{cls.__qualname__}"}}},
                   "metrics": {"distinct_1": {"higher_is_better": True}}}
        assert direction(results, name, "distinct_1") is None and direction(results, name, "tail_coverage_2") is True


def test_report_metrics_are_columns_even_without_a_direction():
    from collapsekit.bench.report import final_table, render_markdown

    rows = [{"task": "t", "method": m, "seed": 0, "generation": 0, "metric": k, "value": 0.5}
            for m in ("baseline", "token-editing") for k in ("kl", "token_editing/share_above", "other/x")]
    results = {"meta": {"preset": "x", "tasks": {"t": {"metrics": ["kl"],
                                                       "report_metrics": ["token_editing/share_above"]}}},
               "rows": rows, "metrics": {"kl": {"higher_is_better": False},
                                         "token_editing/share_above": {"higher_is_better": None},
                                         "other/x": {"higher_is_better": None}}}
    _, metrics, _ = final_table(results, "t")
    assert metrics == ["kl", "token_editing/share_above"]
    assert "`token_editing/share_above` |" in render_markdown(results)


def test_markov_text_reports_token_editing_shares_and_edits_at_its_threshold():
    from collapsekit.plugins.tasks.markov_text import MarkovText

    assert MarkovText.report_metrics == ("token_editing/share_above", "token_editing/share_changed")
    cells, info = plan("cpu", tasks=["markov-text"], methods=["token-editing"], seeds=[0], progress=False)
    assert cells[0]["plugins"] == [{"class_path": "token-editing", "init_args": {"threshold": 0.95}}]
    assert info["tasks"]["markov-text"]["report_metrics"] == list(MarkovText.report_metrics)


def _fake_run(root, name, seed, kl_by_generation):
    """A finished run directory as the engine leaves it (config.yaml, gen_k/metrics.json, gen_k/done)."""
    import yaml

    run_dir = root / name
    for g, kl in enumerate(kl_by_generation):
        (run_dir / f"gen_{g}").mkdir(parents=True)
        (run_dir / f"gen_{g}" / "metrics.json").write_text(json.dumps({"kl": kl, "tail_coverage": 0.5}))
        (run_dir / f"gen_{g}" / "done").write_text("")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"run": {"name": name, "seed": seed},
         "task": {"class_path": "collapsekit.plugins.tasks.markov_text.MarkovText", "init_args": {}}}))
    return run_dir


def test_report_compares_several_runs_paired_by_seed(tmp_path, cli):
    from collapsekit.bench.report import runs_results
    from collapsekit.bench.stats import compare, holm_adjust

    dirs = []
    for seed in range(4):
        dirs.append(_fake_run(tmp_path, f"baseline-s{seed}", seed, [0.1, 0.3 + 0.01 * seed]))
        dirs.append(_fake_run(tmp_path, f"accumulate-s{seed}", seed, [0.1, 0.12 + 0.02 * (seed % 2)]))
    results = runs_results(dirs)
    assert {(r["method"], r["seed"]) for r in results["rows"]} == \
        {(m, s) for m in ("baseline", "accumulate") for s in range(4)}
    assert results["metrics"]["kl"] == {"higher_is_better": False}
    code, out, _ = cli("report", *map(str, dirs), "--out", str(tmp_path / "cmp"))
    assert code == 0 and str(tmp_path / "cmp" / "RESULTS.md") in out
    md = (tmp_path / "cmp" / "RESULTS.md").read_text()
    same = {s: 0.5 for s in range(4)}                                          # tail_coverage: no difference
    c = holm_adjust({"kl": compare({s: 0.12 + 0.02 * (s % 2) for s in range(4)}, {s: 0.3 + 0.01 * s for s in range(4)},
                                   False), "tail_coverage": compare(same, same, True)})["kl"]
    assert c.significant and c.better and c.p == 2 * c.p_raw
    assert "| `baseline` (reference) | 4 |" in md
    assert f"{c.mean:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}] p={c.p:.2g} ▲" in md
    with pytest.raises(CollapsekitError, match="give each"):
        runs_results([dirs[0], dirs[0]])


def test_a_declared_control_gets_its_own_paired_comparison():
    from collapsekit.bench.report import render_markdown
    from collapsekit.bench.stats import compare

    final = {"baseline": {s: 5.0 for s in range(5)}, "lsf": {s: 3.0 - 0.1 * s for s in range(5)},
             "random": {s: 3.5 - 0.12 * s for s in range(5)}}
    rows = [{"task": "t", "method": m, "seed": s, "generation": 0, "metric": "fid", "value": v}
            for m, by_seed in final.items() for s, v in by_seed.items()]
    md = render_markdown({"meta": {"preset": "x", "tasks": {"t": {"metrics": ["fid"], "methods": list(final),
                                                                  "controls": {"lsf": "random"}}}},
                          "rows": rows, "metrics": {"fid": {"higher_is_better": False}}})
    c = compare(final["lsf"], final["random"], higher_is_better=False)     # a family of one: p unchanged
    line = next(x for x in md.splitlines() if x.startswith("| `lsf` | `random` |"))
    assert c.significant and f"{c.mean:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}] p={c.p:.2g} ▲" in line
