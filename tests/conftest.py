"""Shared fixtures: tiny real configs that run a real Lightning Trainer in about a second."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import site
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import pytest
import torch
import yaml

torch.set_num_threads(1)
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")

TINY_TASK = {
    "class_path": "collapsekit.plugins.tasks.markov_text.MarkovText",
    "init_args": {"vocab_size": 16, "seq_len": 16, "train_size": 64, "heldout_size": 32,
                  "n_layer": 1, "n_embd": 16, "n_head": 2, "batch_size": 16},
}


def tiny_config(root: Path, name: str = "tiny", generations: int = 2, plugins=None, max_steps: int = 8,
                **run) -> dict:
    """A complete config dict (run/task/trainer) for a run of a few seconds."""
    return {
        "run": {"name": name, "root": str(root), "generations": generations, "seed": 0,
                "plugins": list(plugins or []), **run},
        "task": {"class_path": TINY_TASK["class_path"], "init_args": dict(TINY_TASK["init_args"])},
        "trainer": {"max_steps": max_steps, "accelerator": "cpu", "enable_progress_bar": False,
                    "log_every_n_steps": 1},
    }


@pytest.fixture(scope="session")
def tiny_config_fn():
    """:func:`tiny_config` itself, for fixtures wider than one test."""
    return tiny_config


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict to a YAML file and return its path."""

    def write(config: dict, filename: str = "config.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture
def tiny_task():
    from collapsekit.plugins.tasks.markov_text import MarkovText

    return MarkovText(**TINY_TASK["init_args"])


@pytest.fixture
def make_config(tmp_path):
    """``make_config(**kw)``: :func:`tiny_config` rooted in this test's ``tmp_path / "runs"``."""

    def make(**kwargs) -> dict:
        return tiny_config(tmp_path / "runs", **kwargs)

    return make


@pytest.fixture
def cli(capsys):
    """Call ``collapsekit.cli.main(argv)`` in-process; return ``(exit code, stdout, stderr)``."""
    from collapsekit.cli import main

    def call(*argv: str):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


# -- installing real distributions in tests (pip_tools fixture) ---------------------------------------
def _project_name(path: Path) -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    data = tomllib.loads((Path(path) / "pyproject.toml").read_text())
    return data["project"]["name"]


def installed_editable_at(dist_name: str) -> Path | None:
    """The source folder of ``dist_name`` when it is installed editable, else ``None``."""
    try:
        dist = importlib.metadata.distribution(dist_name)
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = info.get("url", "")
    return Path(url[len("file://"):]).resolve() if url.startswith("file://") else None


def activate_distribution(dist_name: str) -> None:
    """Make a distribution installed during this process importable here (process its ``.pth`` files)."""
    importlib.invalidate_caches()
    dist = importlib.metadata.distribution(dist_name)
    for file in dist.files or []:
        if file.suffix == ".pth":
            pth = Path(dist.locate_file(file))
            site.addpackage(str(pth.parent), pth.name, set(sys.path))
    importlib.invalidate_caches()


def _entry_points_differ(path: Path, dist_name: str) -> bool:
    """Whether the installed ``dist_name`` declares other entry points than ``path``'s pyproject (stale install)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    declared = tomllib.loads((path / "pyproject.toml").read_text())["project"].get("entry-points", {})
    wanted = {(group, name) for group, eps in declared.items() for name in eps}
    installed = {(ep.group, ep.name) for ep in importlib.metadata.distribution(dist_name).entry_points}
    return wanted != installed


def pip_install_editable(path: str | Path) -> str:
    """``pip install --no-deps --no-build-isolation -e path`` and activate it here; return the distribution name.

    Skipped when it is already installed editable from ``path`` with the entry points ``path`` declares."""
    path = Path(path).resolve()
    name = _project_name(path)
    if installed_editable_at(name) != path or _entry_points_differ(path, name):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                               "--disable-pip-version-check", "-e", str(path)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"pip install -e {path} failed:\n{proc.stdout}\n{proc.stderr}")
    activate_distribution(name)
    return name


def pip_uninstall(dist_name: str, packages: Iterable[str] = ()) -> None:
    """``pip uninstall -y dist_name``; forget ``packages`` (and their submodules) in ``sys.modules``."""
    proc = subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "--disable-pip-version-check",
                           dist_name], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pip uninstall {dist_name} failed:\n{proc.stdout}\n{proc.stderr}")
    for pkg in packages:
        for mod in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
            del sys.modules[mod]
    importlib.invalidate_caches()


@pytest.fixture(scope="session")
def pip_tools():
    """``pip_tools.install(path) -> dist``, ``pip_tools.uninstall(dist, packages)``,
    ``pip_tools.editable_at(dist) -> Path | None``: real pip installs of test distributions."""
    return SimpleNamespace(install=pip_install_editable, uninstall=pip_uninstall, editable_at=installed_editable_at)


PLUGIN_DIST = Path(__file__).parent / "plugin_dist"
PLUGIN_DIST_NAME = "collapsekit-testplugin"


@pytest.fixture(scope="session")
def testplugin_installed(pip_tools):
    """Install tests/plugin_dist editable (no-op when already installed from there); uninstall if we installed it."""
    was_installed = pip_tools.editable_at(PLUGIN_DIST_NAME) == PLUGIN_DIST.resolve()
    name = pip_tools.install(PLUGIN_DIST)
    yield name
    if not was_installed:
        pip_tools.uninstall(name, ["collapsekit_testplugin"])


def kill_at(command: list[str], marker: Path, env: dict, timeout: float = 240) -> bool:
    """Start ``command``, SIGKILL it as soon as ``marker`` exists; return True when the process was
    still running at that moment (the kill landed where the test meant it to)."""
    import signal
    import time

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    alive = proc.poll() is None and marker.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


@pytest.fixture(scope="session")
def sigkill_at():
    """``sigkill_at(command, marker, env) -> bool``: :func:`kill_at` (a real SIGKILL at a file marker)."""
    return kill_at


def run_gloo_processes(worker, world: int, *args, timeout: float = 60) -> list:
    """Start ``world`` spawned processes running ``worker(rank, world, port, queue, *args)`` (a free local
    port for a gloo ``init_process_group``); return the ``world`` items they put in ``queue``."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(worker, args=(world, port, queue, *args), nprocs=world, join=True, start_method="spawn")
    return [queue.get(timeout=timeout) for _ in range(world)]


@pytest.fixture(scope="session")
def gloo_processes():
    """:func:`run_gloo_processes`: a function run in real spawned processes joined by a gloo process group."""
    return run_gloo_processes


@pytest.fixture
def file_size_limit():
    """``with file_size_limit(n):`` files of this process cannot grow past ``n`` bytes (``RLIMIT_FSIZE``;
    writes fail with a real ``OSError`` EFBIG, as on a full disk with ENOSPC); restored afterwards."""
    import contextlib
    import resource
    import signal

    @contextlib.contextmanager
    def limit(n: int):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    return limit
