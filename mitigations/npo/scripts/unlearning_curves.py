"""Measure forget / retain / fluency curves of unlearning methods on facts-unlearning.

Each method is an ordinary collapsekit run (real pluggy, real Lightning Trainer):
generation 0 learns all facts, generations 1.. are unlearning phases (run.init: previous).
Prints one Markdown table per metric (rows: generation, columns: methods).

    python mitigations/npo/scripts/unlearning_curves.py --preset smoke --seeds 0 \
        --methods gradient-ascent,npo,npo-rt --out /tmp/npo-curves
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from collapsekit.bench import method_plugins
from collapsekit.dispatch import build_manager
from collapsekit.loop import execute, trainer_factory
from collapsekit.plugins.tasks.facts_unlearning import FactsUnlearning
from collapsekit.run import Run, RunConfig
from collapsekit.testing import quiet_lightning

METRICS = ("forget_acc", "retain_acc", "forget_nll", "template_nll", "sample_valid")


def run_method(method: str, seed: int, preset: dict, out: Path, plugin_args: dict | None = None,
               generations: int | None = None, gen0_from: Path | None = None) -> tuple[list[dict], float]:
    """One run; with ``gen0_from``, generation 0 is copied from that run directory (resumed, not retrained)."""
    plugins = method_plugins(method, plugin_args)
    if gen0_from is not None:
        target = out / f"{method}-s{seed}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(gen0_from / "gen_0", target / "gen_0")
    config = RunConfig(name=f"{method}-s{seed}", root=str(out), generations=generations or preset["generations"],
                       seed=seed, init=preset.get("init", "previous"), plugins=plugins,
                       samples_per_generation=preset.get("samples_per_generation"), overwrite=True)
    task = FactsUnlearning(**preset["task"])
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": False,
               "enable_model_summary": False, **preset["trainer"]}
    start = time.perf_counter()
    with quiet_lightning():
        metrics = execute(Run(config, task, build_manager(plugins)), trainer_factory(**trainer))
    return metrics, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--methods", default="gradient-ascent,npo,npo-rt")
    p.add_argument("--seeds", default="0")
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--plugin-args", default=None, help='JSON replacing the preset\'s, e.g. {"npo": {"beta": 0.1}}')
    p.add_argument("--out", default="runs/npo-curves")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--share-gen0", action="store_true",
                   help="train generation 0 once per seed (first method) and copy it to the other methods")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    preset = FactsUnlearning.preset(args.preset)
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    plugin_args = preset.get("plugin_args", {}) if args.plugin_args is None else json.loads(args.plugin_args)
    results: dict[str, list[list[dict]]] = {}
    for i, method in enumerate(methods):
        for seed in seeds:
            source = Path(args.out) / f"{methods[0]}-s{seed}" if args.share_gen0 and i else None
            metrics, seconds = run_method(method, seed, preset, Path(args.out), plugin_args,
                                          args.generations, source)
            results.setdefault(method, []).append(metrics)
            print(f"# {method} seed {seed}: {seconds:.0f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "curves.json").write_text(json.dumps(results))
    n_gen = min(len(r) for runs in results.values() for r in runs)
    for metric in METRICS:
        print(f"\n{metric} (mean over seeds {args.seeds})\n")
        print("| generation | " + " | ".join(methods) + " |")
        print("|---|" + "---|" * len(methods))
        for g in range(n_gen):
            cells = []
            for m in methods:
                values = [r[g].get(metric, float("nan")) for r in results[m]]
                cells.append(f"{statistics.fmean(values):.3f}")
            print(f"| {g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
