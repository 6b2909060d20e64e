"""Plots and tables: metric-vs-generation plots of a run, and rendering of a bench's ``results.json``.

:func:`report` accepts either a run directory (``gen_<k>/metrics.json``; writes
``plots/metrics.png``, when the task declares a ``headline``, ``plots/headline.png``, when there are
text probes or lm-eval results, ``plots/evaluation.png`` (lm-eval's standard errors as error bars), when
generations wrote ``samples.png``, ``plots/samples.png`` of them side by side, and when they wrote
``samples.jsonl``, ``plots/samples.md`` with a few texts of each), a bench directory
(``results.json``; writes ``RESULTS.md`` and ``plots/<task>.png``) or several run directories
(compared as bench cells, paired by seed: :func:`runs_results`). Tables compare every method
with its task's reference, paired by seed (:mod:`.stats`). Plots use matplotlib's Agg renderer
through the object API (no pyplot state is touched).
"""
from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import CollapsekitError
from ..fileio import atomic_write_bytes
from ..run import finished_generations, read_metrics
from .stats import METHOD, MIN_SEEDS, Comparison, compare, holm_adjust

MAX_PANELS = 4
BASELINE = "baseline"


# -- helpers -----------------------------------------------------------------------------------
def _figure(n_panels: int, ncols: int | None = None, width: float = 4.2, height: float = 3.0):
    from matplotlib.figure import Figure

    ncols = ncols or n_panels
    nrows = math.ceil(n_panels / ncols)
    total = height * nrows + 0.5
    fig = Figure(figsize=(width * ncols, total))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    # fixed margins (in inches): the constrained layout engine doubles the drawing time of a big grid
    fig.subplots_adjust(left=0.75 / (width * ncols), right=1 - 0.15 / (width * ncols), bottom=0.55 / total,
                        top=1 - 0.8 / total, wspace=0.35, hspace=0.75 / (height - 0.75))
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _generation_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 1:
        ax.set_xlim(-0.5, 0.5)
        ax.set_xticks([0])
    ax.grid(alpha=0.3)


def declared_directions(target: Any) -> dict[str, bool | None]:
    """``target.higher_is_better`` (a task or plugin class) as plain JSON values; ``None`` = not ranked."""
    declared = getattr(target, "higher_is_better", None)
    if not isinstance(declared, Mapping):
        return {}
    return {str(k): None if v is None else bool(v) for k, v in declared.items()}


def _arrow(direction: bool | None) -> str:
    return {True: " ↑", False: " ↓"}.get(direction, "")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the finite ``values``."""
    xs = _finite(values)
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, std, len(xs)


def _task_class(class_path: str | None) -> type | None:
    """The class at ``class_path``, or ``None`` when it cannot be imported."""
    if not class_path:
        return None
    module, _, name = class_path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - plots must not fail because a task no longer imports
        return None


def _task_attr(class_path: str | None, attr: str, default: Any) -> Any:
    """``class_path``'s class attribute ``attr``, or ``default`` when it cannot be imported."""
    return getattr(_task_class(class_path), attr, default)


# -- one run directory -------------------------------------------------------------------------
def read_run_metrics(run_dir: Path) -> list[dict[str, float]]:
    """``metrics.json`` of every finished generation (``done`` present), in order."""
    return [read_metrics(run_dir, k) for k in range(finished_generations(run_dir))]


TEXT_PROBES = ("self_bleu", "type_token_ratio")


