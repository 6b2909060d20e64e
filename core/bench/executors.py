"""Where a bench's cells run: in this process, in worker processes of this machine, or as submitit jobs.

Every executor takes :class:`Job` s (arguments of one function call, the function named by its import
path) and yields ``(job, result)`` as they finish, in any order; :meth:`stop` ends every worker or job
it started, and what finished stays on disk. A cell gives the same numbers under every executor: its
torch thread count is part of its config, so nothing depends on the process it runs in.

* :class:`InlineExecutor`: one after the other in this process.
* :class:`ProcessExecutor`: ``jobs`` worker processes (``python -m collapsekit.bench.worker``), each in its
  own session so that it and its children can be stopped together. They import no ``__main__``: a
  script that calls ``run_bench`` needs no ``if __name__ == "__main__"`` guard.
* :class:`SubmititExecutor`: one submitit job per cell (``cluster``: ``slurm``, ``local`` or ``debug``),
  logs in ``<folder>/<job id>/``.
"""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import ConfigError, Preempted

STOP_GRACE_S = 20.0
"""Seconds a stopped worker or local job gets to end (a cell in training saves a step checkpoint at the
end of its current step and stops) before it and its children are killed."""
EXECUTORS = ("processes", "submitit")
CLUSTERS = ("slurm", "local", "debug")


@dataclass
class Job:
    """One call of ``function`` (``"module:name"``) with ``args``; ``key`` identifies it to the caller."""

    key: Any
    function: str
    args: tuple


