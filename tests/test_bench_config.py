"""`collapsekit bench --config`: the benchmark on a user's own run config, with plugin arguments from the
command line, resumable cells, worker processes that a signal stops, and submitit jobs."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collapsekit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "configs" / "own-setup" / "tiny-llama.yaml"
TINY_HF = ["--trainer.max_steps", "3", "--run.generations", "2", "--run.samples_per_generation", "24",
           "--task.init_args.block_size", "16", "--task.init_args.max_blocks", "48",
           "--task.init_args.max_heldout_blocks", "16"]
GAUSS = {"run": {"name": "g", "generations": 2, "plugins": []},
         "task": {"class_path": "collapsekit.plugins.tasks.gaussian.Gaussian",
                  "init_args": {"dim": 2, "train_size": 16, "replicates": 16}},
         "trainer": {"max_steps": 1, "accelerator": "cpu", "logger": False}}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def rows_of(results: dict, method: str | None = None) -> list[dict]:
    return [r for r in results["rows"] if method is None or r["method"] == method]


def alive(process) -> bool:
    """A psutil process that still runs (not gone, not a zombie waiting to be reaped)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def load_example_maker():
    spec = importlib.util.spec_from_file_location("make_tiny_llama", ROOT / "configs" / "own-setup" / "make_tiny_llama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- hf-lm: a local Llama and a JSONL corpus, the README's example ---------------------------------------
def test_bench_config_on_a_local_llama_and_jsonl_writes_the_table_and_skips_finished_cells(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                   # the example config names tiny-llama/ relative to the working dir
    load_example_maker().make_assets(tmp_path / "tiny-llama", hidden=16, layers=1, vocab=300)
    argv = ["bench", "--config", EXAMPLE, "--methods", "baseline,accumulate", "--seeds", "0,1", "--out", "out",
            "--jobs", "1", *TINY_HF]
    code, out, err = cli(*argv)
    assert code == 0, err
    results = json.loads(Path("out/results.json").read_text())
    assert results["meta"]["config"] == "tiny-llama" and results["meta"]["preset"] is None
    assert {(r["method"], r["seed"]) for r in rows_of(results)} == {(m, s) for m in ("baseline", "accumulate")
                                                                    for s in (0, 1)}
    runs = Path("out/runs/tiny-llama/hf-lm")
    for method, seed in [("baseline", 0), ("accumulate", 1)]:
        config = yaml.safe_load((runs / f"{method}-s{seed}" / "config.yaml").read_text())
        assert config["run"]["seed"] == seed and config["run"]["threads"] == 1
        assert config["run"]["plugins"] == ([] if method == "baseline" else ["accumulate"])
        assert config["task"]["init_args"]["model"] == "tiny-llama/model" and config["trainer"]["max_steps"] == 3
        for g in (0, 1):
            on_disk = json.loads((runs / f"{method}-s{seed}" / f"gen_{g}" / "metrics.json").read_text())
            assert {r["metric"]: r["value"] for r in rows_of(results, method)
                    if r["seed"] == seed and r["generation"] == g} == on_disk
    share = {m: next(r["value"] for r in rows_of(results, m) if r["generation"] == 1 and r["metric"] == "pool/real_share")
             for m in ("baseline", "accumulate")}
    assert share["baseline"] == 0.0 and 0.0 < share["accumulate"] < 1.0      # the method's plugin was active
    md = Path("out/RESULTS.md").read_text()
    assert "## hf-lm" in md and "**config**: tiny-llama" in md and "`heldout_ppl` ↓" in md
    assert "| `baseline` (reference) | 2 |" in md and "| `accumulate` | 2 |" in md
    done = runs / "accumulate-s1" / "gen_1" / "done"
    stamp = done.stat().st_mtime_ns
    code, out, err = cli(*argv)                     # the same command again: nothing is recomputed
    assert code == 0, err
    assert "4 of 4 cells already finished (same config and versions): skipped" in out
    assert done.stat().st_mtime_ns == stamp
    assert json.loads(Path("out/results.json").read_text())["rows"] == results["rows"]


# -- a third-party plugin: arguments from the command line, its metric ranked ----------------------------
@pytest.mark.usefixtures("testplugin_installed")
def test_third_party_filter_gets_plugin_args_oversamples_and_its_metric_is_ranked(cli, tmp_path):
    from collapsekit.seeds import numpy_rng

    config = write_yaml(tmp_path / "gauss.yaml", GAUSS)
    variants = write_yaml(tmp_path / "variants.yaml", {"testfilter-all": {"plugin": "testfilter",
                                                                         "init_args": {"keep": 1.0}}})

    def bench(keep: float, *extra: str):
        return cli("bench", "--config", config, "--methods", "baseline,testfilter,testfilter-all", "--seeds", "0",
                   "--jobs", "1", "--out", tmp_path / "out", "--variants", variants,
                   "--plugin-args", json.dumps({"testfilter": {"keep": keep, "oversample": 3}}),
                   "--controls", '{"testfilter": "testfilter-all"}', *extra)

    code, out, err = bench(0.5)
    assert code == 0, err
    runs = tmp_path / "out" / "runs" / "gauss" / "gaussian"
    plugins = {m: yaml.safe_load((runs / f"{m}-s0" / "config.yaml").read_text())["run"]["plugins"]
               for m in ("testfilter", "testfilter-all")}
    assert plugins == {"testfilter": [{"class_path": "testfilter", "init_args": {"keep": 0.5, "oversample": 3}}],
                       "testfilter-all": [{"class_path": "testfilter", "init_args": {"keep": 1.0, "oversample": 3}}]}
    results = json.loads((tmp_path / "out" / "results.json").read_text())

    def final(method):
        return {r["metric"]: r["value"] for r in rows_of(results, method) if r["generation"] == 1}

    budget = final("baseline")["synthetic/generated"]
    passed = int((numpy_rng(0, 1, "testfilter").random(int(3 * budget)) < 0.5).sum())   # the filter's own draw
    assert final("testfilter")["synthetic/generated"] == 3 * budget
    assert final("testfilter")["synthetic/passed"] == passed and final("testfilter")["filter/testfilter/kept"] == \
        pytest.approx(passed / (3 * budget))
    assert final("testfilter")["synthetic/kept"] == min(passed, budget) == budget   # the baseline's pool size
    assert final("testfilter-all")["testfilter/kept_share"] == 1.0
    assert results["metrics"]["testfilter/kept_share"] == {"higher_is_better": True}   # declared by the plugin
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "`testfilter/kept_share` ↑" in md and "| `testfilter` | `testfilter-all` |" in md
    # another plugin argument: the finished testfilter cell is stale, an error until --overwrite recomputes it
    code, _, err = bench(0.4)
    assert code == 2 and "1 cell(s)" in err and "testfilter seed 0" in err and "'keep': 0.4" in err
    assert "--overwrite" in err
    code, out, err = bench(0.4, "--overwrite")
    assert code == 0, err
    assert "2 of 3 cells already finished" in out and "1 cell(s) made by another config" in out
    plugins = yaml.safe_load((runs / "testfilter-s0" / "config.yaml").read_text())["run"]["plugins"]
    assert plugins == [{"class_path": "testfilter", "init_args": {"keep": 0.4, "oversample": 3}}]


# -- worker processes, signals, resume, submitit -----------------------------------------------------------
METHODS, SEEDS = ["baseline", "accumulate"], [0, 1]


@pytest.fixture(scope="module")
def gauss(tmp_path_factory):
    """A 6-generation gaussian config and the reference rows of its uninterrupted bench (in this process)."""
    from collapsekit.bench import run_bench

    root = tmp_path_factory.mktemp("gauss")
    config = write_yaml(root / "gauss.yaml", {**GAUSS, "run": {**GAUSS["run"], "generations": 6}})
    reference = run_bench(config=config, methods=METHODS, seeds=SEEDS, out=root / "reference", progress=False)
    return root, config, reference


@pytest.fixture(scope="module")
def stopped(gauss):
    """A real `collapsekit bench` with 2 worker processes, sent a real SIGTERM once its first cell is done.

    Returns ``(out, the cells finished before the signal, {pid: (process, command line)} of every process it
    had started, exit status, stderr)``."""
    import psutil

    root, config, _ = gauss
    out = root / "stopped"
    command = [sys.executable, "-m", "collapsekit.cli", "bench", "--config", str(config), "--methods", ",".join(METHODS),
               "--seeds", "0-1", "--jobs", "2", "--out", str(out)]
    bench = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "runs" / "gauss" / "gaussian"
    seen: dict[int, psutil.Process] = {}
    deadline = time.time() + 300
    commands: dict[int, str] = {}

    def look() -> None:
        for child in psutil.Process(bench.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
            command = " ".join(_cmdline(child))
            if command:        # re-read: a child first seen between fork and exec shows its parent's command
                commands[child.pid] = command

    while not list(records.glob("*.cell.json")) and bench.poll() is None and time.time() < deadline:
        look()
        time.sleep(0.02)
    assert bench.poll() is None, "the bench ended before the signal: " + bench.communicate()[1][-2000:]
    look()
    bench.send_signal(signal.SIGTERM)
    _, stderr = bench.communicate(timeout=120)
    finished = sorted(p.name[:-len(".cell.json")] for p in records.glob("*.cell.json"))
    return out, finished, {pid: (seen[pid], commands.get(pid, "")) for pid in seen}, bench.returncode, stderr


def test_sigterm_stops_every_worker_and_a_rerun_finishes_only_the_missing_cells(gauss, stopped):
    """The stopped bench exits 75 with one message, no process it started survives, and the same bench run
    again (here in this process) finishes the other cells only, with the numbers of an uninterrupted bench."""
    from collapsekit.bench import run_bench

    root, config, reference = gauss
    out, finished, seen, code, stderr = stopped
    assert code == 75, stderr[-2000:]
    assert "bench stopped by SIGTERM" in stderr and "re-run the same command" in stderr and "Traceback" not in stderr
    assert sum("collapsekit.bench.worker" in command for _, command in seen.values()) == 2, seen
    assert [p.pid for p, _ in seen.values() if alive(p)] == []
    assert 1 <= len(finished) < 4, finished
    stamps = {name: (out / "runs" / "gauss" / "gaussian" / name / "gen_5" / "done").stat().st_mtime_ns
              for name in finished}
    results = run_bench(config=config, methods=METHODS, seeds=SEEDS, out=out, progress=False)
    assert results["rows"] == reference["rows"]
    assert {name: (out / "runs" / "gauss" / "gaussian" / name / "gen_5" / "done").stat().st_mtime_ns
            for name in finished} == stamps                                  # finished cells were not rerun
    assert len(list((out / "runs" / "gauss" / "gaussian").glob("*.cell.json"))) == 4


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # noqa: BLE001 - gone already
        return []


def test_submitit_local_job_gives_the_numbers_of_a_worker_process(gauss, stopped, tmp_path):
    """A cell that a worker process of the stopped bench finished, run again as a submitit job (local cluster)."""
    from collapsekit.bench import run_bench

    root, config, reference = gauss
    out, finished, *_ = stopped
    method, seed = finished[0].rsplit("-s", 1)
    run_dir = out / "runs" / "gauss" / "gaussian" / finished[0]
    by_worker = [json.loads((run_dir / f"gen_{g}" / "metrics.json").read_text()) for g in range(6)]
    results = run_bench(config=config, methods=[method], seeds=[int(seed)], out=tmp_path / "out", progress=False,
                        executor="submitit", submitit={"cluster": "local", "timeout_min": 10})
    assert results["meta"]["executor"] == "submitit" and not results["meta"]["failures"]
    assert [{r["metric"]: r["value"] for r in results["rows"] if r["generation"] == g} for g in range(6)] == by_worker
    assert rows_of(results) == [r for r in reference["rows"] if r["method"] == method and r["seed"] == int(seed)]
    assert len(list((tmp_path / "out" / "submitit").glob("*/*_log.out"))) == 1


def test_a_script_without_main_guard_starts_bench_workers(tmp_path):
    """Workers are ``python -m collapsekit.bench.worker``: they never import the calling script (which multiprocessing's
    spawn does, so that an unguarded script re-ran itself in every worker and died with BrokenProcessPool)."""
    script = tmp_path / "no_guard.py"
    script.write_text("import json, os\n"
                      "from collapsekit.bench.executors import Job, ProcessExecutor\n"
                      "print('top level of the script ran', flush=True)\n"
                      "done = list(ProcessExecutor(2).run([Job(i, 'os:getpid', ()) for i in range(4)]))\n"
                      "print(json.dumps({'workers': sorted({pid for _, pid in done}), 'script': os.getpid()}))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("top level of the script ran") == 1
    pids = json.loads(proc.stdout.splitlines()[-1])
    assert len(pids["workers"]) == 2 and pids["script"] not in pids["workers"]



def test_a_worker_whose_bench_stopped_listening_exits_quietly():
    """A stopped bench closes its pipes while a cell is still finishing: the worker's answer finds the pipe closed,
    and the worker exits 0 without a traceback (one once reached a stopped bench's output)."""
    import multiprocessing

    parent, child = multiprocessing.Pipe()
    proc = subprocess.Popen([sys.executable, "-m", "collapsekit.bench.worker", str(child.fileno()), str(os.getpid())],
                            pass_fds=(child.fileno(),), stderr=subprocess.PIPE, text=True)
    child.close()
    parent.send(list(sys.path))
    parent.send(("time:sleep", (1.0,)))
    parent.close()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0 and stderr == "", stderr

# -- errors: one clear message each --------------------------------------------------------------------
def test_bad_bench_options_are_one_clear_error(cli, tmp_path):
    config = write_yaml(tmp_path / "gauss.yaml", GAUSS)
    cases = [
        (["--plugin-args", "{not: [valid"], "--plugin-args: the value is not valid YAML/JSON"),
        (["--plugin-args", '["a"]'], "--plugin-args: the value must be a mapping"),
        (["--plugin-args", "missing.yaml"], "--plugin-args: file 'missing.yaml' does not exist"),
        (["--variants", '{"v": {"init_args": {}}}'], "variant 'v' must be"),
        (["--seeds", "3-1"], "the range '3-1' is empty"),
        (["--methods", "baseline", "--trainer.max_stepz", "3"], "did you mean trainer.max_steps"),
        (["--methods", "basline"], "Did you mean 'baseline'"),
        (["--executor", "submitit", "--submitit", '{"cluster": "mars"}'], "cluster must be one of slurm, local, debug"),
        (["--submitit", '{"cluster": "local"}'], "--submitit is only used with --executor submitit"),
        (["--methods", "baseline", "--trainer.devices", "2"], "--executor submitit"),
    ]
    for extra, message in cases:
        code, _, err = cli("bench", "--config", config, "--out", tmp_path / "out", "--jobs", "1", *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    code, _, err = cli("bench", "--trainer.max_steps", "3")
    assert code == 2 and "needs --config RUN.yaml" in err


def test_parse_seeds_and_read_mapping():
    from collapsekit.bench.methods import read_mapping
    from collapsekit.cli import parse_seeds

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0,2, 5-6") == [0, 2, 5, 6]
    with pytest.raises(ConfigError, match="integers or ranges"):
        parse_seeds("a")
    assert read_mapping('{"x": {"a": 1}}', "--o") == read_mapping("x: {a: 1}", "--o") == {"x": {"a": 1}}
    assert read_mapping(None, "--o") == {} and read_mapping({"y": {}}, "--o") == {"y": {}}


def test_cell_key_ignores_what_does_not_change_numbers():
    from collapsekit.bench.cells import cell_key

    base = {"run": {"name": "a-s0", "root": "x", "seed": 0, "threads": 1, "generations": 3, "plugins": []},
            "trainer": {"max_steps": 3, "enable_progress_bar": False}}
    same = {"run": {**base["run"], "root": "elsewhere", "generations": 5, "checkpoint_every": 10},
            "trainer": {"max_steps": 3, "enable_progress_bar": True}}
    assert cell_key(base, {"collapsekit": "0.1.0"}) == cell_key(same, {"collapsekit": "0.1.0"})
    for other, versions in [({**base, "run": {**base["run"], "threads": 2}}, {"collapsekit": "0.1.0"}),
                            ({**base, "trainer": {"max_steps": 4}}, {"collapsekit": "0.1.0"}),
                            (base, {"collapsekit": "0.2.0"})]:
        assert cell_key(other, versions) != cell_key(base, {"collapsekit": "0.1.0"})


def test_preset_cells_take_plugin_args_and_variants_from_the_command_line_too():
    from collapsekit.bench import plan

    cells, info = plan("cpu", tasks=["markov-text"], methods=["token-editing", "te-loose"], seeds=[0], progress=False,
                       plugin_args={"token-editing": {"top_k": 4}},
                       variants={"te-loose": {"plugin": "token-editing", "init_args": {"threshold": 0.8}}},
                       controls={"token-editing": "te-loose"})
    assert [c["plugins"] for c in cells] == [
        [{"class_path": "token-editing", "init_args": {"threshold": 0.95, "top_k": 4}}],   # merged over the preset's
        [{"class_path": "token-editing", "init_args": {"threshold": 0.8, "top_k": 4}}]]
    assert all(c["threads"] == 1 for c in cells)                # presets: one thread per cell, whatever the machine
    assert info["tasks"]["markov-text"]["controls"] == {"token-editing": "te-loose"}


def test_a_task_of_your_own_module_is_benchmarked_by_its_class_path(cli, tmp_path, monkeypatch):
    """A task that is no installed entry point, only a class in the user's module, named by class_path."""
    (tmp_path / "my_tasks.py").write_text(
        "from collapsekit.plugins.tasks.gaussian import Gaussian\n\n\n"
        "class WideGaussian(Gaussian):\n    name = 'wide-gaussian'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_yaml(tmp_path / "wide.yaml", {**GAUSS, "task": {**GAUSS["task"], "class_path": "my_tasks.WideGaussian"}})
    code, out, err = cli("bench", "--config", config, "--methods", "baseline", "--seeds", "0", "--jobs", "1",
                         "--out", tmp_path / "out")
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["task"] for r in results["rows"]} == {"wide-gaussian"}
    assert results["meta"]["tasks"]["wide-gaussian"]["class_path"] == "my_tasks.WideGaussian"
    assert (tmp_path / "out" / "runs" / "wide" / "wide-gaussian" / "baseline-s0" / "gen_1" / "done").is_file()
    assert "`kl` ↓" in (tmp_path / "out" / "RESULTS.md").read_text()       # the task's own directions


def test_a_variant_of_task_settings_changes_the_task_of_a_config_cell():
    from collapsekit.bench.cells import cell_config

    cell = {"method": "vllm", "seed": 3, "plugins": [], "threads": 1, "task_update": {"backend": "vllm"},
            "config": {"run": {"name": "x", "plugins": ["accumulate"]}, "trainer": {"max_steps": 2},
                       "task": {"class_path": "collapsekit.plugins.tasks.hf_lm.HFCausalLM", "init_args": {"lr": 0.1}}}}
    config = cell_config(cell, "root")
    assert config["task"]["init_args"] == {"lr": 0.1, "backend": "vllm"}
    assert config["run"] == {"name": "vllm-s3", "root": "root", "seed": 3, "threads": 1, "plugins": ["accumulate"]}
    assert cell["config"]["task"]["init_args"] == {"lr": 0.1}          # the base config is left as it was
