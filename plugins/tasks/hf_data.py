"""Offline loading of what ``hf-lm`` takes from the Hugging Face libraries: models, tokenizers and
``datasets`` corpora by local path or local cache only (never a download), plus the byte-level
tokenizer of the CPU presets and the packing of token streams into blocks."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from collapsekit.errors import ConfigError

HOW_TO_PROVIDE = ("collapsekit never downloads: pre-download it once on a machine with network "
                  "(`hf download {name}` puts it in the Hugging Face cache, where it is then found by id) or "
                  "save it to a directory (`.save_pretrained(dir)`) and give that directory")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_hf(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    """``loader(name, local_files_only=True, **kwargs)``; a missing or unreadable ``name`` is one ConfigError."""
    quiet_transformers()
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if Path(str(name)).expanduser().is_dir():
            raise ConfigError(f"hf-lm: cannot load the {what} {name!r}: the directory has no loadable {what} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        if str(name).startswith(("/", ".", "~")) or str(name).count("/") > 1:
            raise ConfigError(f"hf-lm: cannot load the {what} {name!r}: no such directory") from None
        raise ConfigError(f"hf-lm: cannot load the {what} {name!r}: it is not a local directory and not in the "
                          f"local Hugging Face cache; {HOW_TO_PROVIDE.format(name=name)}") from None


@contextlib.contextmanager
def datasets_offline() -> Iterator[Any]:
    """``datasets`` with Hub access switched off (no implicit network) and no progress bars."""
    import datasets

    flags = [f for f in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(datasets.config, f)]  # new, old name
    saved = {f: getattr(datasets.config, f) for f in flags}
    for flag in flags:
        setattr(datasets.config, flag, True)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        for flag, value in saved.items():
            setattr(datasets.config, flag, value)
        if bars:
            datasets.enable_progress_bars()


def load_records(spec: Mapping[str, Any], what: str) -> Any:
    """The ``datasets.Dataset`` of ``load_dataset(**spec)`` (its ``train`` split, or its only one, when
    ``spec`` names no split); anything unavailable offline is one ConfigError naming ``what``."""
    if not isinstance(spec, Mapping) or "path" not in spec:
        raise ConfigError(f"hf-lm: {what} must be a dict of datasets.load_dataset arguments with at least "
                          f"'path' (e.g. {{path: json, data_files: corpus.jsonl}}), got {spec!r}")
    with datasets_offline() as datasets:
        try:
            loaded = datasets.load_dataset(**dict(spec))
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; each becomes one message
            raise ConfigError(
                f"hf-lm: cannot load {what} {dict(spec)} offline ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}). collapsekit never downloads: give local files (e.g. "
                f"{{path: json, data_files: corpus.jsonl}}), or load the dataset once on a machine with network "
                f"(datasets.load_dataset(...) fills the datasets cache, where it is then found)") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded or len(loaded) == 1:
            return loaded["train" if "train" in loaded else next(iter(loaded))]
        raise ConfigError(f"hf-lm: {what} {dict(spec)} has splits {list(loaded)}; choose one with split: <name>")
    return loaded


def column(records: Any, key: str, what: str, option: str) -> list[str]:
    """The string column ``key`` of ``records``; a missing key names the available columns."""
    if key not in records.column_names:
        raise ConfigError(f"hf-lm: {what} has no column {key!r} (set {option}); its columns are "
                          f"{records.column_names}")
    return ["" if v is None else str(v) for v in records[key]]


# -- byte-level tokenizer -------------------------------------------------------------
def _byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ``ByteLevel`` pre-tokenizers use)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(keep, map(chr, keep))), 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` whose ids 0..255 are the UTF-8 bytes and 256 is ``<bos>`` (also EOS, pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = _byte_chars()
    backend = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<bos>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<bos>",
                                   pad_token="<bos>")


# -- data helpers -------------------------------------------------------------------
def pack_blocks(ids: np.ndarray, block_size: int) -> np.ndarray:
    """Non-overlapping ``block_size`` windows of the token stream ``ids`` [n, block_size] (remainder dropped)."""
    n = len(ids) // block_size
    return np.asarray(ids[: n * block_size], dtype=np.int64).reshape(n, block_size)


def carve(n: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held-out)`` sorted indices of ``n`` documents: ``round(share * n)`` held out by a fixed permutation."""
    k = int(round(share * n))
    if not 0 < share < 1 or not 1 <= k < n:
        raise ConfigError(f"hf-lm: heldout={share} of {n} documents leaves no held-out or no training document; "
                          f"give a share in (0, 1) that holds out at least one of them, or heldout as a dataset")
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])
