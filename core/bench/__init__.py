"""The shared benchmark suite: the runner (:mod:`.runner`), its tables and plots (:mod:`.report`)
and the engine's performance checks (:mod:`.perf`). Nothing in the engine imports this package."""
from .runner import (BASELINE, PRESETS, check_method, load_tasks, method_parts, method_plugins, plan, run_bench,
                     run_cell, write_bench_configs)

__all__ = ["BASELINE", "PRESETS", "check_method", "load_tasks", "method_parts", "method_plugins", "plan",
           "run_bench", "run_cell", "write_bench_configs"]
