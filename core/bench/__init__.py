"""The shared benchmark suite: the runner (:mod:`.runner`), cells over a user's own config
(:mod:`.configplan`), where cells run (:mod:`.executors`), its tables and plots (:mod:`.report`) and the
engine's performance checks (:mod:`.perf`). Nothing in the engine imports this package."""
from .configplan import config_plan, read_run_config
from .methods import BASELINE, check_method, method_parts, method_plugins
from .runner import PRESETS, load_tasks, plan, run_bench, run_cell, write_bench_configs

__all__ = ["BASELINE", "PRESETS", "check_method", "config_plan", "load_tasks", "method_parts", "method_plugins",
           "plan", "read_run_config", "run_bench", "run_cell", "write_bench_configs"]
