"""One run per folder (the lock), starting over after a start that finished nothing, plots on a full disk."""
import errno
import json
import os
import subprocess
import sys

import pytest

import collapsekit
from collapsekit import hookimpl
from collapsekit.errors import RunStateError
from collapsekit.runlock import LOCK_FILE, RunLock, hold


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_second_process_is_refused_naming_the_holder(cli, make_config, write_config, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    holder = RunLock(run_dir)                       # another open file: flock treats it as another process
    assert holder.acquire() is None
    try:
        code, _, err = cli("run", "--config", write_config(make_config(generations=1)))
    finally:
        holder.release()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"run directory {run_dir} is in use by process {os.getpid()} on host " in err
    assert "another run.name" in err and not (run_dir / "config.yaml").exists()


def test_overwrite_from_a_second_process_deletes_nothing(cli, make_config, write_config, tmp_path):
    assert cli("run", "--config", write_config(make_config(generations=1)))[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    other = make_config(generations=1, overwrite=True)
    other["task"]["init_args"]["n_embd"] = 32
    holder = RunLock(run_dir)
    holder.acquire()
    try:
        code, _, err = cli("run", "--config", write_config(other, "other.yaml"))
    finally:
        holder.release()
    assert code == 2 and "is in use by process" in err
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert (run_dir / "gen_0" / "done").exists()


def test_a_dead_holders_lock_is_taken_over_with_a_note(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "node7", "started": "yesterday",
                                                  "command": "collapsekit run --config a.yaml"}))
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert note == (f"took over the lock of {tmp_path} from process 4242 on host node7 (started yesterday: "
                    "collapsekit run --config a.yaml), which is no longer running")
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""             # a clean exit leaves an empty, unlocked file
    again = RunLock(tmp_path)
    assert again.acquire() is None
    again.release()


def test_other_ranks_of_a_ddp_run_share_the_folder(tmp_path, monkeypatch):
    """Ranks started by Lightning / torchrun / SLURM (LOCAL_RANK or RANK set) take no lock."""
    from collapsekit.run import Run, RunConfig

    lock = RunLock(tmp_path / "r")
    lock.acquire()
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")
        run = Run(RunConfig(name="r", root=str(tmp_path)), task=None)
        assert not run.is_lead
        with hold(run.dir, run.is_lead) as note:            # not refused
            assert note is None
        monkeypatch.delenv("LOCAL_RANK")
        with pytest.raises(RunStateError, match="is in use by process"):
            with hold(run.dir, Run(RunConfig(name="r", root=str(tmp_path)), task=None).is_lead):
                pass
    finally:
        lock.release()


def test_without_flock_the_file_is_a_pid_file(tmp_path, monkeypatch):
    import fcntl
    import socket

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    record = tmp_path / LOCK_FILE
    here = socket.gethostname()
    record.write_text(json.dumps({"pid": os.getppid(), "host": here}))          # alive on this host
    with pytest.raises(RunStateError, match=f"in use by process {os.getppid()} on host {here}"):
        RunLock(tmp_path).acquire()
    record.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunStateError, match=f"cannot be checked from here.*delete {record}"):
        RunLock(tmp_path).acquire()
    record.write_text(json.dumps({"pid": dead_pid(), "host": here}))
    lock = RunLock(tmp_path)
    assert "no longer running" in lock.acquire()
    lock.release()


class FailsInGenerationZero:
    @hookimpl
    def generation_start(self, generation):
        raise RuntimeError("stopped on purpose")


def test_a_start_that_finished_nothing_is_started_over_with_another_config(cli, make_config, write_config,
                                                                           tmp_path):
    with collapsekit.registered(FailsInGenerationZero(), name="fails"):
        assert cli("run", "--config", write_config(make_config(generations=1)))[0] == 2
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "config.yaml").exists() and not (run_dir / "gen_0" / "done").exists()
    (run_dir / "gen_0" / "checkpoints").mkdir(parents=True)          # a save that never completed: no latest.json
    changed = make_config(generations=1, max_steps=4)
    code, _, err = cli("run", "--config", write_config(changed, "changed.yaml"))
    assert code == 0, err
    assert "held a start of another config that finished no generation (trainer.max_steps: 8 -> 4)" in err
    assert (run_dir / "gen_0" / "done").exists()


def test_a_step_checkpoint_of_another_config_still_needs_overwrite(cli, make_config, write_config, tmp_path):
    with collapsekit.registered(FailsInGenerationZero(), name="fails"):
        assert cli("run", "--config", write_config(make_config(generations=1)))[0] == 2
    checkpoints = tmp_path / "runs" / "tiny" / "gen_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "latest.json").write_text("{}")
    code, _, err = cli("run", "--config", write_config(make_config(generations=1, max_steps=4), "changed.yaml"))
    assert code == 2 and "was made by a different config (trainer.max_steps: 8 -> 4)" in err
    assert (checkpoints / "latest.json").exists()


def test_disk_full_while_drawing_plots_is_one_line(cli, make_config, write_config, tmp_path, file_size_limit):
    assert cli("run", "--config", write_config(make_config(generations=1)))[0] == 0
    run_dir = tmp_path / "runs" / "tiny"
    with file_size_limit(1000):                     # PNGs are larger
        code, out, err = cli("report", str(run_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"could not write {run_dir}: File too large" in err and "Traceback" not in err
