"""Run image-diffusion's preset (default cpu) for one LSF comparison method and seed; print one JSON line
with every generation's fid, kid, class_accuracy, ole, effective_rank, heldout_loss and real share.

    python mitigations/latent_filter/scripts/measure_image_diffusion.py METHOD SEED [PRESET] [ROOT]

METHOD is one of the keys of METHODS; runs go to ROOT/METHOD-sSEED (default root runs/lsf-image-diffusion)
and resume when re-run.
"""
import json, sys, time, torch
torch.set_num_threads(1)
from collapsekit.quiet import silence_lightning; silence_lightning()
from collapsekit.dispatch import build_manager
from collapsekit.loop import execute, trainer_factory
from collapsekit.run import Run, RunConfig
from collapsekit.plugins.tasks.image_diffusion import ImageDiffusion

METHODS = {
    "baseline": [],
    "accumulate-subsample": ["accumulate-subsample"],
    "accumulate-subsample+latent-filter": ["accumulate-subsample", {"class_path": "latent-filter", "init_args": {"keep": 0.5}}],
    "accumulate-subsample+random-filter": ["accumulate-subsample", {"class_path": "latent-filter", "init_args": {"keep": 0.5, "scorer": "random"}}],
    "latent-filter-accumulated": ["latent-filter-accumulated"],
    "latent-filter-accumulated-random": [{"class_path": "latent-filter-accumulated", "init_args": {"scorer": "random"}}],
}
method, seed = sys.argv[1], int(sys.argv[2])
preset = ImageDiffusion.preset(sys.argv[3] if len(sys.argv) > 3 else "cpu")
plugins = METHODS[method]
t0 = time.time()
run = Run(RunConfig(name=f"{method}-s{seed}", root=sys.argv[4] if len(sys.argv) > 4 else "runs/lsf-image-diffusion", generations=preset["generations"], seed=seed,
                    plugins=plugins), ImageDiffusion(**preset["task"]), build_manager(plugins))
ms = execute(run, trainer_factory(max_steps=preset["trainer"]["max_steps"], accelerator="cpu", enable_progress_bar=False, logger=False))
keys = ["fid", "kid", "class_accuracy", "ole", "effective_rank", "heldout_loss", "pool/real_share"]
print(json.dumps({"method": method, "seed": seed, "wall_s": round(time.time() - t0, 1),
                  "per_generation": [{k: round(m[k], 4) for k in keys if k in m} for m in ms]}))
