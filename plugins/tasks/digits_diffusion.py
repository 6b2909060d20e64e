"""``digits-diffusion``: ``image-diffusion`` with the MLP denoiser on the 8x8 scikit-learn digits (LSF's home).

A thin subclass of :class:`~collapsekit.plugins.tasks.image_diffusion.ImageDiffusion`: the same data
code (the built-in digits, 8x8, one channel, pixels scaled to [-1, 1]), model
(:class:`~collapsekit.plugins.tasks.denoiser.Denoiser`, an MLP noise predictor on the flattened image with
a sinusoidal time embedding and a label embedding; the null label in training with probability
``label_dropout``, as in classifier-free guidance, gives the unconditional encoder used by
latent-space filtering), training (``||eps - eps_theta(x_t, t, y)||^2``, ``t`` uniform), sampling
(diffusers' ``DDPMScheduler``: the DDPM ancestral reverse process over all ``timesteps`` steps, posterior
variance, predicted ``x0`` clipped to [-1, 1]), probes (``fid``, ``kid``, ``class_accuracy``,
``effective_rank``, ``ole``, ``heldout_loss`` in the feature space of the frozen CNN classifier trained
on the real training digits) and files (``gen_<k>/model/`` by ``save_pretrained``, ``samples.png``).
What it adds: the settings of the former standalone task (``timesteps``, ``schedule``, ``hidden``,
``depth``, ``time_dim``) mapped onto image-diffusion's, its presets, and LSF's bench methods with the
random-filter control. Generation 0 trains on real digits; every later generation on images the
previous models generated (the self-consuming loop of Alemohammad et al. 2024).

Pools hold ``image`` float32 ``[N, 1, 8, 8]`` and ``label`` int64 ``[N]``. Run folders of the former
implementation (pools of ``x [N, 64]`` / ``y``, ``model.pt``) cannot resume: the run stops with one
message saying so.
"""
from __future__ import annotations

from typing import ClassVar

from collapsekit.errors import CollapsekitError
from collapsekit.plugins.tasks.digits import check_split
from collapsekit.plugins.tasks.image_diffusion import ImageDiffusion
from collapsekit.pool import Pool
from ._bench import CHEAP_SEEDS, DETECTOR_VARIANTS, LSF_VARIANTS, VERIFIER_VARIANTS, opt_in_methods

SCHEDULES = ("cosine", "linear")


