"""The README's Quick start is two commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
FENCE = re.compile(r"^```[^\n]*\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def quick_start_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("Quick start")
    block = FENCE.search(text, start)
    assert block is not None, "no code block after 'Quick start'"
    # Nothing but prose between the words 'Quick start' and its code block.
    assert "\n#" not in text[start : block.start()], "the Quick start code block is in another section"
    lines = [line.strip() for line in block.group("body").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert all(not command.endswith("\\") for command in commands), "a command continues on the next line"


def test_first_command_installs_and_runs_the_main_job() -> None:
    first, _ = quick_start_commands()
    assert "pip install" in first
    assert "inbox run" in first


def test_second_command_installs_the_test_extra_and_runs_pytest() -> None:
    _, second = quick_start_commands()
    assert "[test]" in second
    assert "pytest" in second


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, second = quick_start_commands()
    ci = CI.read_text(encoding="utf-8")
    code = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    assert any(second in line for line in code), f"{second!r} is not in .ci/run"


def test_ci_script_is_executable_and_fails_fast() -> None:
    assert CI.stat().st_mode & 0o111, ".ci/run is not executable"
    text = CI.read_text(encoding="utf-8")
    assert text.startswith("#!")
    assert "set -euo pipefail" in text
    for tool in ("ruff check", "mypy"):
        assert tool in text
