"""Check that the README's quick-start output block is what the quick-start command printed.

Usage: ``python .ci/check_quickstart.py README.md PRINTED`` where PRINTED holds the output of
``collapsekit run --config configs/quickstart.yaml`` (``.ci/run`` captures it). Every
``generation <k>: name=value ... (<seconds> s)`` line of the README block must be printed with the
same metric names and values, and no other generation line may be printed; the seconds are wall
time and are not compared. Exit status 1 with the differences and the printed lines on a mismatch.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

LINE = re.compile(r"^generation (\d+): (.*?)(?: \((?:[\d.]+ s|finished earlier, resumed)\))?\s*$")


def generation_lines(text: str) -> dict[int, dict[str, str]]:
    """``{generation: {metric: value as printed}}`` of the ``generation <k>: a=1 b=2 (3.0 s)`` lines in ``text``."""
    found: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match:
            found[int(match.group(1))] = dict(pair.split("=", 1) for pair in match.group(2).split())
    return found


def readme_block(readme: str) -> str:
    """The first code block after the quick start's command block (the printed output it shows)."""
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", quick_start, flags=re.S)
    if len(blocks) < 2:
        raise ValueError("the README's quick start has no output block after its commands")
    return blocks[1]


def differences(readme: str, printed: str) -> list[str]:
    """Every way the README block and the printed output differ (empty: they agree)."""
    shown, ran = generation_lines(readme_block(readme)), generation_lines(printed)
    if not shown:
        return ["the README's quick-start output block has no 'generation <k>: ...' lines"]
    problems = []
    for generation in sorted(set(shown) | set(ran)):
        a, b = shown.get(generation), ran.get(generation)
        if a is None:
            problems.append(f"generation {generation} was printed but is not in the README")
        elif b is None:
            problems.append(f"generation {generation} is in the README but was not printed")
        elif a != b:
            diff = ", ".join(f"{k}: README {a.get(k)} vs printed {b.get(k)}" for k in sorted(set(a) | set(b))
                             if a.get(k) != b.get(k))
            problems.append(f"generation {generation}: {diff}")
    return problems


def main(argv: list[str]) -> int:
    readme, printed = (Path(p).read_text() for p in argv)
    problems = differences(readme, printed)
    if not problems:
        print(f"README quick-start block matches the printed output ({len(generation_lines(printed))} generations)")
        return 0
    import torch

    print("The README's quick-start output block is not what `collapsekit run --config configs/quickstart.yaml` "
          f"printed here (torch {torch.__version__}, {torch.get_num_threads()} threads by default):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    print("Printed lines:\n" + "\n".join(line for line in printed.splitlines() if LINE.match(line.strip())),
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
