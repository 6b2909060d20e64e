"""collapsekit-self-correct: self-correcting self-consuming loops (Gillman et al. 2024).

The pure functions below need only NumPy. The collapsekit plugin lives in
``collapsekit_self_correct.plugin`` (entry point ``self-correct``) and is not imported here.
"""
from .functional import change_stats, mixture_strength

__all__ = ["mixture_strength", "change_stats"]
__version__ = "0.1.0"
