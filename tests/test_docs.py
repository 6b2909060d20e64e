"""The README's quick-start commands are exactly what CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_quick_start_commands_exactly():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    ci = _commands((ROOT / ".ci" / "run").read_text())
    readme_commands = _commands(quick_start)
    assert len(readme_commands) == 2
    assert [c for c in ci if c in readme_commands] == readme_commands
    assert "set -euo pipefail" in ci


def test_every_install_command_uses_the_torch_constraints():
    readme = (ROOT / "README.md").read_text()
    for command in re.findall(r"^pip install .*$", readme, flags=re.M):
        if "collapsekit-my-reg" in command:      # the generated plugin's own install, torch already present
            continue
        assert "-c constraints.txt" in command, command
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