def noise_schedule(timesteps: int, schedule: str) -> dict:
    """``DDPMScheduler`` settings of a ``cosine`` (Nichol & Dhariwal 2021: ``squaredcos_cap_v2``) or ``linear``
    (Ho et al. 2020: ``1e-4`` to ``0.02`` for ``T = 1000``, both scaled by ``1000 / T``) schedule of ``T`` steps."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    if schedule == "cosine":
        return {"num_train_timesteps": timesteps, "beta_schedule": "squaredcos_cap_v2"}
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return {"num_train_timesteps": timesteps, "beta_schedule": "linear", "beta_start": scale * 1e-4,
                "beta_end": min(scale * 0.02, 0.999)}
    raise ValueError(f"unknown beta schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")


class DigitsDiffusion(ImageDiffusion):
    """Class-conditional DDPM on 8x8 digits with the MLP denoiser, trained generation after generation on its
    own samples.

    Args:
        train_size: real training digits (drawn from the 1797 by the run's data seed).
        heldout_size: held-out real digits for the probes (disjoint from training).
        timesteps: diffusion steps ``T`` (training, and sampling with every step).
        schedule: ``cosine`` or ``linear`` beta schedule.
        hidden, depth, time_dim: denoiser width, residual blocks, time-embedding size.
        label_dropout: probability of training on the null label (gives the unconditional encoder).
        encode_t: timestep at which :meth:`encode` reads the denoiser's hidden layer.
        eval_samples: generated digits per probe evaluation (class-balanced).
        evaluator_hidden, evaluator_steps: feature size and training steps of the frozen evaluator.
        batch_size, lr, weight_decay: AdamW training settings.
        eval_batch_size: batch size of sampling, encoding and probes.
    """

    name: ClassVar[str] = "digits-diffusion"
    headline: ClassVar[tuple[str, ...]] = ("fid", "class_accuracy", "ole", "effective_rank")
    bench_methods: ClassVar[tuple[str, ...]] = (
        "baseline", "accumulate", "accumulate-subsample", "accumulate-subsample+latent-filter",
        "accumulate-subsample+latent-filter-random", "verifier-filter", "verifier-filter-random", "self-correct",
        "detector-reweight", "detector-reweight-random")
    #: the controls of LSF, the verifier and the detector: the same plugins keeping the same share at random
    bench_variants: ClassVar[dict[str, dict]] = {
        "latent-filter-random": LSF_VARIANTS["latent-filter-random"],
        "verifier-filter-random": VERIFIER_VARIANTS["verifier-filter-random"], **DETECTOR_VARIANTS}
    #: RESULTS.md also compares each with its control, paired by seed
    bench_controls: ClassVar[dict[str, str]] = {
        "accumulate-subsample+latent-filter": "accumulate-subsample+latent-filter-random",
        "verifier-filter": "verifier-filter-random", "detector-reweight": "detector-reweight-random"}
    num_classes: ClassVar[int] = 10

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"train_size": 200, "heldout_size": 100, "timesteps": 20, "hidden": 32, "depth": 1,
                           "time_dim": 16, "eval_samples": 100, "evaluator_steps": 60, "batch_size": 64},
                  "trainer": {"max_steps": 40}, "generations": 2, "variants": bench_variants},
        "cpu": {"task": {"train_size": 1000, "heldout_size": 500, "timesteps": 100, "hidden": 256,
                         "depth": 2},
                "trainer": {"max_steps": 1000}, "generations": 5, "variants": bench_variants,
                "seeds": CHEAP_SEEDS,
                "opt_in_methods": opt_in_methods(bench_methods, "verifier-filter", "~1 CPU-minute")},
        "gpu": {"task": {"train_size": 1297, "heldout_size": 500, "timesteps": 200, "hidden": 512,
                         "depth": 4, "eval_samples": 2000, "evaluator_steps": 600, "batch_size": 256},
                "trainer": {"max_steps": 10000}, "generations": 10, "variants": bench_variants},
    }
    """Run settings per bench preset: ``smoke`` (tests, seconds), ``cpu`` and ``gpu``."""

    def __init__(self, train_size: int = 1000, heldout_size: int = 500, timesteps: int = 100,
                 schedule: str = "cosine", hidden: int = 256, depth: int = 2, time_dim: int = 64,
                 label_dropout: float = 0.1, encode_t: int = 10, eval_samples: int = 500,
                 evaluator_hidden: int = 64, evaluator_steps: int = 200, batch_size: int = 128,
                 lr: float = 2e-3, weight_decay: float = 0.0, eval_batch_size: int = 2048) -> None:
        check_split(train_size, heldout_size)
        if min(hidden, depth, time_dim) < 1:
            raise ValueError("hidden, depth and time_dim must be >= 1")
        if eval_samples < self.num_classes:
            raise ValueError(f"eval_samples must be >= {self.num_classes} (one per class), got {eval_samples}")
        super().__init__(
            data=None, resolution=8, train_size=train_size, heldout_size=heldout_size, model="mlp",
            mlp={"hidden": hidden, "depth": depth, "time_dim": time_dim},
            scheduler=noise_schedule(timesteps, schedule), sampler="ddpm", num_inference_steps=timesteps,
            label_dropout=label_dropout, encode_t=encode_t, eval_samples=eval_samples, evaluator="mlp",
            evaluator_hidden=evaluator_hidden, evaluator_steps=evaluator_steps, batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, eval_batch_size=eval_batch_size)
        self.schedule = schedule

    def check_pool(self, pool: Pool) -> None:
        """As the base class; a pool of the former implementation (``x`` / ``y``) is one message."""
        if pool.keys == ("x", "y"):
            raise CollapsekitError(
                "digits-diffusion: this run folder was written by the former digits-diffusion (pools of x / y "
                "vectors, model.pt), which now runs as image-diffusion with the MLP denoiser; it cannot resume. "
                "Start it over (--run.overwrite true) or give a new run.name")
        super().check_pool(pool)
