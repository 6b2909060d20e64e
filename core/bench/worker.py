"""A bench worker process: ``python -m collapsekit.bench.worker FD PARENT_PID``.

Started by :class:`collapsekit.bench.executors.ProcessExecutor` in a session of its own. It reads the
parent's ``sys.path``, then ``(function path, args)`` messages from the pipe ``FD`` and answers each
with ``("ok", result)``, ``("error", text)`` or ``("raised", exception)``, until the pipe closes (an
answer that finds the pipe closed is dropped quietly: the bench was stopped). It
kills its session (itself and any process it started) if its parent dies, so that no cell keeps
computing for a bench that is gone.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback


def _watch_parent(parent: int, every_s: float = 1.0) -> None:
    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="collapsekit-parent-watch", daemon=True).start()


def _answer(function, args) -> tuple[str, object]:
    from collapsekit.errors import CollapsekitError, Preempted

    try:
        return "ok", function(*args)
    except (KeyboardInterrupt, Preempted) as exc:
        return "error", f"stopped: {type(exc).__name__}: {exc}".rstrip(": ")
    except CollapsekitError as exc:
        return "raised", exc
    except Exception as exc:  # noqa: BLE001 - sent to the parent, which decides
        return "raised", CollapsekitError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")


def main(argv: list[str]) -> int:
    from multiprocessing.connection import Connection

    conn = Connection(int(argv[0]))
    _watch_parent(int(argv[1]))
    sys.path[:] = conn.recv()
    from collapsekit.bench.executors import load_function

    while True:
        try:
            path, args = conn.recv()
        except (EOFError, OSError):
            return 0
        status, value = _answer(load_function(path), args)
        try:
            conn.send((status, value))
        except OSError:                 # the parent stopped listening (a stopped bench closes its pipes)
            return 0
        if status == "error" and str(value).startswith("stopped"):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
