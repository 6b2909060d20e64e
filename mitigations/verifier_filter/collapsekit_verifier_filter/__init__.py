"""collapsekit-verifier-filter: keep the synthetic items a verifier ranks best (Feng et al. 2024).

The pure functions below need only NumPy. The collapsekit plugin lives in
``collapsekit_verifier_filter.plugin`` (entry point ``verifier-filter``) and is not imported
here, so the functions work without collapsekit installed.
"""
from .functional import best_mask, oversample_factor, selection_stats, typicality

__all__ = ["best_mask", "oversample_factor", "selection_stats", "typicality"]
__version__ = "0.1.0"
