"""Built-in baselines: the ``replace`` pool policy and ``ancestral`` sampling.

Both are ``trylast``: any active mitigation implementing the same hook wins (a
``compose_pool`` marked ``trylast`` is a default that yields to any other policy).
"""
from __future__ import annotations

from collapsekit.capabilities import Sampler, require
from collapsekit.markers import hookimpl


class Replace:
    """Train generation ``g > 0`` on the synthetic pool of generation ``g - 1`` only.

    Generation 0 trains on real data. This is the classic self-consuming loop
    that collapses.
    """

    @hookimpl(trylast=True)
    def compose_pool(self, generation, real, history):
        return real if generation == 0 else history[generation - 1]


class AncestralSampling:
    """Synthesize by sampling the model itself through the task's sampler.

    ``temperature`` 1, ``top_k`` 0 (off) and ``top_p`` 1 (off) sample the
    model's distribution exactly, which is what drives model collapse.
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    @hookimpl
    def configure(self, run):
        require(run.task, Sampler, plugin="ancestral", why="sample new items from the trained model")

    @hookimpl(trylast=True)
    def synthesize(self, run, model, generation, request):
        return run.task.sample(
            model,
            request.size,
            request.generator,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
        )
