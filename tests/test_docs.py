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


# -- numbers and messages the README states, checked against what produces them ------------------------------
def _quickstart_checker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_quickstart", ROOT / ".ci" / "check_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_compares_the_quick_start_block_with_what_the_command_printed():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python .ci/check_quickstart.py README.md "$printed"' in ci and '| tee "$printed"' in ci
    checker = _quickstart_checker()
    readme = (ROOT / "README.md").read_text()
    shown = checker.generation_lines(checker.readme_block(readme))
    assert sorted(shown) == list(range(5)) and all("kl" in m for m in shown.values())
    printed = "pip output\ncollapsekit run 'quickstart': ...\n" + "\n".join(
        f"generation {g}: " + "  ".join(f"{k}={v}" for k, v in m.items()) + f" ({10.0 * g + 3:.1f} s)"
        for g, m in shown.items()) + "\nplots: ...\n"
    assert checker.differences(readme, printed) == []                    # wall-clock seconds are not compared
    assert checker.differences(readme, printed.replace(" (3.0 s)", " (finished earlier, resumed)")) == []
    changed = printed.replace(f"kl={shown[2]['kl']} ", "kl=9.999 ", 1)
    assert checker.differences(readme, changed) == [f"generation 2: kl: README {shown[2]['kl']} vs printed 9.999"]
    assert checker.differences(readme, printed.split("generation 4:")[0]) == [
        "generation 4 is in the README but was not printed"]


def test_bench_counts_in_the_readmes_are_the_plan_and_the_committed_results():
    import json

    from collapsekit.bench.runner import plan

    readme = (ROOT / "README.md").read_text()
    cells, _ = plan("cpu", progress=False)
    pairs = {(c["task"], c["method"]) for c in cells}
    claim = re.search(r"bench --preset cpu +# the whole suite: (\d+) \(task, method\) pairs, (\d+) cells", readme)
    assert claim and (int(claim.group(1)), int(claim.group(2))) == (len(pairs), len(cells))
    results = json.loads((ROOT / "configs" / "bench" / "results" / "cpu" / "results.json").read_text())
    ran = {(r["task"], r["method"], r["seed"]) for r in results["rows"]}
    latest = readme.split("**Latest full CPU run**", 1)[1].split("\n\n", 1)[0]
    assert re.search(r": (\d+) cells,", latest).group(1) == str(len(ran))
    bench_readme = (ROOT / "configs" / "bench" / "README.md").read_text()
    assert re.search(r"\| \*\*total\*\* \| \| \| \*\*(\d+)\*\*", bench_readme).group(1) == str(len(ran))


def _message_templates() -> list[str]:
    """Every string literal of the engine and the built-in plugins, f-string fields replaced by ``…``."""
    import ast

    texts = []
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                texts.append("".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
    return texts


def test_troubleshooting_lists_messages_the_code_prints():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    messages = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert len(messages) >= 25
    templates = _message_templates()
    for message in messages:
        for chunk in (c.strip(" .") for c in message.split("…")):
            if len(chunk) > 3:
                assert any(chunk in t for t in templates), f"README Troubleshooting: {chunk!r} (of {message!r})"
