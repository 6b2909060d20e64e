"""The state of one generational run: its config, directory, seeds and finished generations.

Run directory layout (``<root>/<name>/``)::

    config.yaml            resolved config of the run (written at start)
    gen_<k>/model/         trained model of generation k (``Task.save_model``): ``save_pretrained``
                           of the library for library models (transformers, diffusers; with the tokenizer
                           for language tasks), ``model.safetensors`` of the state_dict otherwise
    gen_<k>/samples.*      person-readable samples (``Task.write_samples``: samples.jsonl, samples.png)
    gen_<k>/pool/*.npy     filtered synthetic pool of generation k, with lineage
    gen_<k>/train_lineage/ lineage of the pool generation k trained on
    gen_<k>/plugins/       files plugins saved (``Run.save_file``)
    gen_<k>/metrics.json   flat {metric: number}
    gen_<k>/manifest.json  SHA-256 of every file above
    gen_<k>/done           written last; a generation without it is redone
    gen_<k>/checkpoints/   step checkpoints of a generation in progress (``run.checkpoint_every``,
                           preemption); it resumes from the newest, and they are deleted after ``done``
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
import yaml

from .distributed import process_rank
from .errors import ConfigError, RunStateError
from .fileio import atomic_write_bytes, atomic_write_json, sha256_file
from .pool import Pool, PoolHistory
from .seeds import numpy_rng, torch_generator
from .threads import resolve_threads

INIT_MODES = ("scratch", "previous", "base")
PLUGIN_FILES = "plugins/"
"""Folder of a generation that holds the files plugins save through :meth:`Run.save_file`."""


@dataclass
class RunConfig:
    """The ``run:`` section of a config.

    Args:
        name: run name; files go to ``<root>/<name>/``.
        root: folder holding all runs.
        generations: number of models trained (generation 0 trains on real data).
        seed: run seed; every random draw derives from ``(seed, generation, role)``.
        init: weights each generation starts from: ``scratch`` (fresh init),
            ``previous`` (fine-tune the last generation) or ``base`` (generation 0's weights).
        plugins: plugins to activate: short names or ``{class_path, init_args}``.
        samples_per_generation: synthetic items per generation (default: size of the real pool).
        overwrite: start over when ``<root>/<name>`` holds a run made by another config.
        checkpoint_every: save a step checkpoint every this many optimizer steps inside each
            generation, into ``gen_<k>/checkpoints/`` (``None``: none; the files are deleted once the
            generation is done). A re-run continues an unfinished generation from its newest checkpoint
            with the numbers of an uninterrupted run. Independently of it, ``SIGTERM``/``SIGUSR1``
            during training save a checkpoint at the end of the current step and stop the run
            (exit status 75); it may be changed between a run and its resumption.
        threads: torch intra-op threads of the run (``None``: ``$OMP_NUM_THREADS`` when set, else 1; see
            :mod:`collapsekit.threads`). The count changes floating-point rounding, so it is fixed, never
            taken from the machine's cores or load. It may be changed between a run and its resumption
            (e.g. a preempted job resumed on another machine); the generations trained after the change
            then differ from an uninterrupted run's in the last digits.
    """

    name: str = "quickstart"
    root: str = "runs"
    generations: int = 3
    seed: int = 0
    init: Literal["scratch", "previous", "base"] = "scratch"
    plugins: list[Union[str, dict[str, Any]]] = field(default_factory=list)
    samples_per_generation: int | None = None
    overwrite: bool = False
    checkpoint_every: int | None = None
    threads: int | None = None

    def plugin_names(self) -> list[str]:
        """Names of the listed plugins, as written in the config."""
        return [p if isinstance(p, str) else str(p.get("class_path")) for p in self.plugins]

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"run.name must be a non-empty folder name, got {self.name!r}")
        if not isinstance(self.generations, int) or self.generations < 1:
            raise ConfigError(f"run.generations must be an integer >= 1, got {self.generations!r}")
        if self.init not in INIT_MODES:
            raise ConfigError(f"run.init must be one of {INIT_MODES}, got {self.init!r}")
        if self.samples_per_generation is not None and self.samples_per_generation < 1:
            raise ConfigError(f"run.samples_per_generation must be >= 1, got {self.samples_per_generation}")
        if self.checkpoint_every is not None and (isinstance(self.checkpoint_every, bool)
                                                  or not isinstance(self.checkpoint_every, int)
                                                  or self.checkpoint_every < 1):
            raise ConfigError(f"run.checkpoint_every must be a number of steps >= 1 (or null), "
                              f"got {self.checkpoint_every!r}")
        resolve_threads(self.threads)


# config keys that may change between a run and its resumption
RESUMABLE_KEYS = ("run.generations", "run.overwrite", "run.root", "run.checkpoint_every", "run.threads",
                  "trainer.enable_progress_bar",
                  "trainer.enable_model_summary", "trainer.logger", "trainer.callbacks")


def finished_generations(run_dir: str | Path) -> int:
    """Number of leading generations of ``run_dir`` that are complete (``gen_<k>/done`` present)."""
    k = 0
    while (Path(run_dir) / f"gen_{k}" / "done").is_file():
        k += 1
    return k


def read_metrics(run_dir: str | Path, generation: int) -> dict[str, float]:
    """``gen_<generation>/metrics.json`` of ``run_dir``."""
    return json.loads((Path(run_dir) / f"gen_{generation}" / "metrics.json").read_text())


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and not ("class_path" in v and prefix.endswith("plugins")):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


@dataclass(frozen=True)
class SynthesisRequest:
    """What one ``synthesize`` call must make: ``size`` items, items ``start:start+size`` of the
    generation's ``total``, drawing randomness from ``generator`` (seeded per ``shard``)."""

    shard: int
    start: int
    size: int
    total: int
    generator: torch.Generator

    @property
    def slice(self) -> slice:
        """The items of the generation's pool this shard makes."""
        return slice(self.start, self.start + self.size)


class Run:
    """Paths, seeds, files and finished-generation bookkeeping of one run.

    Read-only once generation 0 starts (:meth:`freeze`): plugins keep their own state.
    """

    def __init__(self, config: RunConfig, task: Any, hooks: Any = None, config_dict: dict | None = None) -> None:
        config.validate()
        self.config = config
        self.task = task
        self.hooks = hooks
        self.config_dict = config_dict if config_dict is not None else {"run": asdict(config)}
        self.dir = Path(config.root) / config.name
        self.requirements: frozenset[str] = frozenset()
        """Union of the active plugins' requirements (set when the run starts)."""
        self.samples_per_generation = config.samples_per_generation or 0
        """Synthetic items a generation adds to the pool history at most (set when the run starts: default
        the real pool's size)."""
        self.synthesis_total = self.samples_per_generation
        """Items a generation synthesizes before filtering: ``samples_per_generation`` times the largest
        ``oversample`` factor of the active filters, rounded up (set when the run starts)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise RunStateError(f"run.{name} cannot be set: the run is read-only once generation 0 starts; "
                                "keep per-run state in the plugin object itself")
        super().__setattr__(name, value)

    def freeze(self) -> None:
        """Make the run read-only (the engine calls it before generation 0)."""
        self._frozen = True

    # -- convenience for plugins ----------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def generations(self) -> int:
        return self.config.generations

    def torch_generator(self, generation: int, role: str) -> torch.Generator:
        """CPU generator seeded from ``(run seed, generation, role)``."""
        return torch_generator(self.seed, generation, role)

    def synthesis_request(self, generation: int, shard: int, start: int, size: int) -> SynthesisRequest:
        """The request of shard ``shard`` of ``generation``; its generator is seeded by
        ``(seed, generation, "synthesize/shard<shard>")``."""
        return SynthesisRequest(shard, start, size, self.synthesis_total,
                                torch_generator(self.seed, generation, f"synthesize/shard{shard}"))

    def rng(self, generation: int, role: str) -> np.random.Generator:
        """NumPy generator seeded from ``(run seed, generation, role)``."""
        return numpy_rng(self.seed, generation, role)

    # -- directories ----------------------------------------------------------
    def gen_dir(self, generation: int) -> Path:
        return self.dir / f"gen_{generation}"

    def finished(self) -> int:
        """Number of leading generations that are complete (``done`` present)."""
        return finished_generations(self.dir)

    def synthetic(self, generation: int) -> Pool:
        """The filtered synthetic pool written by ``generation`` (memory-mapped)."""
        return Pool.load(self.gen_dir(generation) / "pool")

    def model_of(self, generation: int) -> torch.nn.Module:
        """The trained model of ``generation`` (saved before its synthesis), in eval mode, without grad."""
        return self.task.load_model(self.gen_dir(generation)).eval().requires_grad_(False)

    def history(self, generation: int) -> PoolHistory:
        """Synthetic pools of generations ``0 .. generation-1``."""
        return PoolHistory(lambda g: self.gen_dir(g) / "pool", generation)

    def metrics_of(self, generation: int) -> dict[str, float]:
        return read_metrics(self.dir, generation)

    # -- plugin files -------------------------------------------------------------
    def save_file(self, generation: int, name: str, data: bytes) -> None:
        """Write a plugin's file ``gen_<generation>/plugins/<name>`` atomically (lead process only).

        Files are listed with their checksums in the generation's manifest and verified when a
        resumed run or :meth:`read_file` reads them back.
        """
        path = self._plugin_path(generation, name)
        if self.is_lead:
            atomic_write_bytes(path, data)

    def read_file(self, generation: int, name: str) -> bytes:
        """The bytes of a file written by :meth:`save_file`; for a finished generation they are checked
        against its manifest (a mismatch raises ``RunStateError`` naming the file and the fix)."""
        path = self._plugin_path(generation, name)
        if (self.gen_dir(generation) / "done").is_file():
            self.verify(generation, [PLUGIN_FILES + name])
        if not path.is_file():
            raise RunStateError(f"{path} is missing; delete {self.gen_dir(generation)} and the generations "
                                "after it, then re-run the same command to redo them")
        return path.read_bytes()

    def _plugin_path(self, generation: int, name: str) -> Path:
        if not name or name.startswith(("/", ".")) or ".." in Path(name).parts:
            raise ValueError(f"plugin file name {name!r} must be a relative path inside the generation")
        return self.gen_dir(generation) / PLUGIN_FILES / name

    def plugin_files(self, generation: int) -> list[str]:
        """Paths (relative to the generation folder) of every plugin file of ``generation``."""
        root = self.gen_dir(generation) / PLUGIN_FILES
        return sorted(p.relative_to(self.gen_dir(generation)).as_posix() for p in root.rglob("*") if p.is_file()) \
            if root.is_dir() else []

    # -- start-up checks --------------------------------------------------------
    def prepare_directory(self) -> None:
        """Create the run directory, or check that an existing one was made by the same config.

        Another config is refused unless ``run.overwrite`` (then everything but the lock is deleted);
        a start that finished no generation and saved no step checkpoint is simply started over.
        The caller holds the directory's lock (:mod:`collapsekit.runlock`).
        """
        saved = self.dir / "config.yaml"
        if saved.is_file():
            try:
                old = yaml.safe_load(saved.read_text()) or {}
            except yaml.YAMLError:
                old = {}
            diff = config_differences(old, self.config_dict)
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:8])
            started = self.finished() > 0 or any(self.dir.glob("gen_*/checkpoints/latest.json"))
            if diff and started and not self.config.overwrite:
                raise RunStateError(
                    f"run directory {self.dir} was made by a different config ({shown}). "
                    f"Use a new run.name, or pass --run.overwrite true to delete it and start over.")
            if diff and self.is_lead:
                if not started and not self.config.overwrite:
                    print(f"collapsekit: note: {self.dir} held a start of another config that finished no "
                          f"generation ({shown}); starting over", file=sys.stderr, flush=True)
                clear_directory(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.is_lead:
            atomic_write_bytes(saved, yaml.safe_dump(self.config_dict, sort_keys=True).encode())

    @property
    def is_lead(self) -> bool:
        """True in the process that writes run files (global rank 0)."""
        return process_rank() == 0

    def verify(self, generation: int, only: list[str] | None = None) -> None:
        """Check a finished generation's files (or ``only`` these) against its manifest; raise naming
        the bad file."""
        gen_dir = self.gen_dir(generation)
        manifest_path = gen_dir / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            raise RunStateError(f"{manifest_path} is missing or unreadable although {gen_dir}/done exists; "
                                f"delete {gen_dir} (and later generations) to redo it") from None
        for rel in (manifest if only is None else only):
            path = gen_dir / rel
            if rel not in manifest or not path.is_file() or sha256_file(path) != manifest[rel]:
                state = ("not in the manifest" if rel not in manifest else "missing" if not path.is_file()
                         else "corrupted (checksum mismatch)")
                raise RunStateError(
                    f"{path} is {state}. Delete {gen_dir} and the generations after it, then re-run the "
                    f"same command to redo them.")

    def write_manifest(self, generation: int, files: list[str]) -> None:
        gen_dir = self.gen_dir(generation)
        atomic_write_json(gen_dir / "manifest.json", {f: sha256_file(gen_dir / f) for f in sorted(files)})


def clear_directory(run_dir: Path) -> None:
    """Delete everything in ``run_dir`` except its lock file (held by this process)."""
    from .runlock import LOCK_FILE

    for entry in Path(run_dir).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def config_differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every flattened key that differs, except :data:`RESUMABLE_KEYS`."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)]
