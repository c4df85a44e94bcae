"""A real Prometheus (Debian's package) scrapes `inbox run` and evaluates deploy/prometheus's rules:
invalid events posted to the running service become dead letters, and InboxDeadLetterRate fires."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inbox.db.connect import DictConnection
from tests.helpers import dead_letters, titan_event, to_json
from tests.processes import free_port, inbox_env, inbox_process, stop, wait_for

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "inbox-rules.yml"
DEAD_LETTERS = 12  # the rule: at least 10 within 5 minutes


def _wait(condition: Callable[[], Any], what: str, log: Path, timeout: float = 60) -> Any:
    return wait_for(condition, what, timeout, every=0.25, detail=lambda: log.read_text()[-3000:])


@dataclass(frozen=True)
class Prometheus:
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/alerts", timeout=10)
        assert response.status_code == 200, response.text
        return [a for a in response.json()["data"]["alerts"] if a["labels"]["alertname"] == name]


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """start_prometheus("host:port") -> a Prometheus scraping that target every second with the
    rules of deploy/prometheus, on a free loopback port, with its storage in tmp_path."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (.ci/run does)"
    running: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "quota-inbox", "static_configs": [{"targets": [target]}]}],
        }
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        port, log = free_port(), tmp_path / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running.append(process)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", log)

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
            try:
                return httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait(ready, "Prometheus to be ready", log)
        return prometheus

    yield start
    for process in running:
        stop(process, 15)


def test_dead_letters_piling_up_fire_the_alert(
    dsn: str, db: DictConnection, tmp_path: Path, start_prometheus: Callable[[str], Prometheus]
) -> None:
    env = inbox_env(dsn, INBOX_HTTP_PORT="0", INBOX_METRICS_REFRESH_SECONDS="0.2")
    with inbox_process("run", env=env, log=tmp_path / "run.log") as service:
        base_url = service.url()
        prometheus = start_prometheus(base_url.removeprefix("http://"))
        # Scraped, and every dead-letter class is there at 0: the burst below is an increase.
        _wait(
            lambda: (
                prometheus.query('inbox_events_dead_total{job="quota-inbox",error_class="invalid"} == 0')
                and prometheus.query('up{job="quota-inbox"} == 1')
            ),
            "the first scrape of /metrics",
            prometheus.log,
        )
        _wait(lambda: prometheus.query("inbox:events_dead:rate5m"), "the first recorded rate", prometheus.log)
        assert prometheus.alerts("InboxDeadLetterRate") == []

        invalid = [titan_event(uuid.uuid4(), 1, direction="X") for _ in range(DEAD_LETTERS)]
        response = httpx.post(
            f"{base_url}/events",
            content="\n".join(to_json(e) for e in invalid),
            headers={"content-type": "application/x-ndjson"},
            timeout=10,
        )
        # invalid events are typed (every reason) by the workers: none finished at ingest
        assert response.json() == {"accepted": DEAD_LETTERS, "duplicates": 0, "finished": 0}

        firing = _wait(
            lambda: [a for a in prometheus.alerts("InboxDeadLetterRate") if a["state"] == "firing"],
            "InboxDeadLetterRate to fire",
            prometheus.log,
            timeout=90,
        )
        assert len(dead_letters(db)) == DEAD_LETTERS  # the workers of `inbox run` dead-lettered them
    (alert,) = firing
    assert alert["labels"] == {
        "alertname": "InboxDeadLetterRate",
        "job": "quota-inbox",
        "severity": "warning",
    }
    assert float(alert["value"]) >= 10
    assert "`inbox dlq list --since 1h`" in alert["annotations"]["runbook"]
    assert prometheus.alerts("InboxDatabaseDown") == []
    assert "Traceback" not in service.output()
