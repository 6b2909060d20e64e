"""Measure LSF against accumulate-subsample on digits-diffusion at equal training cost.

Every method trains the same number of steps on the same budget (the real pool's size) per
generation; only the synthetic items that enter the pool history differ. Prints one JSON line per
(method, seed, generation) and a Markdown table of the last generation (mean over seeds).

    python mitigations/latent_filter/scripts/measure_claim.py --seeds 0 1 --generations 5 --steps 1000
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
    "accumulate-subsample": ["accumulate-subsample"],
    "accumulate-subsample+latent-filter": ["accumulate-subsample", "latent-filter"],
    "accumulate-subsample+random-filter": ["accumulate-subsample",
                                           {"class_path": "latent-filter", "init_args": {"scorer": "random"}}],
    "accumulate-subsample+subspace-filter": ["accumulate-subsample",
                                             {"class_path": "latent-filter", "init_args": {"scorer": "subspace"}}],
    "baseline": [],
}
# methods that synthesize more per generation (x the real pool's size) so that the filtered pool grows as
# fast as the unfiltered one; training cost (steps, budget) is unchanged
OVERSAMPLE = {"accumulate-subsample+latent-filter-2x": ("accumulate-subsample+latent-filter", 2)}
HEADLINE = ("fid", "class_accuracy", "ole", "effective_rank", "heldout_loss")


def run_one(method: str, seed: int, generations: int, steps: int, task_args: dict, root: str) -> list[dict]:
    from collapsekit.dispatch import build_manager
    from collapsekit.loop import execute, trainer_factory
    from collapsekit.plugins.tasks.digits_diffusion import DigitsDiffusion
    from collapsekit.run import Run, RunConfig

    base, factor = OVERSAMPLE.get(method, (method, None))
    plugins = METHODS[base]
    task = DigitsDiffusion(**task_args)
    samples = factor * task.train_size if factor else None
    run = Run(RunConfig(name=f"{method}-s{seed}", root=root, generations=generations, seed=seed, plugins=plugins,
                        samples_per_generation=samples), task, build_manager(plugins))
    start = time.time()
    rows = []

    def report(generation, metrics, resumed):
        row = {"method": method, "seed": seed, "generation": generation, "seconds": round(time.time() - start, 1),
               **{k: metrics[k] for k in HEADLINE},
               **{k: v for k, v in metrics.items() if k.startswith(("latent_filter/", "filter/", "pool/"))}}
        rows.append(row)
        print(json.dumps(row), flush=True)

    execute(run, trainer_factory(max_steps=steps, accelerator="cpu", enable_progress_bar=False, logger=False,
                                 enable_model_summary=False), report)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS)[:3], choices=[*METHODS, *OVERSAMPLE])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--task", type=json.loads, default={}, help="DigitsDiffusion init_args as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for method in args.methods:
            for seed in args.seeds:
                rows += run_one(method, seed, args.generations, args.steps, args.task, root)
    last = args.generations - 1
    print(f"\n| method | " + " | ".join(HEADLINE) + " |")
    print("|---|" + "---|" * len(HEADLINE))
    for method in args.methods:
        sel = [r for r in rows if r["method"] == method and r["generation"] == last]
        cells = [f"{np.mean([r[k] for r in sel]):.4g} ± {np.std([r[k] for r in sel]):.2g}" for k in HEADLINE]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