def stderr_of(name: str) -> str:
    """The key of ``name``'s standard error as lm-eval reports it (``lm_eval/<task>/<metric>_stderr[/<filter>]``)."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != "lm_eval":
        return f"{name}_stderr"
    parts[2] += "_stderr"
    return "/".join(parts)


def evaluation_metrics(names: Iterable[str]) -> list[str]:
    """The panels of ``plots/evaluation.png``: the text probes of the pool (Self-BLEU, type-token ratio) and
    the lm-eval results (their standard errors become error bars, not panels)."""
    names = set(names)
    harness = sorted(n for n in names if n.startswith("lm_eval/") and n.count("/") >= 2
                     and not n.split("/")[2].endswith("_stderr"))
    return [n for n in TEXT_PROBES if n in names] + harness


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw every metric of a run against the generation; return the PNG paths written."""
    run_dir = Path(run_dir)
    metrics = read_run_metrics(run_dir)
    if not metrics:
        raise CollapsekitError(f"{run_dir} holds no finished generation (no gen_0/done); nothing to plot")
    class_path = None
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        try:
            class_path = ((yaml.safe_load(config.read_text()) or {}).get("task") or {}).get("class_path")
        except yaml.YAMLError:
            class_path = None
    directions = declared_directions(_task_class(class_path))
    headline = [m for m in (_task_attr(class_path, "headline", ()) or ()) if m in metrics[-1]]
    names = sorted({k for m in metrics for k, v in m.items() if isinstance(v, (int, float))},
                   key=lambda k: ("/" in k, k))
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for filename, chosen, ncols in (("metrics.png", names, 4), ("headline.png", headline, None),
                                    ("evaluation.png", evaluation_metrics(names), 4)):
        if not chosen:
            continue
        fig, axes = _figure(len(chosen), ncols=min(ncols or len(chosen), len(chosen)))
        for ax, name in zip(axes, chosen):
            gens = [g for g, m in enumerate(metrics) if name in m]
            errors = [metrics[g].get(stderr_of(name)) for g in gens]
            ax.errorbar(gens, [metrics[g][name] for g in gens], marker="o", capsize=3,
                        yerr=errors if all(isinstance(e, (int, float)) for e in errors) else None)
            ax.set_title(name + _arrow(directions.get(name)), fontsize=10)
            _generation_axis(ax)
        fig.suptitle(run_dir.name)
        path = out_dir / filename
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def plot_sample_grids(run_dir: str | Path) -> list[Path]:
    """``plots/samples.png``: the ``samples.png`` of every finished generation side by side, titled by
    generation (written by tasks such as image-diffusion); ``[]`` when no generation has one."""
    from matplotlib.figure import Figure
    from PIL import Image

    run_dir = Path(run_dir)
    grids = [(g, run_dir / f"gen_{g}" / "samples.png") for g in range(finished_generations(run_dir))]
    grids = [(g, p) for g, p in grids if p.is_file()]
    if not grids:
        return []
    fig = Figure(figsize=(3.2 * len(grids), 3.6))
    for i, (g, p) in enumerate(grids):
        ax = fig.add_subplot(1, len(grids), i + 1)
        with Image.open(p) as image:
            ax.imshow(image.convert("RGB"), interpolation="nearest")
        ax.set_title(f"generation {g}", fontsize=10)
        ax.axis("off")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    fig.savefig(out / "samples.png", dpi=100)
    return [out / "samples.png"]


def sample_texts(run_dir: str | Path, per_generation: int = 3, width: int = 300) -> list[Path]:
    """``plots/samples.md``: the first ``per_generation`` synthetic texts of every finished generation
    (from ``samples.jsonl``, written by text tasks such as hf-lm), each cut to ``width`` characters,
    beside links to the plots; ``[]`` when no generation has samples."""
    import json

    run_dir = Path(run_dir)
    sections = []
    for g in range(finished_generations(run_dir)):
        path = run_dir / f"gen_{g}" / "samples.jsonl"
        if not path.is_file():
            continue
        with path.open() as lines:
            rows = [json.loads(line) for _, line in zip(range(per_generation), lines)]
        shown = "\n\n".join("> " + " ".join(str(r.get("text", "")).split())[:width] for r in rows)
        sections.append(f"## generation {g}\n\n{shown}\n")
    if not sections:
        return []
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    plots = "".join(f"![{p.stem}]({p.name})\n" for p in sorted(out.glob("*.png")))
    page = out / "samples.md"
    page.write_text(f"# {run_dir.name}: samples per generation\n\n{plots}\n" + "\n".join(sections))
    return [page]


# -- bench results -------------------------------------------------------------------------------
def _cells(results: Mapping) -> dict[str, dict[str, dict[int, dict[int, dict[str, Any]]]]]:
    """``task -> method -> seed -> generation -> {metric: value}``."""
    tree: dict = {}
    for r in results["rows"]:
        tree.setdefault(r["task"], {}).setdefault(r["method"], {}).setdefault(r["seed"], {}) \
            .setdefault(r["generation"], {})[r["metric"]] = r["value"]
    return tree


def _method_order(results: Mapping, task: str, present: Iterable[str]) -> list[str]:
    declared = list(((results.get("meta") or {}).get("tasks") or {}).get(task, {}).get("methods") or [])
    present = list(present)
    return [m for m in declared if m in present] + sorted(m for m in present if m not in declared)


