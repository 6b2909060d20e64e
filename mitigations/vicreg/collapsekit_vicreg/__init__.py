"""collapsekit-vicreg: VICReg variance-invariance-covariance regularization (Bardes et al., ICLR 2022).

The pure functions below need only torch. The collapsekit plugin lives in
``collapsekit_vicreg.plugin`` (entry point ``vicreg``) and is not imported here,
so the functions work without collapsekit installed.
"""
from .losses import (VARIANTS, covariance_loss, covariance_matrix, invariance_loss, variance_covariance_loss,
                     variance_covariance_terms, variance_loss, vicreg_loss, vicreg_terms)

__all__ = ["vicreg_loss", "vicreg_terms", "variance_covariance_loss", "variance_covariance_terms",
           "variance_loss", "covariance_loss", "covariance_matrix", "invariance_loss", "VARIANTS"]
__version__ = "0.1.0"
