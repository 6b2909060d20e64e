"""One run per folder: the process that runs ``<root>/<name>`` holds ``<root>/<name>/lock``.

The lock is an exclusive ``flock`` on that file for the run's whole lifetime (taken before the folder
is checked, overwritten or written), and the file names its holder (pid, host, start time, command).
A second process is refused with one line naming the holder, so it can neither train into a live
run nor delete it with ``--run.overwrite true``. The kernel drops the lock when its holder dies
however it dies; the next run then takes it over and says whose it was. A clean exit empties the file
(it is never deleted: deleting a lock file lets two processes lock two different files).

Only the launching process takes the lock (global rank 0 by :func:`collapsekit.distributed.process_rank`):
the other ranks of a DDP run (started by Lightning, torchrun or SLURM, with ``LOCAL_RANK`` / ``RANK``
set) share its folder and are never refused. On a file system without ``flock`` support the file is
used as a pid file: a holder on this host that no longer runs is taken over, one on another host is
reported with the command to remove a stale lock.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from .errors import RunStateError

LOCK_FILE = "lock"
"""Name of the lock file inside a run directory."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(holder: dict) -> str:
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} (started "
            f"{holder.get('started', '?')}: {holder.get('command', '?')})")


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 1 << 16, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "?", "command": "unreadable lock file"}


def _alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


class RunLock:
    """The lock of one run directory; :meth:`acquire` it, :meth:`release` it (or use :func:`hold`)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise :class:`RunStateError` naming its live holder; return a note when the lock
        of a holder that is no longer running was taken over."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = self._lock(fd)
            data = json.dumps(_holder()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        if previous:
            return f"took over the lock of {self.dir} from {_describe(previous)}, which is no longer running"
        return None

    def _lock(self, fd: int) -> dict:
        """Lock ``fd``; return the previous holder recorded in the file (``{}``: none)."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(_read(fd)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            return self._pid_file(fd)
        return _read(fd)

    def _pid_file(self, fd: int) -> dict:
        """Without ``flock``: refuse a recorded holder that may still run; return one that does not."""
        previous = _read(fd)
        if not previous:
            return {}
        if previous.get("host") != socket.gethostname():
            raise RunStateError(
                f"run directory {self.dir} is in use by {_describe(previous)} (this file system has no flock, so "
                f"whether it still runs cannot be checked from here); wait for it, or if it is gone, delete "
                f"{self.path} and re-run")
        if previous.get("pid") != os.getpid() and _alive(previous.get("pid")):
            raise self._busy(previous)
        return previous

    def _busy(self, holder: dict) -> RunStateError:
        return RunStateError(
            f"run directory {self.dir} is in use by {_describe(holder)}; one process per run: wait for it to "
            f"finish (or stop it), or give this run another run.name")

    def release(self) -> None:
        """Empty the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def hold(run_dir: Path, lead: bool) -> Iterator[str | None]:
    """Hold the lock of ``run_dir`` inside the block when ``lead`` (the launching process); yield the
    take-over note, if any. Other processes (DDP ranks > 0) hold nothing and yield ``None``."""
    if not lead:
        yield None
        return
    lock = RunLock(run_dir)
    note = lock.acquire()
    try:
        yield note
    finally:
        lock.release()
