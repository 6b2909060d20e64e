"""The plugin template: names are validated, nothing is overwritten, and a generated plugin installs, is
discovered, passes its own generated tests and acts in a real run. Also: the guide's hook reference is generated."""
from __future__ import annotations

import math
import os
import py_compile
import re
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import uuid

import numpy as np
import pytest
import torch

from collapsekit.cli import main as cli_main
from collapsekit.registry import discover
from collapsekit.template import (BEGIN, END, GUIDE, TemplateError, create_plugin, hook_reference_markdown,
                                  plugin_names, sync_guide)
from collapsekit.testing import run_tiny, toy_task


@pytest.mark.parametrize("name, fragment", [
    ("", "invalid plugin name"),
    ("My-Reg", "lowercase"),
    ("1reg", "starting with a letter"),
    ("my reg", "invalid plugin name"),
    ("my--reg", "single '-' or '_'"),
    ("my/reg", "invalid plugin name"),
    ("reg-", "invalid plugin name"),
    ("x" * 41, "1-40"),
    ("collapsekit-reg", "leave out the 'collapsekit' prefix"),
    ("baseline", "already taken"),
    ("Replace".lower(), "already taken"),
    ("pro_bes", "already taken by probes"),
])
def test_bad_or_taken_names_are_rejected(name, fragment, tmp_path):
    with pytest.raises(TemplateError) as info:
        create_plugin(name, tmp_path)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_derived_names():
    names = plugin_names("my_reg2")
    assert (names["dist"], names["package"], names["entry"], names["cls"]) == \
        ("collapsekit-my-reg2", "collapsekit_my_reg2", "my-reg2", "MyReg2")


def test_refuses_to_overwrite_existing_folder(tmp_path):
    target = tmp_path / "collapsekit-keep"
    target.mkdir()
    (target / "mine.txt").write_text("do not touch")
    with pytest.raises(TemplateError, match="already exists"):
        create_plugin("keep", tmp_path)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert (target / "mine.txt").read_text() == "do not touch"


def test_generated_files_are_complete(tmp_path):
    path = create_plugin("my-reg", tmp_path / "new" / "dir")  # dest is created
    assert path == tmp_path / "new" / "dir" / "collapsekit-my-reg"
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert files == ["README.md", "collapsekit_my_reg/__init__.py", "collapsekit_my_reg/functional.py",
                     "collapsekit_my_reg/plugin.py", "pyproject.toml", "tests/test_my_reg.py"]
    assert [p.name for p in path.parent.iterdir()] == ["collapsekit-my-reg"]  # no staging left behind
    for rel in files:
        f = path / rel
        assert "${" not in f.read_text(), f"unfilled placeholder in {f}"
        if f.suffix == ".py":
            py_compile.compile(str(f), cfile=str(tmp_path / "check.pyc"), doraise=True)
    meta = tomllib.loads((path / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "collapsekit-my-reg"
    assert meta["project"]["entry-points"]["collapsekit"] == {"my-reg": "collapsekit_my_reg.plugin:MyReg"}
    assert "import collapsekit" not in (path / "collapsekit_my_reg" / "functional.py").read_text()
    assert "from collapsekit" not in (path / "collapsekit_my_reg" / "__init__.py").read_text()


def test_cli_new_plugin(tmp_path, capsys):
    assert cli_main(["new-plugin", "cli-made", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "collapsekit-cli-made" / "pyproject.toml").is_file()
    out = capsys.readouterr().out
    assert f"pip install -e '{tmp_path / 'collapsekit-cli-made'}[test]'" in out      # installs pytest too
    assert cli_main(["new-plugin", "cli-made", "--dest", str(tmp_path)]) == 2
    assert cli_main(["new-plugin", "Bad Name", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "invalid plugin name 'Bad Name'" in err


def test_generated_plugin_installs_is_discovered_passes_its_tests_and_runs(tmp_path, pip_tools):
    name = f"tmpl{uuid.uuid4().hex[:8]}"
    path = create_plugin(name, tmp_path)
    dist = pip_tools.install(path)
    proc = None
    try:
        info = discover()[name]
        assert (info.distribution, info.error, info.hooks) == (f"collapsekit-{name}", None,
                                                               ["filter_samples", "loss_terms", "metrics"])

        # the generated tests, as the author runs them, in a fresh interpreter (meanwhile: a run here)
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
                                cwd=path, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        metrics = run_tiny(tmp_path / "runs", [{"class_path": name, "init_args": {"weight": 0.01}}],
                           name="tmpl", generations=1, max_steps=3)[0]
        model = toy_task().load_model(tmp_path / "runs" / "tmpl" / "gen_0")
        with torch.no_grad():
            norm = math.sqrt(sum(float((p.double() ** 2).sum()) for p in model.parameters()))
        assert metrics[f"{name}/weight_norm"] == pytest.approx(norm, rel=1e-9)
        assert metrics[f"loss/{name}_l2"] > 0
        assert metrics["loss/total"] == pytest.approx(metrics["loss/task"] + metrics[f"loss/{name}_l2"], rel=1e-5)
        kept = np.load(tmp_path / "runs" / "tmpl" / "gen_0" / "pool" / "tokens.npy")
        assert 0 < metrics[f"filter/{name}/kept"] <= 1 and len(np.unique(kept, axis=0)) == len(kept)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-4000:]
        passed = re.search(r"(\d+) passed", output)
        assert passed and int(passed.group(1)) >= 10 and "skipped" not in output, output[-2000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        pip_tools.uninstall(dist, [f"collapsekit_{name}"])
    assert name not in discover()


# -- the guide ---------------------------------------------------------------------------------------
def test_guide_hook_reference_is_generated_from_the_specs():
    text = GUIDE.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section == "\n" + hook_reference_markdown(), (
        "core/PLUGIN_GUIDE.md is stale; run: python -c 'from collapsekit.template import sync_guide; sync_guide()'")
    from collapsekit.dispatch import HOOK_NAMES

    for hook in HOOK_NAMES:
        assert f"### `{hook}(" in section


def test_sync_guide_rewrites_only_the_generated_section(tmp_path):
    guide = tmp_path / "GUIDE.md"
    guide.write_text(f"intro\n{BEGIN}\nstale table\n{END}\noutro\n")
    assert sync_guide(guide, check=True) is False
    assert "stale table" in guide.read_text()
    assert sync_guide(guide) is False
    assert guide.read_text() == f"intro\n{BEGIN}\n{hook_reference_markdown()}{END}\noutro\n"
    assert sync_guide(guide) is True
    guide.write_text("no markers")
    with pytest.raises(ValueError, match="lacks the markers"):
        sync_guide(guide)
