"""run.threads: torch's intra-op threads of a run (default 1, else $OMP_NUM_THREADS), shown by `collapsekit run`,
set for the run and restored after it, and changeable between a run and its resumption."""
import pytest
import torch

import collapsekit
from collapsekit import hookimpl
from collapsekit.errors import ConfigError
from collapsekit.testing import run_tiny
from collapsekit.threads import resolve_threads


def test_the_default_is_fixed_and_the_environment_variable_is_respected(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None) == (1, "default")          # never the machine's cores or load
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(None) == (3, "OMP_NUM_THREADS")
    assert resolve_threads(2) == (2, "run.threads")           # the config wins over the environment
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match="run.threads must be a number of torch threads >= 1"):
            resolve_threads(bad)
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS='many' is not a number of threads"):
        resolve_threads(None)


def test_a_run_trains_with_run_threads_and_restores_the_previous_count(tmp_path):
    seen = []

    class ThreadProbe:
        @hookimpl
        def generation_start(self, generation):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    with collapsekit.registered(ThreadProbe(), name="thread-probe"):
        run_tiny(tmp_path, generations=1, max_steps=1, run_options={"threads": 2})
    assert seen == [2] and torch.get_num_threads() == before


def test_cli_shows_the_threads_and_a_resumed_run_may_change_them(cli, make_config, write_config, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = write_config(make_config(generations=1, max_steps=2))
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    assert out.splitlines()[0].endswith(", 1 torch thread (default)")
    code, out, err = cli("run", "--config", path, "--run.generations", "2", "--run.threads", "2")
    assert code == 0, err                                       # threads are not part of a run's identity
    assert "2 torch threads (run.threads)" in out and "(finished earlier, resumed)" in out
    code, _, err = cli("run", "--config", path, "--run.threads", "0")
    assert code == 2 and "run.threads must be a number of torch threads >= 1" in err
