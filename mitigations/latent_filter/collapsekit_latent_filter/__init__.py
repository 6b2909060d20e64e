"""collapsekit-latent-filter: Latent Space Filtering (LSF) of synthetic data against model collapse.

The pure functions below need only torch. The collapsekit plugin lives in
``collapsekit_latent_filter.plugin`` (entry point ``latent-filter``) and is not
imported here, so the functions work without collapsekit installed.
"""
from .functional import (Probe, confidence, fit_subspaces, keep_count, l2_normalize, mean_pool, probe_loss,
                         split_budget, subspace_residual, top_n_mask, train_probe)

__all__ = ["Probe", "train_probe", "probe_loss", "confidence", "top_n_mask", "keep_count", "fit_subspaces",
           "subspace_residual", "mean_pool", "l2_normalize", "split_budget"]
__version__ = "0.1.0"
