"""Models, tokenizers and datasets from a local path, the Hugging Face cache or the Hub.

What ``transformers`` and ``datasets`` do by default (a local path; else the local cache, refreshed
from the Hub when it can be reached, or downloaded), with two differences:

* the Hub endpoint is checked once per process with one request (timeout ``HF_HUB_ETAG_TIMEOUT``,
  10 s by default) before anything is fetched by name; when it does not answer, or
  ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, the libraries are
  asked for their local cache only, so an unreachable Hub costs one timeout instead of the
  libraries' retries (about 40 s per file on a refused connection, minutes on a silent one);
* whatever cannot be had becomes one :class:`~collapsekit.errors.ConfigError` naming it, why, and
  how to provide it locally; a local data file that cannot be read is named with the line at fault.

Local data (a packaged builder such as ``json`` or ``imagefolder`` on local files, or a local
folder) never touches the network and shows no progress bars.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from collapsekit.errors import ConfigError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TEXT_BUILDERS = ("json", "csv", "text")
"""Packaged ``datasets`` builders whose local files :func:`file_problem` can check line by line."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


# -- the Hub ----------------------------------------------------------------------------------------
def endpoint() -> str:
    """The Hub endpoint in use (``HF_ENDPOINT``, read by ``huggingface_hub`` at import)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_reason() -> str | None:
    """Why nothing may be fetched from the Hub in this process (an offline variable that is set, or an
    endpoint that does not answer), or ``None`` when it may."""
    from huggingface_hub import constants

    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={os.environ[name]} is set"
    if constants.HF_HUB_OFFLINE:
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE)"
    return _unreachable(constants.ENDPOINT, float(constants.HF_HUB_ETAG_TIMEOUT))


@functools.lru_cache(maxsize=8)
def _unreachable(url: str, timeout: float) -> str | None:
    """One HEAD request to ``url`` (any HTTP answer means reachable); the reason when there is none."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(url, timeout=timeout, follow_redirects=False)
    except Exception as exc:  # noqa: BLE001 - any transport failure means "not reachable"
        reason = str(exc).strip() or type(exc).__name__
        if "timeout" in type(exc).__name__.lower() or "timed out" in reason.lower():
            reason = f"no answer within {timeout:g} s (HF_HUB_ETAG_TIMEOUT)"
        return f"the Hub endpoint {url} could not be reached ({reason})"
    return None


def is_local(name: str) -> bool:
    """True when ``name`` is an existing local path (then nothing is fetched)."""
    return Path(str(name)).expanduser().exists()


def looks_like_path(name: str) -> bool:
    """True for names that can only mean a local path (``/x``, ``./x``, ``~/x``, ``a/b/c``)."""
    return str(name).startswith(("/", ".", "~")) or str(name).count("/") > 1


@contextlib.contextmanager
def _hub_progress(show: bool) -> Iterator[None]:
    """``huggingface_hub`` download bars on (for a real download) or off, restored afterwards."""
    from huggingface_hub import utils

    before = not utils.are_progress_bars_disabled()
    (utils.enable_progress_bars if show else utils.disable_progress_bars)()
    try:
        yield
    finally:
        (utils.enable_progress_bars if before else utils.disable_progress_bars)()


