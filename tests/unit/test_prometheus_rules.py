"""deploy/prometheus: the rules pass Debian's promtool (check and unit tests), name only metrics the
service exports, and point every alert at a CLI command that exists; the Grafana dashboard too."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from inbox.commands import build_parser
from inbox.metrics import ERROR_CLASSES, ConsumerLag, Snapshot, families

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "inbox-rules.yml"
TESTS = ("inbox-rules.test.yml", "inbox-rules-daily.test.yml")
DASHBOARD = REPO / "deploy" / "grafana" / "quota-inbox-dashboard.json"
# An inbox_ metric or an inbox: recording rule in a PromQL expression (not "quota-inbox" in a label).
NAME = re.compile(r"(?<![\w-])(inbox[_:][A-Za-z0-9_:]*|up)\b")

LIBRDKAFKA_STATS = {
    "name": "quota-inbox#consumer-1",
    "type": "consumer",
    "topics": {
        "titan.quota": {
            "topic": "titan.quota",
            "partitions": {
                "0": {"partition": 0, "desired": True, "fetch_state": "active", "consumer_lag": 10},
                "1": {"partition": 1, "desired": True, "fetch_state": "active", "consumer_lag": 0},
                "2": {"partition": 2, "desired": True, "fetch_state": "active", "consumer_lag": -1},
                "3": {"partition": 3, "desired": False, "fetch_state": "none", "consumer_lag": 7},
                "-1": {"partition": -1, "desired": False, "fetch_state": "none", "consumer_lag": -1},
            },
        }
    },
}


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (.ci/run does)"
    done = subprocess.run([binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def exported_series() -> set[str]:
    """Every series name /metrics can serve: the database's figures and `inbox consume`'s lag."""
    snap = Snapshot(has_figures=True, database_up=True, latency_buckets=(0.1, 1.0))
    lag = ConsumerLag()
    lag.update(json.dumps(LIBRDKAFKA_STATS))
    return {sample.name for family in [*families(snap), *lag.collect()] for sample in family.samples}


def referenced(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def test_promtool_checks_the_rules_and_the_example_config() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_promtool_unit_tests_pass() -> None:
    assert promtool("test", "rules", *TESTS).count("SUCCESS") == len(TESTS)


def test_every_alert_has_a_unit_test_firing_and_one_not_firing() -> None:
    tests = [test for name in TESTS for test in yaml.safe_load((PROMETHEUS_DIR / name).read_text())["tests"]]
    checks = [check for test in tests for check in test.get("alert_rule_test", [])]
    for alert in (rule["alert"] for rule in rules() if "alert" in rule):
        outcomes = {bool(check["exp_alerts"]) for check in checks if check["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: needs a firing and a not-firing case"


def test_the_rules_name_only_exported_metrics_and_recorded_rules() -> None:
    exported, recorded = exported_series(), {rule["record"] for rule in rules() if "record" in rule}
    known = exported | recorded | {"up"}
    for rule in rules():
        unknown = referenced(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown} is not exported"
    used = {name for rule in rules() for name in referenced(rule["expr"])}
    assert {"inbox_kafka_consumer_lag", "inbox_database_up", "inbox_events_dead_total"} <= used


def test_the_dashboard_is_json_naming_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_series() | {rule["record"] for rule in rules() if "record" in rule}
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    for expr in exprs:
        assert referenced(expr), expr
        assert not referenced(expr) - known, f"{expr}: names a metric nothing exports"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_alert_has_a_runbook_naming_an_existing_cli_command() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 7
    for alert in alerts:
        runbook = alert["annotations"]["runbook"]
        commands = re.findall(r"`(inbox [^`]+)`", runbook)
        assert commands, f"{alert['alert']}: the runbook names no `inbox ...` command"
        for command in commands:
            parser = build_parser()
            for word in command.split()[1:]:
                choices = _subcommands(parser)
                if not choices or word.startswith("-") or word.isupper():
                    break
                assert word in choices, f"{alert['alert']}: `{command}`: no command {word!r}"
                parser = choices[word]


def test_dead_letter_classes_are_served_from_zero() -> None:
    """A class's first dead letter must be an increase of an existing series (rate() sees it), not
    a new series that starts above zero."""
    snap = Snapshot(has_figures=True, database_up=True)
    (dead,) = [family for family in families(snap) if family.name == "inbox_events_dead"]
    assert {s.labels["error_class"]: s.value for s in dead.samples} == dict.fromkeys(ERROR_CLASSES, 0.0)


@pytest.mark.parametrize("garbage", ["not json", "[]", '{"topics": {"t": {"partitions": {"x": {}}}}}'])
def test_consumer_lag_from_librdkafka_statistics(garbage: str) -> None:
    lag = ConsumerLag()
    lag.update(json.dumps(LIBRDKAFKA_STATS))
    lag.update(garbage)  # logged and ignored: the last figures stay

    (family,) = lag.collect()

    # partition 2 has no committed offset yet (lag unknown), 3 is no longer assigned, -1 is internal
    assert {(s.labels["topic"], s.labels["partition"]): s.value for s in family.samples} == {
        ("titan.quota", "0"): 10,
        ("titan.quota", "1"): 0,
    }


def _member_stats(lags: dict[int, int]) -> str:
    partitions = {str(p): {"partition": p, "desired": True, "consumer_lag": lag} for p, lag in lags.items()}
    return json.dumps({"topics": {"titan.quota": {"topic": "titan.quota", "partitions": partitions}}})


def test_consumer_lag_of_several_members_in_one_process() -> None:
    """INBOX_KAFKA_CONSUMERS: each member reports its own partitions; /metrics shows them all, and a
    member's new statistics replace only its own (a partition it gave up goes with them)."""
    lag = ConsumerLag()
    lag.update(_member_stats({0: 5, 1: 6}), member=0)
    lag.update(_member_stats({2: 7}), member=1)
    lag.update(_member_stats({0: 4}), member=0)  # partition 1 went to another process

    (family,) = lag.collect()

    assert {s.labels["partition"]: s.value for s in family.samples} == {"0": 4, "2": 7}