def load_function(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class Stopped(Preempted):
    """The bench was asked to stop (``SIGTERM``)."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside the block, ``SIGTERM`` raises :class:`Stopped` in the main thread (``SIGINT`` raises
    ``KeyboardInterrupt`` as always), so that the caller can stop its workers before it exits."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Stopped("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class InlineExecutor:
    """Each job in this process, one after the other."""

    description = "in this process"

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Any]]:
        for job in jobs:
            yield job, load_function(job.function)(*job.args)

    def stop(self) -> None:
        """Nothing to stop: a signal reaches the job running in this process directly."""


class _Worker:
    """A ``python -m collapsekit.bench.worker`` process in its own session, talking over a pipe."""

    def __init__(self) -> None:
        import multiprocessing

        self.conn, child = multiprocessing.Pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "collapsekit.bench.worker", str(child.fileno()),
                                      str(os.getpid())], pass_fds=(child.fileno(),), start_new_session=True)
        child.close()
        self.conn.send(list(sys.path))          # the worker imports what this process can import
        self.job: Job | None = None

    def exited(self) -> bool:
        """True once the worker has exited (it stays a zombie, its process group id reserved, until reaped)."""
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill_group(self) -> None:
        """SIGKILL the worker's session: the worker and every process it started."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessExecutor:
    """Jobs in ``jobs`` worker processes of this machine, each worker running one job at a time."""

    def __init__(self, jobs: int, grace_s: float = STOP_GRACE_S) -> None:
        if jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}")
        self.jobs, self.grace_s = jobs, grace_s
        self.workers: list[_Worker] = []
        self.description = f"in {jobs} worker process{'es' if jobs > 1 else ''}"

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Any]]:
        from multiprocessing.connection import wait

        pending = list(jobs)
        pending.reverse()
        try:
            while pending or any(w.job for w in self.workers):
                self.workers = [w for w in self.workers if w.job is not None or w.proc.poll() is None]
                while pending and len(self.workers) < self.jobs:
                    self.workers.append(_Worker())
                for worker in self.workers:
                    if worker.job is None and pending:
                        worker.job = pending.pop()
                        worker.conn.send((worker.job.function, worker.job.args))
                busy = {w.conn: w for w in self.workers if w.job is not None}
                for conn in wait(list(busy), timeout=1.0):
                    worker = busy[conn]
                    job, worker.job = worker.job, None
                    try:
                        status, value = conn.recv()
                    except (EOFError, OSError):
                        code = worker.proc.wait()
                        status, value = "error", (f"the worker process (pid {worker.proc.pid}) exited with status "
                                                  f"{code} while running it (killed, e.g. out of memory?)")
                        worker.kill_group()
                    if status == "raised":
                        raise value
                    yield job, ({"error": value, "detail": value} if status == "error" else value)
        except BaseException:
            self.stop()
            raise
        self.close()

    def close(self) -> None:
        """Let the (idle) workers exit at the end of their input, then reap them."""
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.conn.close()
        self._end(workers, self.grace_s)

    @staticmethod
    def _end(workers: list[_Worker], grace_s: float) -> None:
        """Wait up to ``grace_s`` for ``workers`` to exit, SIGKILL each one's session, reap them."""
        deadline = time.monotonic() + grace_s
        while any(not w.exited() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for worker in workers:
            worker.kill_group()              # before reaping: the zombie keeps its group id from being reused
            worker.proc.wait()

    def stop(self) -> None:
        """SIGTERM every worker (a cell in training saves a step checkpoint at the end of the step), wait up to
        :attr:`grace_s`, then SIGKILL each worker's whole session; no process of this executor survives."""
        workers, self.workers = self.workers, []
        for worker in workers:
            if not worker.exited():
                try:
                    worker.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
            worker.conn.close()
        self._end(workers, self.grace_s)


class SubmititExecutor:
    """One submitit job per cell; ``params`` are ``submitit.AutoExecutor`` parameters plus ``cluster``."""

    def __init__(self, params: Mapping[str, Any], folder: str | Path, grace_s: float = STOP_GRACE_S,
                 poll_s: float = 1.0) -> None:
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor submitit needs the submitit package: pip install submitit "
                              "(or pip install 'collapsekit[cluster]')") from None
        params = dict(params)
        cluster = params.pop("cluster", None)
        if cluster is not None and cluster not in CLUSTERS:
            raise ConfigError(f"--submitit: cluster must be one of {', '.join(CLUSTERS)} (or left out: SLURM when "
                              f"available, else local), got {cluster!r}")
        self.folder, self.grace_s, self.poll_s = Path(folder), grace_s, poll_s
        try:
            self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        except Exception as exc:  # noqa: BLE001 - submitit raises plain errors for a missing cluster
            raise ConfigError(f"--submitit: cannot use cluster {cluster!r}: {exc}") from None
        self.cluster = self.executor.cluster
        if self.cluster in ("local", "debug"):
            params.setdefault("timeout_min", 7 * 24 * 60)   # submitit's local default (2 min) would kill most cells
        elif "timeout_min" not in params and "slurm_time" not in params:
            raise ConfigError(f"--submitit: give timeout_min (minutes each cell's job may run; {self.cluster}'s "
                              "default through submitit is 5 minutes), e.g. '{\"timeout_min\": 240}'")
        params.setdefault("name", "collapsekit-bench")
        try:
            self.executor.update_parameters(**params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--submitit: {exc}") from None
        self.pending: list = []
        self.description = f"as submitit jobs on {self.cluster} (logs in {self.folder}/<job id>/)"

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Any]]:
        jobs = list(jobs)
        try:
            with self.executor.batch():
                submitted = [self.executor.submit(load_function(j.function), *j.args) for j in jobs]
            self.pending = list(zip(jobs, submitted))
            try:
                (self.folder / "%j").rmdir()     # the literal folder submitit makes for its folder pattern
            except OSError:
                pass
            print(f"collapsekit bench: submitted {len(jobs)} job(s) to {self.cluster}: "
                  f"{', '.join(s.job_id for _, s in self.pending[:6])}{' ...' if len(jobs) > 6 else ''}; "
                  f"logs in {self.folder}/<job id>/", flush=True)
            while self.pending:
                finished = [(j, s) for j, s in self.pending if s.done()]
                for job, sub in finished:
                    self.pending.remove((job, sub))
                    try:
                        result = sub.results()[0]          # rank 0's result when the job runs several tasks
                    except Exception as exc:  # noqa: BLE001 - a failed or killed job is recorded as the cell's error
                        text = " ".join(str(exc).split())[-600:]
                        result = {"error": f"job {sub.job_id} failed: {text}",
                                  "detail": f"job {sub.job_id} failed: {text} (log: {sub.paths.stderr})"}
                    yield job, result
                if self.pending and not finished:
                    time.sleep(self.poll_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel every unfinished job (local jobs: wait up to :attr:`grace_s` for them to end)."""
        pending, self.pending = self.pending, []
        for _, sub in pending:
            try:
                sub.cancel(check=False)
            except Exception:  # noqa: BLE001 - a job that already ended cannot be cancelled
                pass
        if self.cluster == "local":
            deadline = time.monotonic() + self.grace_s
            while any(not s.done() for _, s in pending) and time.monotonic() < deadline:
                time.sleep(0.05)


def make_executor(executor: str, jobs: int, submitit: Mapping[str, Any] | None, folder: str | Path):
    """The executor named ``executor`` (``processes``: inline when ``jobs`` is 1)."""
    if executor == "processes":
        if submitit:
            raise ConfigError("--submitit is only used with --executor submitit")
        return InlineExecutor() if jobs == 1 else ProcessExecutor(jobs)
    if executor == "submitit":
        return SubmititExecutor(submitit or {}, folder)
    raise ConfigError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
