""".ci/mutation.py's verdict on a mutmut run, on made-up results (no mutmut run here: that is CI's)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_mutation", ROOT / ".ci" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mutation = _load()

EQUIVALENT = "inbox.events.x__decimal__mutmut_15"


def _floor(percent: float) -> object:
    return mutation.read_floor(f"# a comment\n{percent}\n{EQUIVALENT}  Decimal() strips whitespace itself\n")


def _status(killed: int, **others: str) -> dict[str, str]:
    status = {f"inbox.ingest.x_loads__mutmut_{n}": "killed" for n in range(1, killed + 1)}
    return status | others


def test_below_the_floor_fails_with_one_line_naming_the_survivors() -> None:
    status = _status(
        7,
        **{
            "inbox.ingest.x_split_body__mutmut_3": "survived",
            "inbox.ingest.x_split_body__mutmut_12": "survived",
            "inbox.formats.x_ordering__mutmut_2": "no tests",
            EQUIVALENT: "survived",
        },
    )  # 7 of 11 killed: 63.6%
    verdict = mutation.judge(status, _floor(64.0))
    assert verdict.failure is not None
    assert "\n" not in verdict.failure
    assert "63.6% is below the floor of 64.0%" in verdict.failure
    # the survivors to kill, grouped by function; not the one listed as equivalent
    assert verdict.failure.endswith(
        "3 survivor(s) no unit test notices (`mutmut show <name>`), add the tests that kill them: "
        "inbox.formats.x_ordering__mutmut_2, inbox.ingest.x_split_body__mutmut_{3,12}"
    )
    assert "x__decimal" not in verdict.failure
    assert "mutation: 7 of 11 mutants killed, 63.6% (floor 64.0%)" in verdict.lines
    assert f"survived: {EQUIVALENT} (equivalent: Decimal() strips whitespace itself)" in verdict.lines
    assert any("no unit test reaches it" in line and "x_ordering__mutmut_2" in line for line in verdict.lines)


def test_at_or_above_the_floor_passes() -> None:
    status = _status(9, **{"inbox.ingest.x_split_body__mutmut_3": "survived", EQUIVALENT: "survived"})
    assert mutation.judge(status, _floor(81.8)).failure is None  # 9 of 11: 81.8%
    assert mutation.judge(status, _floor(81.9)).failure is not None


def test_timeouts_and_type_check_catches_count_as_killed() -> None:
    status = _status(1, **{"a.x_f__mutmut_1": "timeout", "a.x_f__mutmut_2": "caught by type check"})
    assert mutation.judge(status, _floor(100.0)).failure is None


def test_a_result_without_a_verdict_or_no_result_at_all_fails() -> None:
    failure = mutation.judge(_status(5, **{"a.x_f__mutmut_1": "not checked"}), _floor(0.0)).failure
    assert failure == "mutation: mutants without a verdict: a.x_f__mutmut_1: not checked"
    assert mutation.judge({}, _floor(0.0)).failure == "mutation: mutants without a verdict: none ran"


def test_an_equivalent_survivor_that_no_longer_survives_is_named() -> None:
    verdict = mutation.judge(_status(4), _floor(50.0))
    assert verdict.failure is None
    assert any("not a survivor now" in line and EQUIVALENT in line for line in verdict.lines)


def test_an_equivalent_survivor_must_say_why() -> None:
    with pytest.raises(SystemExit, match="says why"):
        mutation.read_floor(f"90\n{EQUIVALENT}\n")
    with pytest.raises(SystemExit, match="must be a percentage"):
        mutation.read_floor("ninety\n")
    with pytest.raises(SystemExit, match="holds no floor"):
        mutation.read_floor("# only comments\n")


def test_the_floor_file_and_the_mutmut_configuration_hold_together() -> None:
    floor = mutation.read_floor(mutation.FLOOR_FILE.read_text(encoding="utf-8"))
    assert 0 < floor.percent <= 100
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    modules = config["only_mutate"]
    tests = config["pytest_add_cli_args_test_selection"]
    assert all((ROOT / path).is_file() for path in modules + tests), "a path in [tool.mutmut] does not exist"
    for name in floor.equivalent:  # inbox.events.x__decimal__mutmut_15 is a mutant of inbox/events.py
        assert f"{'/'.join(name.split('.')[:2])}.py" in modules, name
