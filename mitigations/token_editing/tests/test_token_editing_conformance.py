"""The collapsekit conformance kit on the token-editing plugin (tiny markov-text runs)."""
from collapsekit.testing import PluginConformance


class TestTokenEditingConformance(PluginConformance):
    plugin_name = "token-editing"
    plugin_args = {"threshold": 0.0, "top_k": 4}     # threshold 0: every token is redrawn, edits happen
