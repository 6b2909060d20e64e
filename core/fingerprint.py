"""The fingerprint of a run's real data, recorded in ``<run>/data.json`` and checked on resume.

The config names the data (file paths, ``load_dataset`` arguments), not their content: a corpus
edited in place keeps its config, so a resumed run would silently reuse generations trained on the
old text and train the next ones on the new. The fingerprint is the SHA-256 of every array of real
data the task built in ``setup`` (:meth:`collapsekit.Task.real_arrays`: training and held-out items,
after tokenization, resizing, ...), so it covers the files and every argument that shapes them.
It is written when the run starts and checked whenever a finished generation or a step checkpoint
would be reused; before that, a change of data is simply recorded again.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

from .errors import RunStateError
from .fileio import atomic_write_json

DATA_FILE = "data.json"


def fingerprint(arrays: Mapping[str, Any]) -> dict:
    """``{"sha256", "arrays": {name: "dtype[shape]"}}`` of named arrays (names sorted; dtype, shape and
    bytes of each enter the hash)."""
    digest = hashlib.sha256()
    shapes = {}
    for name in sorted(arrays):
        array = np.ascontiguousarray(np.asarray(arrays[name]))
        described = f"{array.dtype.str}{list(array.shape)}"
        digest.update(f"{name}:{described};".encode())
        digest.update(array.tobytes())
        shapes[name] = described
    return {"sha256": digest.hexdigest(), "arrays": shapes}


def check_or_record(run: Any) -> None:
    """Compare the task's real data with ``<run>/data.json`` when the run has something to resume
    (a finished generation or a step checkpoint), raising one :class:`RunStateError` on a mismatch;
    otherwise (re)write the file (lead process only)."""
    path = run.dir / DATA_FILE
    current = fingerprint(run.task.real_arrays())
    resumable = run.finished() > 0 or any(run.dir.glob("gen_*/checkpoints/latest.json"))
    if resumable and path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded is not None and recorded.get("sha256") != current["sha256"]:
            changed = sorted(k for k in set(recorded.get("arrays", {})) | set(current["arrays"])
                             if recorded.get("arrays", {}).get(k) != current["arrays"].get(k))
            detail = "; ".join(f"{k}: {recorded.get('arrays', {}).get(k)} -> {current['arrays'].get(k)}"
                               for k in changed) or "same shapes, other values"
            raise RunStateError(
                f"the real data of task {run.task.name!r} differ from those run {run.dir} started with "
                f"({detail}): a data file changed since. The finished generations trained on the old data; "
                f"restore it, or start over with a new run.name or --run.overwrite true")
    if run.is_lead and not (resumable and path.is_file()):
        atomic_write_json(path, current)
