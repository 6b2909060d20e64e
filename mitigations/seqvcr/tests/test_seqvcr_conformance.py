"""The collapsekit conformance kit on both plugins of collapsekit-seqvcr."""
from collapsekit.plugins.tasks.multiplication import Multiplication
from collapsekit.testing import PluginConformance


def tiny_multiplication():
    return Multiplication(digits=2, train_size=64, heldout_size=16, n_layer=2, n_embd=16, n_head=2, batch_size=16,
                          eval_batch_size=64, rank_samples=16)


class TestSeqVCRConformance(PluginConformance):
    plugin_name = "seqvcr"
    plugin_args = {"proj_dim": 8}          # default task: the kit's tiny markov-text


class TestPauseTokensConformance(PluginConformance):
    plugin_name = "pause-tokens"
    plugin_args = {"k": 2}
    task_factory = staticmethod(tiny_multiplication)
