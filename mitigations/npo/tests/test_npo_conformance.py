"""The collapsekit conformance kit on the three plugins of collapsekit-npo (they need ``init: previous``)."""
from collapsekit.plugins.tasks.facts_unlearning import FactsUnlearning
from collapsekit.testing import PluginConformance

TINY = {"num_people": 24, "heldout_people": 8, "n_first": 8, "n_last": 8, "n_cities": 4, "n_jobs": 4,
        "n_hobbies": 4, "forget_share": 0.25, "n_layer": 1, "n_embd": 16, "batch_size": 4, "lr": 1e-2}


class _UnlearningConformance(PluginConformance):
    task_factory = staticmethod(lambda: FactsUnlearning(**TINY))
    run_options = {"init": "previous", "samples_per_generation": 8}


class TestGradientAscentConformance(_UnlearningConformance):
    plugin_name = "gradient-ascent"


class TestNPOConformance(_UnlearningConformance):
    plugin_name = "npo"


class TestNPORTConformance(_UnlearningConformance):
    plugin_name = "npo-rt"