def load_pretrained(loader: Callable[..., Any], name: str, what: str, owner: str, **kwargs: Any) -> Any:
    """``loader(name, **kwargs)`` (a ``from_pretrained``) from a local directory, the cache or the Hub.

    Raises one ConfigError (prefixed ``owner:``) naming ``what`` when it cannot be loaded.
    """
    fetch = not is_local(name) and not looks_like_path(name)       # a Hub id
    offline = offline_reason() if fetch else None
    try:
        with _hub_progress(fetch and offline is None):
            return loader(name, local_files_only=not fetch or offline is not None, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(pretrained_error(name, what, owner, exc, offline)) from None


def pretrained_error(name: str, what: str, owner: str, exc: BaseException, offline: str | None) -> str:
    """The one-line message of a failed ``from_pretrained`` of ``name``."""
    head = f"{owner}: cannot load the {what} {name!r}"
    provide = (f"download it once where the network is allowed (`hf download {name}` fills the Hugging Face "
               f"cache, where it is then found by id) or give a directory written by `save_pretrained`")
    if Path(str(name)).expanduser().is_dir():
        return f"{head}: the directory has no loadable {what} ({_first_line(exc)})"
    if looks_like_path(name):
        return f"{head}: no such directory"
    if offline is not None:
        return f"{head}: {offline} and it is not in the local Hugging Face cache; {provide}"
    return (f"{head} from {endpoint()} ({_first_line(exc)}); check the id (a gated or private model needs "
            f"`hf auth login`), or {provide}")


# -- datasets -------------------------------------------------------------------------------------------
def is_local_source(spec: Mapping[str, Any]) -> bool:
    """True when ``load_dataset(**spec)`` reads local files only: a local ``path``, or a packaged
    builder (``json``, ``imagefolder``, ...) whose ``data_files`` / ``data_dir`` are local."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    path = str(spec.get("path", ""))
    if is_local(path):
        return True
    if path not in _PACKAGED_DATASETS_MODULES:
        return False
    sources = [str(spec.get("data_dir") or "")] + [str(f) for f in _listed(spec.get("data_files"))]
    return not any("://" in s for s in sources)


def _listed(files: Any) -> list:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [files]
    if isinstance(files, Mapping):
        return [f for v in files.values() for f in _listed(v)]
    return [f for v in files for f in _listed(v)]


@contextlib.contextmanager
def datasets_mode(offline: bool, bars: bool) -> Iterator[Any]:
    """``datasets`` with its Hub access switched off (``offline``) and its progress bars and info logs
    off (unless ``bars``); everything is restored afterwards."""
    import datasets
    from huggingface_hub import constants

    flags = [f for f in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(datasets.config, f)]
    saved = {f: getattr(datasets.config, f) for f in flags}
    hub_offline = constants.HF_HUB_OFFLINE
    shown = datasets.utils.logging.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    if offline:
        for flag in flags:
            setattr(datasets.config, flag, True)
        constants.HF_HUB_OFFLINE = True
    if not bars:
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)     # its own "Failed to load JSON" line
    try:
        yield datasets
    finally:
        for flag, value in saved.items():
            setattr(datasets.config, flag, value)
        constants.HF_HUB_OFFLINE = hub_offline
        (datasets.enable_progress_bars if shown else datasets.disable_progress_bars)()
        datasets.logging.set_verbosity(verbosity)


def load_dataset(spec: Mapping[str, Any], what: str, owner: str) -> Any:
    """The ``datasets.Dataset`` of ``load_dataset(**spec)``: the ``split`` named in ``spec``, else its
    ``train`` split or its only one. Every failure is one ConfigError (prefixed ``owner:``) naming
    ``what``, the cause and the fix; a bad local file is named with its line."""
    if not isinstance(spec, Mapping) or "path" not in spec:
        raise ConfigError(f"{owner}: {what} must be a dict of datasets.load_dataset arguments with at least "
                          f"'path' (e.g. {{path: json, data_files: corpus.jsonl}}), got {spec!r}")
    spec = dict(spec)
    local = is_local_source(spec)
    offline = None if local else offline_reason()
    with datasets_mode(offline is not None, bars=not local) as datasets:
        try:
            loaded = datasets.load_dataset(**spec)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; each becomes one message
            raise ConfigError(dataset_error(spec, what, owner, exc, local, offline)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded or len(loaded) == 1:
            return loaded["train" if "train" in loaded else next(iter(loaded))]
        raise ConfigError(f"{owner}: {what} {spec} has splits {list(loaded)}; choose one with split: <name>")
    return loaded


def dataset_error(spec: Mapping[str, Any], what: str, owner: str, exc: BaseException, local: bool,
                  offline: str | None) -> str:
    """The one-line message of a failed ``load_dataset(**spec)``."""
    head = f"{owner}: cannot load {what} {dict(spec)}"
    if local:
        problem = file_problem(spec)
        if problem is not None:
            return f"{owner}: {what}: {problem}"
        return f"{head} ({_first_line(exc)})"
    provide = ("load it once where the network is allowed (datasets.load_dataset(...) fills the datasets cache, "
               "where it is then found) or give local files, e.g. {path: json, data_files: corpus.jsonl}")
    if offline is not None:
        return f"{head}: {offline} and it is not in the local datasets cache; {provide}"
    return f"{head} from {endpoint()} ({_first_line(exc)}); check the name and arguments, or {provide}"


# -- local files ------------------------------------------------------------------------------------------
def local_files(spec: Mapping[str, Any]) -> list[Path]:
    """The local files ``load_dataset(**spec)`` reads: ``data_files`` (globs expanded, relative to
    ``data_dir``) or every file under ``data_dir`` / a local ``path`` folder."""
    base = Path(str(spec.get("data_dir") or ".")).expanduser()
    listed = _listed(spec.get("data_files"))
    if listed:
        found: list[Path] = []
        for pattern in listed:
            full = Path(str(pattern)).expanduser()
            full = full if full.is_absolute() else base / full
            matches = sorted(glob.glob(str(full), recursive=True))
            found += [Path(m) for m in matches] if matches else [full]
        return found
    folder = Path(str(spec.get("data_dir") or spec.get("path") or "")).expanduser()
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def file_problem(spec: Mapping[str, Any]) -> str | None:
    """What is wrong with the local files of ``spec`` (a missing file, text that is not UTF-8, a line
    that is not JSON for the ``json`` builder, only empty files), naming the file and line; ``None``
    when nothing is found."""
    files = local_files(spec)
    builder = str(spec.get("path", ""))
    folder = Path(str(spec.get("data_dir") or spec.get("path") or "")).expanduser()
    if not files and folder.is_dir():
        return f"the folder {folder} holds no files (empty folder?); point it at a folder of data files"
    for path in files:
        if not path.is_file():
            return f"{path} does not exist"
    if builder not in TEXT_BUILDERS:
        return None
    for path in files:
        problem = text_file_problem(path, json_lines=builder == "json")
        if problem is not None:
            return problem
    if files and all(path.stat().st_size < 1 << 20 and not path.read_bytes().strip() for path in files):
        shown = str(files[0]) + (f" (and {len(files) - 1} more)" if len(files) > 1 else "")
        return f"{shown} holds no records (empty or only whitespace); give a file with at least one record"
    return None


def text_file_problem(path: Path, json_lines: bool) -> str | None:
    """The first line of ``path`` that is not UTF-8 (or, with ``json_lines``, not a JSON value), read
    line by line; a file that starts with ``[`` is checked as one JSON document."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
        if json_lines and head.startswith(b"["):
            try:
                json.loads(Path(path).read_bytes().decode("utf-8"))
            except UnicodeDecodeError as exc:
                return _not_utf8(path, exc, None)
            except ValueError as exc:
                return f"{path} is not valid JSON ({exc})"
            return None
        fh.seek(0)
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _not_utf8(path, exc, number)
            if json_lines and line.strip():
                try:
                    json.loads(line)
                except ValueError as exc:
                    return (f"{path} line {number} is not valid JSON ({exc.args[0].split(':')[0]}, column "
                            f"{getattr(exc, 'colno', '?')}); JSON Lines hold one JSON object per line")
    return None


def _not_utf8(path: Path, exc: UnicodeDecodeError, line: int | None) -> str:
    byte = exc.object[exc.start:exc.start + 1].hex()
    where = f" (byte 0x{byte} on line {line})" if line is not None else f" (byte 0x{byte})"
    return (f"{path} is not UTF-8 text{where}; re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8 "
            f"{path.name} > utf8-{path.name}`")