def direction(results: Mapping, task: str, metric: str) -> bool | None:
    """Is higher better for ``metric`` on ``task``? ``None``: reported, not ranked.

    The task's own ``higher_is_better`` decides (two tasks may rank the same name differently,
    e.g. ``distinct_1``); metrics it does not declare (a plugin's) fall back to ``results["metrics"]``.
    """
    entry = (((results.get("meta") or {}).get("tasks") or {}).get(task) or {})
    declared = entry.get("directions")
    if declared is None:       # results.json written before tasks recorded their directions
        declared = declared_directions(_task_class(entry.get("class_path")))
    if metric in declared:
        return None if declared[metric] is None else bool(declared[metric])
    return ((results.get("metrics") or {}).get(metric) or {}).get("higher_is_better")


def headline_of(results: Mapping, task: str, metric_names: Sequence[str]) -> list[str]:
    """The task's headline metrics present in ``metric_names`` (else its first directed metrics)."""
    declared = ((results.get("meta") or {}).get("headline") or {}).get(task) or []
    chosen = [m for m in declared if m in metric_names]
    if not chosen:
        chosen = [m for m in metric_names if direction(results, task, m) is not None]
    return chosen[:MAX_PANELS]


def reference_method(methods: Sequence[str]) -> str | None:
    """The method every other method of a task is compared with: ``baseline``, else the first listed."""
    methods = list(methods)
    return BASELINE if BASELINE in methods else (methods[0] if methods else None)


def final_values(results: Mapping, task: str) -> dict[tuple[str, str], dict[int, Any]]:
    """``{(method, metric): {seed: value at that cell's final generation}}`` (per-seed, unpaired)."""
    out: dict[tuple[str, str], dict[int, Any]] = {}
    for method, seeds in _cells(results)[task].items():
        for seed, gens in seeds.items():
            for metric, value in gens[max(gens)].items():
                out.setdefault((method, metric), {})[seed] = value
    return out


def final_table(results: Mapping, task: str) -> tuple[list[str], list[str], dict[tuple[str, str], tuple]]:
    """``(methods, metrics, {(method, metric): (mean, std, n)})`` at each cell's final generation.

    Metrics: the headline first, then the task's declared metrics, its ``report_metrics`` (plugin
    metrics worth a column, e.g. how often token editing fires) and every metric with a direction
    (engine diagnostics such as ``loss/*`` or ``pool/size`` stay in ``results.json`` only).
    """
    tree = _cells(results)[task]
    entry = (((results.get("meta") or {}).get("tasks") or {}).get(task) or {})
    declared = set(entry.get("metrics") or [])
    extra = list(entry.get("report_metrics") or _task_attr(entry.get("class_path"), "report_metrics", ()) or ())
    finals = final_values(results, task)
    present = sorted({m for _, m in finals})
    head = headline_of(results, task, present)
    names = [m for m in present if m in declared or direction(results, task, m) is not None]
    metrics = head + [m for m in names if m not in head] + [m for m in extra if m in present and m not in head
                                                            and m not in names]
    methods = _method_order(results, task, tree)
    return methods, metrics, {k: mean_std(v.values()) for k, v in finals.items()}


def comparisons(results: Mapping, task: str) -> tuple[str | None, dict[tuple[str, str], Comparison]]:
    """``(reference method, {(method, metric): Comparison})`` of every other method at the final generation.

    Paired by seed with :func:`collapsekit.bench.stats.compare`, for the metrics of :func:`final_table`;
    p-values Holm-adjusted over all of them (one table, one family).
    """
    methods, metrics, _ = final_table(results, task)
    finals = final_values(results, task)
    ref = reference_method(methods)
    out = {}
    for method in methods:
        if method == ref:
            continue
        for metric in metrics:
            if (method, metric) in finals and (ref, metric) in finals:
                out[(method, metric)] = compare(finals[(method, metric)], finals[(ref, metric)],
                                                direction(results, task, metric))
    return ref, holm_adjust(out)


def controls_of(results: Mapping, task: str) -> dict[str, str]:
    """``{method: its control method}`` the task declares (``bench_controls``), both present in the results."""
    entry = (((results.get("meta") or {}).get("tasks") or {}).get(task) or {})
    declared = entry.get("controls") or _task_attr(entry.get("class_path"), "bench_controls", {}) or {}
    present = set(_cells(results)[task])
    return {m: c for m, c in declared.items() if m in present and c in present}


