"""collapsekit-detector-reweight: detector-weighted resampling of synthetic data (Drayson et al. 2025).

The pure functions below need only NumPy and torch. The collapsekit plugin lives in
``collapsekit_detector_reweight.plugin`` (entry point ``detector-reweight``) and is not imported here.
"""
from .functional import (Detector, auc, cross_fit_confidence, detector_loss, effective_sample_size,
                         hashed_bigrams, resampling_weights, train_detector, weighted_sample)

__all__ = ["Detector", "train_detector", "detector_loss", "cross_fit_confidence", "resampling_weights",
           "weighted_sample", "hashed_bigrams", "auc", "effective_sample_size"]
__version__ = "0.1.0"
