"""Measure CE vs label smoothing vs MaxSup (vs VICReg) on ``digits-classify``; print Markdown tables.

    python mitigations/maxsup/scripts/digits_table.py --preset cpu --seeds 0,1,2 \
        --methods baseline,label-smoothing,maxsup,vicreg,vicreg-single

Each method-seed is one real generational run (``collapsekit.loop.execute``, a
fresh Lightning Trainer per generation) of the task's preset. Tables: generation 0
(trained on real labels) and the last generation (self-trained on pseudo-labels),
mean +- standard deviation over seeds. Needs collapsekit-maxsup and
collapsekit-vicreg installed (their entry points).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings

import numpy as np
import torch

METHODS = {
    "baseline": [],
    "label-smoothing": ["label-smoothing"],
    "maxsup": ["maxsup"],
    "vicreg": ["vicreg"],
    "vicreg-single": [{"class_path": "vicreg", "init_args": {"views": "single"}}],
    "vicreg-small": [{"class_path": "vicreg", "init_args": {"sim_coeff": 1.0, "std_coeff": 1.0,
                                                            "cov_coeff": 0.04}}],
}
COLUMNS = ("accuracy", "ece", "nc1", "within_class_variation", "class_separation", "effective_rank",
           "label_agreement")


def run_method(method: str, preset: str, seed: int, root: str, label_temperature: float | None = None
               ) -> tuple[list[dict[str, float]], float]:
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.plugins.tasks.digits_classify import DigitsClassify
    from collapsekit.run import Run, RunConfig

    p = DigitsClassify.preset(preset)
    plugins = list(METHODS[method])
    defaults = ("replace", "ancestral", "probes")
    if label_temperature is not None:   # re-configure the default synthesis: pseudo-label temperature
        plugins.append({"class_path": "ancestral", "init_args": {"temperature": label_temperature}})
        defaults = ("replace", "probes")
    run = Run(RunConfig(name=f"{method}-s{seed}", root=root, generations=p["generations"], seed=seed,
                        plugins=plugins), DigitsClassify(**p["task"]), build_manager(plugins, defaults=defaults))
    start = time.time()
    metrics = execute(run, trainer_factory(accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                                           **p["trainer"]))
    return metrics, time.time() - start


def table(results: dict, generation: int) -> str:
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for method, runs in results.items():
        cells = []
        for col in COLUMNS:
            values = [r[generation][col] for r in runs if col in r[generation]]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="baseline,label-smoothing,maxsup,vicreg")
    parser.add_argument("--label-temperature", type=float, default=None,
                        help="temperature of the pseudo-labels (default: the ancestral default 1; 0 = argmax)")
    parser.add_argument("--json", default=None, help="also write all metrics to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import lightning.pytorch  # noqa: F401 - importing it resets its log level, so import before quieting

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list] = {}
    times: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as root:
        for method in args.methods.split(","):
            for seed in seeds:
                metrics, wall = run_method(method, args.preset, seed, root, args.label_temperature)
                results.setdefault(method, []).append(metrics)
                times.setdefault(method, []).append(wall)
                summary = ", ".join(f"{k} {metrics[-1][k]:.3f}" for k in COLUMNS if k in metrics[-1])
                print(f"# {method} seed {seed}: {wall:.1f} s; last generation: {summary}", flush=True)
                if args.json:   # written after every run, so a failure later keeps what was measured
                    with open(args.json, "w") as f:
                        json.dump({"preset": args.preset, "seeds": seeds, "label_temperature": args.label_temperature,
                                   "results": results, "times": times}, f)
    last = len(next(iter(results.values()))[0]) - 1
    print(f"\n### generation 0 (real labels), preset {args.preset}, seeds {args.seeds}\n")
    print(table(results, 0))
    temp = 1.0 if args.label_temperature is None else args.label_temperature
    print(f"\n### generation {last} (pseudo-labels of generation {last - 1}, label temperature {temp:g})\n")
    print(table(results, last))
    print("\nwall time per method-seed (s): " + ", ".join(f"{m} {np.mean(t):.0f}" for m, t in times.items()))


if __name__ == "__main__":
    main()
