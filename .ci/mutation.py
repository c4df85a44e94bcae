"""Mutation testing of the pure core, with a floor that only rises (issue 14, item 8).

mutmut (configured in pyproject.toml, [tool.mutmut]) weakens the modules of its `only_mutate` one
change at a time and runs the unit tests that reach the changed function; a change no test notices
(a survivor) is a rule the tests do not hold. This script runs it from scratch, prints every survivor
on a line of its own, and fails when the killed share falls below the floor in .ci/mutation-floor.txt,
with one line naming the survivors that are not listed there as equivalent.

To add a module: its path in `only_mutate` and its unit test files in
`pytest_add_cli_args_test_selection` (both in [tool.mutmut]); then measure and set the floor.

The score counts every mutant: a mutant no unit test reaches counts as a survivor (otherwise deleting
a function's tests would raise the score). Survivors judged equivalent (no behaviour can tell them
apart) are listed with the reason in the floor file; they stay in the score, which is why the floor
is below 100.

Run: python .ci/mutation.py   (about 1,500 mutants; the time of the run is printed)
     mutmut show <name>       (after a run: the change a survivor made)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR_FILE = ROOT / ".ci" / "mutation-floor.txt"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
NOT_KILLED = {"survived", "no tests", "suspicious"}
RESULT_LINE = re.compile(r"^\s+(\S+): (.+)$")
MUTANT_NAME = re.compile(r"^(?P<function>\S+)__mutmut_(?P<number>\d+)$")
# mutmut's children: one per core (each mutant is a forked pytest session, CPU-bound).
CHILDREN = os.cpu_count() or 2


@dataclass(frozen=True)
class Floor:
    """The floor file: its first line that is not a comment is the floor (a percentage); each later
    one is a survivor judged equivalent, `<mutant name>  <why>`."""

    percent: float
    equivalent: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    lines: list[str]  # the survivors, one a line, and the score
    failure: str | None  # the one line that fails CI, None when the score holds


def read_floor(text: str, where: str = "the floor file") -> Floor:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise SystemExit(f"mutation: {where} holds no floor")
    try:
        percent = float(lines[0])
    except ValueError:
        raise SystemExit(f"mutation: {where}: the floor must be a percentage, got {lines[0]!r}") from None
    equivalent: dict[str, str] = {}
    for line in lines[1:]:
        name, _, why = line.partition(" ")
        if not MUTANT_NAME.match(name) or not why.strip():
            raise SystemExit(
                f"mutation: {where}: {line!r} is not `<mutant name>  <why it is equivalent>`"
                " (every survivor listed as equivalent says why)"
            )
        equivalent[name] = why.strip()
    return Floor(percent, equivalent)


def compact(names: list[str]) -> str:
    """Mutant names grouped by function: inbox.ingest.x_f__mutmut_{3,7}, inbox.events.x_g__mutmut_1."""
    numbers: dict[str, list[int]] = {}
    for name in names:
        match = MUTANT_NAME.match(name)
        if match:
            numbers.setdefault(match["function"], []).append(int(match["number"]))
        else:
            numbers.setdefault(name, [])
    parts = []
    for function, found in sorted(numbers.items()):
        if not found:
            parts.append(function)
        elif len(found) == 1:
            parts.append(f"{function}__mutmut_{found[0]}")
        else:
            parts.append(f"{function}__mutmut_{{{','.join(map(str, sorted(found)))}}}")
    return ", ".join(parts)


def judge(status: Mapping[str, str], floor: Floor) -> Verdict:
    """The verdict on a run: mutant name -> mutmut's status of it."""
    unknown = sorted(f"{name}: {s}" for name, s in status.items() if s not in KILLED | NOT_KILLED)
    if unknown or not status:
        return Verdict([], "mutation: mutants without a verdict: " + (", ".join(unknown) or "none ran"))
    survivors = sorted(name for name, s in status.items() if s in NOT_KILLED)
    lines = [
        f"survived: {name}"
        + (
            " (no unit test reaches it: is its test file in [tool.mutmut]?)"
            if status[name] == "no tests"
            else ""
        )
        + (f" (equivalent: {floor.equivalent[name]})" if name in floor.equivalent else "")
        for name in survivors
    ]
    stale = sorted(set(floor.equivalent) - set(survivors))
    if stale:
        lines.append(
            "mutation: listed as equivalent in the floor file but not a survivor now (the code changed: "
            f"remove or renumber them): {compact(stale)}"
        )
    killed = len(status) - len(survivors)
    score = 100 * killed / len(status)
    lines.append(f"mutation: {killed} of {len(status)} mutants killed, {score:.1f}% (floor {floor.percent}%)")
    if score >= floor.percent:
        return Verdict(lines, None)
    to_kill = [name for name in survivors if name not in floor.equivalent]
    return Verdict(
        lines,
        f"mutation: {score:.1f}% is below the floor of {floor.percent}% (.ci/mutation-floor.txt); "
        f"{len(to_kill)} survivor(s) no unit test notices (`mutmut show <name>`), "
        f"add the tests that kill them: {compact(to_kill)}",
    )


def run_mutmut() -> dict[str, str]:
    mutmut = [sys.executable, "-m", "mutmut"]
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # from scratch: no result carried over
    log = ROOT / "mutants" / "run.log"
    log.parent.mkdir()
    with log.open("w", encoding="utf-8") as out:
        run = subprocess.run(
            [*mutmut, "run", "--max-children", str(CHILDREN)], cwd=ROOT, stdout=out, stderr=out
        )
    if run.returncode != 0:
        print(log.read_text(encoding="utf-8")[-3000:], file=sys.stderr)
        raise SystemExit(f"mutation: mutmut run failed (exit {run.returncode}); its log is {log}")
    listing = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {m[1]: m[2] for m in map(RESULT_LINE.match, listing.splitlines()) if m}


def main() -> int:
    floor = read_floor(FLOOR_FILE.read_text(encoding="utf-8"), str(FLOOR_FILE.relative_to(ROOT)))
    started, load = time.monotonic(), os.getloadavg()[0]
    status = run_mutmut()
    verdict = judge(status, floor)
    print(*verdict.lines, sep="\n")
    print(
        f"mutation: {time.monotonic() - started:.0f} s with {CHILDREN} children "
        f"(load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)"
    )
    if verdict.failure is None:
        return 0
    print(verdict.failure, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
