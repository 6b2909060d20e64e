"""collapsekit-maxsup: Max Suppression (MaxSup) regularization and the label-smoothing baseline.

The pure functions below need only torch. The collapsekit plugins live in
``collapsekit_maxsup.plugin`` (entry points ``maxsup`` and ``label-smoothing``)
and are not imported here, so the functions work without collapsekit installed.
"""
from .losses import label_smoothing_loss, max_suppression, maxsup_alpha, maxsup_loss

__all__ = ["maxsup_loss", "label_smoothing_loss", "max_suppression", "maxsup_alpha"]
__version__ = "0.1.0"
