"""collapsekit-npo: gradient ascent, NPO and NPO+RT (Zhang et al. 2024) and SimNPO (Fan et al. 2024) unlearning.

The loss functions and the reference log-prob table below need only torch. The collapsekit
plugins live in ``collapsekit_npo.plugin`` (entry points ``gradient-ascent``, ``npo``,
``npo-rt`` and ``simnpo``) and are not imported here, so the functions work without collapsekit.
"""
from .cache import RefLogpTable
from .losses import gradient_ascent_loss, masked_nll, npo_loss, npo_rt_loss, sequence_logprob, simnpo_loss

__all__ = ["sequence_logprob", "masked_nll", "gradient_ascent_loss", "npo_loss", "npo_rt_loss", "simnpo_loss",
           "RefLogpTable"]
__version__ = "0.1.0"
