"""collapsekit-token-editing: ToEdit token-level editing (Zhu et al., ICML 2025).

The pure functions below need only torch. The collapsekit plugin lives in
``collapsekit_token_editing.plugin`` (entry point ``token-editing``) and is not
imported here, so the functions work without collapsekit installed.
"""
from .functional import (candidate_weights, edit_positions, edit_scored, edit_statistics, edit_tokens, scored_statistics,
                         scores_of, token_probabilities)

__all__ = ["edit_tokens", "edit_statistics", "edit_positions", "candidate_weights", "token_probabilities",
           "scores_of", "edit_scored", "scored_statistics"]
__version__ = "0.1.0"
