"""What ``hf-lm`` takes from the Hugging Face libraries: models, tokenizers and ``datasets`` corpora
(a local path, the local cache or the Hub: :mod:`collapsekit.plugins.tasks.hub`), plus the tokenizers
of from-scratch models (byte-level, and one word per id) and the packing of token streams into blocks."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from collapsekit.errors import ConfigError
from collapsekit.plugins.tasks import hub


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_hf(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    """``loader(name, **kwargs)`` (a ``from_pretrained``) from a directory, the cache or the Hub; anything
    that cannot be loaded is one ConfigError (:func:`collapsekit.plugins.tasks.hub.load_pretrained`)."""
    quiet_transformers()
    return hub.load_pretrained(loader, name, what, "hf-lm", **kwargs)


def load_records(spec: Mapping[str, Any], what: str) -> Any:
    """The ``datasets.Dataset`` of ``load_dataset(**spec)`` (its ``split``, else its ``train`` split or its
    only one); anything that cannot be loaded is one ConfigError naming ``what``."""
    return hub.load_dataset(spec, what, "hf-lm")


def column(records: Any, key: str, what: str, option: str, spec: Mapping[str, Any] | None = None) -> list[str]:
    """The string column ``key`` of ``records`` (loaded from ``spec``); a missing key names the available
    columns, text that is not UTF-8 names the file at fault."""
    if key not in records.column_names:
        raise ConfigError(f"hf-lm: {what} has no column {key!r} (set {option}); its columns are "
                          f"{records.column_names}")
    try:
        return ["" if v is None else str(v) for v in records[key]]
    except UnicodeDecodeError as exc:
        problem = hub.file_problem(spec) if spec is not None else None
        raise ConfigError(f"hf-lm: {what}: {problem or f'column {key!r} is not UTF-8 text ({exc})'}") from None


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

    chars = _byte_chars()
    backend = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return tokenizer_with_bos(backend)


def word_tokenizer(words: list[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` whose id ``i`` is ``words[i]`` (text: the words separated by whitespace)
    and ``len(words)`` is ``<bos>`` (also EOS, pad): the tokenizer of a task over a fixed token set."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    if len(set(words)) != len(words) or any(not w or w.split() != [w] for w in words):
        raise ValueError("word_tokenizer: the words must be distinct, non-empty and free of whitespace")
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer_with_bos(backend)


def tokenizer_with_bos(backend: Any) -> Any:
    """A ``PreTrainedTokenizerFast`` of the ``tokenizers`` ``backend`` with ``<bos>`` (also EOS, pad) added as the
    next id."""
    from transformers import PreTrainedTokenizerFast

    backend.add_special_tokens(["<bos>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<bos>", pad_token="<bos>")


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