def control_comparisons(results: Mapping, task: str) -> dict[tuple[str, str], Comparison]:
    """``{(method, metric): Comparison}`` of each method with its declared control, paired by seed
    (Holm-adjusted over the task's control comparisons, a family of their own)."""
    _, metrics, _ = final_table(results, task)
    finals = final_values(results, task)
    out = {}
    for method, control in controls_of(results, task).items():
        for metric in metrics:
            if (method, metric) in finals and (control, metric) in finals:
                out[(method, metric)] = compare(finals[(method, metric)], finals[(control, metric)],
                                                direction(results, task, metric))
    return holm_adjust(out)


def _fmt_diff(c: Comparison) -> str:
    if c.ci is None:
        return f"n/a (needs ≥ {MIN_SEEDS} seeds; {c.n} paired)"
    mark = {True: " ▲", False: " ▼"}.get(c.better, " ≠" if c.significant else "")
    return f"{c.mean:+.3g} [{c.ci[0]:+.3g}, {c.ci[1]:+.3g}] p={c.p:.2g}{mark}"


def _fmt(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "n/a"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"


def render_markdown(results: Mapping, plots: Mapping[str, str] | None = None) -> str:
    """``RESULTS.md`` text: the meta, then one table per task (rows = methods, columns = final metrics)."""
    meta = results.get("meta") or {}
    wall = meta.get("wall_time_s") or {}
    lines = ["# collapsekit benchmark results", ""]
    facts = [("preset", meta.get("preset")), ("config", meta.get("config")), ("collapsekit", meta.get("version")),
             ("commit", (meta.get("commit") or "unknown") + (" (uncommitted changes)" if meta.get("dirty") else "")),
             ("device", meta.get("device")), ("torch", meta.get("torch")), ("lightning", meta.get("lightning")),
             ("seeds", ", ".join(map(str, meta.get("seeds") or []))),
             ("time", f"{wall.get('total', 0):.0f} s wall, {wall.get('total_cpu', 0):.0f} s CPU (sums over cells; "
                      f"this invocation {wall.get('invocation', 0):.0f} s)"),
             ("finished", meta.get("finished"))]
    lines += [f"- **{k}**: {v}" for k, v in facts if v not in (None, "")]
    lines += ["", "Each cell is one (task, method, seed) run of the engine with the same budget for every method "
              "of a task. Tables show the **final generation**, mean ± sample std over seeds; ↑ / ↓ = higher / "
              "lower is better (no arrow: reported, not ranked). Every method is compared with its task's "
              "reference (`baseline`, else the first method listed), **paired by seed**: "
              f"{METHOD}. ▲ / ▼ = significantly better / worse than the reference; **bold** = significantly "
              "better (no bold for the best mean within noise); ≠ = significantly different, metric not ranked. "
              "With fewer than 3 seeds nothing is marked. Full per-generation, per-seed numbers: `results.json`.",
              ""]
    tree = _cells(results) if results.get("rows") else {}
    cell_time: dict[tuple[str, str], list[float]] = {}
    for c in wall.get("cells") or []:
        cell_time.setdefault((c["task"], c["method"]), []).append(c["seconds"])
    for task in tree:
        methods, metrics, stats = final_table(results, task)
        ref, diffs = comparisons(results, task)
        gens = sorted({g for seeds in tree[task].values() for gs in seeds.values() for g in gs})
        preset = ((meta.get("tasks") or {}).get(task) or {}).get("preset") or {}
        lines += [f"## {task}", "",
                  f"{len(gens)} generations; trainer {json.dumps(preset.get('trainer', {}))}; "
                  f"task {json.dumps(preset.get('task', {}))}"
                  + (f"; plugin_args {json.dumps(preset['plugin_args'])}" if preset.get("plugin_args") else "")
                  + (f"; variants {json.dumps(preset['variants'])}" if preset.get("variants") else ""), ""]
        header = ["method", "seeds"] + [f"`{m}`{_arrow(direction(results, task, m))}"
                                         for m in metrics] \
            + ["wall s / seed"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            n_seeds = len(tree[task][method])
            cells = []
            for metric in metrics:
                mean, std, n = stats.get((method, metric), (math.nan, math.nan, 0))
                text = _fmt(mean, std, n)
                c = diffs.get((method, metric))
                if c is not None and c.significant:
                    text += {True: " ▲", False: " ▼"}.get(c.better, " ≠")
                cells.append(f"**{text}**" if c is not None and c.better else text)
            secs = cell_time.get((task, method))
            label = f"`{method}`" + (" (reference)" if method == ref and len(methods) > 1 else "")
            lines.append("| " + " | ".join([label, str(n_seeds), *cells,
                                            f"{sum(secs) / len(secs):.0f}" if secs else "?"]) + " |")
        if diffs and all(c.ci is None for c in diffs.values()):
            most = max(c.n for c in diffs.values())
            lines += ["", f"Difference from `{ref}`: n/a (needs ≥ {MIN_SEEDS} seeds paired with the reference; "
                          f"this table has {most}), so nothing is marked or bolded."]
        elif diffs:
            tested = sum(c.p is not None for c in diffs.values())
            lines += ["", f"Difference from `{ref}` (method − reference, mean over paired seeds "
                          f"[95% paired bootstrap CI], paired t-test p Holm-adjusted over the {tested} "
                          "comparisons of this table; ▲ / ▼ significantly better / worse):", ""]
            header = ["method"] + [f"Δ `{m}`{_arrow(direction(results, task, m))}"
                                   for m in metrics]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method in methods:
                if method == ref:
                    continue
                lines.append("| " + " | ".join([f"`{method}`"] + [
                    _fmt_diff(diffs[(method, metric)]) if (method, metric) in diffs else "n/a"
                    for metric in metrics]) + " |")
        controls = controls_of(results, task)
        if controls:
            against = control_comparisons(results, task)
            lines += ["", "Against its control (method − control, paired by seed, same statistics, p Holm-adjusted "
                          f"over these {sum(c.p is not None for c in against.values())} comparisons; a method "
                          "that only matches its control gains nothing from what the control leaves out):", ""]
            header = ["method", "control"] + [f"Δ `{m}`{_arrow(direction(results, task, m))}"
                                              for m in metrics]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method, control in controls.items():
                lines.append("| " + " | ".join([f"`{method}`", f"`{control}`"] + [
                    _fmt_diff(against[(method, metric)]) if (method, metric) in against else "n/a"
                    for metric in metrics]) + " |")
        if plots and task in plots:
            lines += ["", f"![{task}]({plots[task]})"]
        lines.append("")
    problems = [("Skipped", meta.get("skipped") or [], "reason"), ("Failed cells", meta.get("failures") or [], "error")]
    for title, items, why in problems:
        if items:
            lines += [f"## {title}", ""]
            lines += ["- " + " / ".join(f"`{item[k]}`" if k != "seed" else f"seed {item[k]}"
                                        for k in ("task", "method", "seed") if k in item)
                      + f": {item.get(why, '')}" for item in items]
            lines.append("")
    if meta.get("task_errors"):
        lines += ["## Tasks that failed to import", ""]
        lines += [f"- `{name}`: {err}" for name, err in meta["task_errors"].items()]
        lines.append("")
    return "\n".join(lines)


def render_plots(results: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """Per task, its headline metrics vs generation: a line per method (mean) and a ±std band over seeds."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preset = (results.get("meta") or {}).get("preset") or (results.get("meta") or {}).get("config") or ""
    written: dict[str, Path] = {}
    for task, methods in _cells(results).items():
        names = sorted({m for seeds in methods.values() for gens in seeds.values() for ms in gens.values()
                        for m in ms})
        head = headline_of(results, task, names)
        if not head:
            continue
        fig, axes = _figure(len(head))
        for ax, metric in zip(axes, head):
            for method in _method_order(results, task, methods):
                seeds = methods[method]
                gens = sorted({g for gs in seeds.values() for g in gs})
                stats = [mean_std(seeds[s].get(g, {}).get(metric) for s in seeds) for g in gens]
                xs = [g for g, st in zip(gens, stats) if st[2]]
                mean = [st[0] for st in stats if st[2]]
                std = [st[1] for st in stats if st[2]]
                if not xs:
                    continue
                line, = ax.plot(xs, mean, marker="o", markersize=3, label=method)
                if len(seeds) > 1:
                    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                    color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(metric + _arrow(direction(results, task, metric)), fontsize=10)
            _generation_axis(ax)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{task} ({preset}): mean ± std over seeds")
        path = out_dir / f"{_safe(task)}.png"
        fig.savefig(path, dpi=100)
        written[task] = path
    return written


def render_bench(bench_dir: str | Path) -> list[Path]:
    """Write ``RESULTS.md`` and ``plots/<task>.png`` from ``bench_dir/results.json``; return the paths."""
    bench_dir = Path(bench_dir)
    try:
        results = json.loads((bench_dir / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise CollapsekitError(f"cannot read {bench_dir / 'results.json'}: {exc}") from None
    plots = render_plots(results, bench_dir / "plots")
    md = bench_dir / "RESULTS.md"
    md.write_text(render_markdown(results, {t: p.relative_to(bench_dir).as_posix() for t, p in plots.items()}))
    return [md, *plots.values()]


def _run_config(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CollapsekitError(f"{run_dir}: cannot read its config.yaml ({exc}); comparing runs needs each run's "
                               "seed and task from it") from None


def runs_results(run_dirs: Sequence[str | Path]) -> dict:
    """A bench-style results dict (``meta``/``metrics``/``rows``) built from plain run directories.

    Each run is one cell: task = its task's ``name`` (else class name), method = the run name without a
    trailing ``-s<seed>`` (the bench's cell names), seed = ``run.seed`` of its ``config.yaml``. Two runs
    with the same (task, method, seed) are an error (they would be paired twice).
    """
    rows, directions, seen, headline, tasks = [], {}, {}, {}, {}
    for run_dir in map(Path, run_dirs):
        config = _run_config(run_dir)
        run = config.get("run") or {}
        class_path = (config.get("task") or {}).get("class_path")
        task = _task_attr(class_path, "name", None) or (class_path or "task").rpartition(".")[2]
        seed = int(run.get("seed", 0))
        method = re.sub(rf"-s{seed}$", "", str(run.get("name") or run_dir.name))
        key = (task, method, seed)
        if key in seen:
            raise CollapsekitError(f"{run_dir} and {seen[key]} are both task {task!r}, method {method!r}, seed {seed}; "
                                   "give each (method, seed) once")
        seen[key] = run_dir
        metrics = read_run_metrics(run_dir)
        if not metrics:
            raise CollapsekitError(f"{run_dir} holds no finished generation (no gen_0/done)")
        for g, m in enumerate(metrics):
            for k, v in sorted(m.items()):
                if isinstance(v, (int, float)):
                    rows.append({"task": task, "method": method, "seed": seed, "generation": g, "metric": k,
                                 "value": float(v) if math.isfinite(v) else None})
        for k, v in declared_directions(_task_class(class_path)).items():
            directions.setdefault(k, v)
        headline[task] = list(_task_attr(class_path, "headline", ()) or ())
        declared = declared_directions(_task_class(class_path))
        entry = tasks.setdefault(task, {"class_path": class_path, "methods": [], "seeds": [],
                                        "metrics": sorted(declared), "directions": declared})
        entry["methods"] = list(dict.fromkeys([*entry["methods"], method]))
        entry["seeds"] = sorted({*entry["seeds"], seed})
    metric_meta = {r["metric"]: {"higher_is_better": directions.get(r["metric"])} for r in rows}
    return {"meta": {"preset": "runs", "seeds": sorted({k[2] for k in seen}), "tasks": tasks, "headline": headline},
            "metrics": metric_meta, "rows": rows}


def write_results(out: Path, results: Mapping) -> Path:
    """Write ``results.json`` atomically (strict JSON, no NaN)."""
    path = out / "results.json"
    atomic_write_bytes(path, json.dumps(results, indent=1, allow_nan=False).encode())
    return path


def report(run_dir: str | Path, *more: str | Path, out: str | Path | None = None) -> list[Path]:
    """Redraw the plots of a run directory, or re-render a bench directory; return the files written.

    With several run directories (``report(a, b, c, out=DIR)``), compare them as bench cells
    (:func:`runs_results`): ``DIR/RESULTS.md`` with the same paired-by-seed statistics as a bench,
    ``DIR/results.json`` and ``DIR/plots/<task>.png`` (``DIR`` defaults to ``compare`` in the current folder).
    """
    if more:
        results = runs_results([run_dir, *more])
        target = Path(out or "compare")
        target.mkdir(parents=True, exist_ok=True)
        written = [write_results(target, results)]
        return [*render_bench(target), *written]
    path = Path(run_dir)
    if (path / "results.json").is_file():
        return render_bench(path)
    if (path / "gen_0").is_dir():
        return plot_run(path) + plot_sample_grids(path) + sample_texts(path)
    raise CollapsekitError(f"{path} is neither a run directory (gen_0/) nor a bench directory (results.json); "
                           "pass runs/<name> or the --out folder of `collapsekit bench`")
