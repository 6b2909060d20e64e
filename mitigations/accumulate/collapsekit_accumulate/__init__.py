"""collapsekit-accumulate: the replace / accumulate / accumulate-subsample / fresh-mix pool policies.

The pure functions below need only NumPy (index selection, fresh-data schedules,
the closed forms of Gerstgrasser et al. 2024 and the real-data weighting of He et al. 2025). The collapsekit plugins live
in ``collapsekit_accumulate.plugin`` (entry points ``accumulate``,
``accumulate-subsample`` and ``fresh-mix``) and are not imported here, so the
functions work without collapsekit installed.
"""
from .functional import (
    SCHEDULES,
    accumulate_error_bound,
    accumulate_excess_error,
    excess_error_unit,
    exponential_schedule,
    fresh_fraction,
    fresh_mix_counts,
    golden_weight,
    item_weights,
    linear_schedule,
    replace_excess_error,
    subsample_indices,
    weighted_mean_error,
)

__all__ = ["subsample_indices", "fresh_mix_counts", "fresh_fraction", "linear_schedule", "exponential_schedule",
           "SCHEDULES", "excess_error_unit", "replace_excess_error", "accumulate_excess_error",
           "accumulate_error_bound", "golden_weight", "weighted_mean_error", "item_weights"]
__version__ = "0.1.0"
