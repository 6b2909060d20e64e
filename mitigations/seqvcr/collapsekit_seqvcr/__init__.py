"""collapsekit-seqvcr: Seq-VCR (sequential variance-covariance regularization) for collapsekit.

The pure functions here need only torch. The plugins (``seqvcr``, ``pause-tokens``)
live in :mod:`collapsekit_seqvcr.plugin`, which imports collapsekit.
"""
from .losses import batch_covariance, seqvcr_loss, seqvcr_terms

__all__ = ["seqvcr_loss", "seqvcr_terms", "batch_covariance"]
__version__ = "0.1.0"
