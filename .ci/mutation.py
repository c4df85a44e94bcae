"""Mutation testing of the pure core, with a floor that only rises (issue 14, item 8).

mutmut (configured in pyproject.toml, [tool.mutmut]) weakens events.py, formats.py and ingest.py one
change at a time and runs the unit tests that reach the changed function; a change no test notices
(a survivor) is a rule the tests do not hold. This script runs it from scratch, prints every survivor
on a line of its own, and fails when the killed share falls below the floor in .ci/mutation-floor.txt.

The score counts every mutant of the pure core: a mutant no unit test reaches counts as a survivor
(otherwise deleting a function's tests would raise the score). The three modules are pure (the
database layer is inbox/store.py, held apart by import-linter), so every mutant is in scope.
Survivors judged equivalent (no behaviour can tell them apart) are listed with the reason in the
floor file; they stay in the score, which is why the floor is below 100.

Run: python .ci/mutation.py   (about 1,500 mutants, 7 to 9 minutes of CPU as measured on a busy machine)
     mutmut show <name>       (after a run: the change a survivor made)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR_FILE = ROOT / ".ci" / "mutation-floor.txt"
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
NOT_KILLED = {"survived", "no tests", "suspicious"}
RESULT_LINE = re.compile(r"^\s+(\S+): (.+)$")


def floor() -> float:
    """The first line of the floor file that is not a comment: a percentage."""
    for line in FLOOR_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            return float(line)
    raise SystemExit(f"mutation: {FLOOR_FILE} holds no floor")


def main() -> int:
    mutmut = [sys.executable, "-m", "mutmut"]
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # from scratch: no result carried over
    started = time.monotonic()
    log = ROOT / "mutants" / "run.log"
    log.parent.mkdir()
    with log.open("w", encoding="utf-8") as out:
        run = subprocess.run([*mutmut, "run", "--max-children", "2"], cwd=ROOT, stdout=out, stderr=out)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        print(log.read_text(encoding="utf-8")[-3000:], file=sys.stderr)
        print(f"mutation: mutmut run failed (exit {run.returncode}); its log is {log}", file=sys.stderr)
        return 1
    listing = subprocess.run(
        [*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    status = {m[1]: m[2] for m in map(RESULT_LINE.match, listing.splitlines()) if m}
    unknown = sorted(f"{name}: {s}" for name, s in status.items() if s not in KILLED | NOT_KILLED)
    if unknown or not status:
        print("mutation: mutants without a verdict:", *unknown, sep="\n  ", file=sys.stderr)
        return 1
    survivors = sorted(name for name, s in status.items() if s in NOT_KILLED)
    for name in survivors:
        print(
            f"survived: {name}"
            + (
                " (no unit test reaches it: is its test file in [tool.mutmut]?)"
                if status[name] == "no tests"
                else ""
            )
        )
    killed = len(status) - len(survivors)
    score = 100 * killed / len(status)
    needed = floor()
    print(
        f"mutation: {killed} of {len(status)} mutants killed, {score:.1f}% (floor {needed}%), {seconds:.0f} s"
    )
    if score < needed:
        print(
            f"mutation: the score fell below the floor in {FLOOR_FILE.relative_to(ROOT)}: a survivor above "
            "is a rule no unit test holds (`mutmut show <name>` shows the change); add the test",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
