"""`inbox quota show` and `inbox reconcile` as a subprocess against a real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

from inbox.db.connect import DictConnection
from tests.acceptance.test_cli_ops import ok
from tests.helpers import drain, ingest, titan_event, to_json
from tests.processes import one_line_error, run_inbox


def ndjson(path: Path, events: list[dict[str, object]]) -> str:
    path.write_text("\n".join(to_json(e) for e in events) + "\n")
    return str(path)


def test_quota_show_text_and_json(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 2, "INSERT", qty_t=Decimal("5.000"))])
    drain(dsn)
    ingest(db, [titan_event(quota_id, 1)])
    drain(dsn)

    text = ok(run_inbox("quota", "show", str(quota_id), database_url=dsn))
    assert text.splitlines()[0].startswith(f"quota {quota_id}: at v2 from http, applied ")
    assert "v1 (http) was stale" in text.splitlines()[0]
    assert "qty_t              5.000" in text

    document = json.loads(
        ok(run_inbox("quota", "show", str(quota_id), "--json", database_url=dsn)), parse_float=Decimal
    )
    assert document["format"] == "inbox.quota_story/1"
    assert str(document["quota"]["qty_t"]) == "5.000"  # a JSON number with its stored digits
    assert [e["status"] for e in document["events"]] == ["stale", "applied"]
    assert [m["message"]["version"] for m in document["outbox"]] == [2]


def test_quota_show_of_an_unknown_quota_exits_1(dsn: str) -> None:
    result = run_inbox("quota", "show", str(uuid.uuid4()), database_url=dsn)
    assert result.returncode == 1 and "unknown quota" in result.stdout


def test_reconcile_exit_codes_report_and_repair(db: DictConnection, dsn: str, tmp_path: Path) -> None:
    kept, edited, extra = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(q, 3, "INSERT") for q in (kept, edited, extra)])
    drain(dsn)
    db.execute("UPDATE public.quota SET qty_t = 1 WHERE quota_id = %s", [edited])
    truth = ndjson(tmp_path / "titan.ndjson", [titan_event(kept, 3), titan_event(edited, 3)])

    found = run_inbox("reconcile", truth, database_url=dsn)
    assert found.returncode == 1, found.stderr
    lines = found.stdout.splitlines()
    assert f"differs  {edited}  same    source v3, CSLA v3 (gate v3): qty_t source 100.000, CSLA 1" in lines
    assert f"extra    {extra}  -       source none, CSLA v3 (gate v3)" in lines
    assert any(
        line.startswith("drift: 2 quotas: 0 missing in CSLA, 1 extra in CSLA, 1 differ") for line in lines
    )
    assert found.stderr == ""  # no progress bar off a terminal

    records = [
        json.loads(line)
        for line in ok_1(
            run_inbox("reconcile", "--json", "-", database_url=dsn, stdin=Path(truth).read_text())
        )
    ]
    assert [r["record"] for r in records] == ["drift", "drift", "summary"]
    assert records[-1]["drift"] == {"missing": 0, "extra": 1, "differs": 1, "invalid": 0}

    refused = run_inbox("reconcile", truth, "--repair", "--max-deletes", "0", database_url=dsn)
    assert "repair refused: it would delete 1 quotas" in one_line_error_after_report(refused)

    repaired = run_inbox("reconcile", truth, "--repair", database_url=dsn)
    assert repaired.returncode == 1, repaired.stderr
    assert "filed 1 new events and 1 over finished events" in repaired.stdout
    drain(dsn)
    clean = run_inbox("reconcile", truth, database_url=dsn)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no drift: public.quota equals the source" in clean.stdout

    story = json.loads(ok(run_inbox("quota", "show", str(edited), "--json", database_url=dsn)))
    assert story["gate"]["source"] == "reconcile"
    assert story["repairs"][0]["outcome"] == "refiled" and story["repairs"][0]["columns"] == ["qty_t"]


def ok_1(result: object) -> list[str]:
    """stdout lines of a run that found drift (exit 1)."""
    assert getattr(result, "returncode") == 1, getattr(result, "stderr")  # noqa: B009
    return [line for line in getattr(result, "stdout").splitlines() if line]  # noqa: B009


def one_line_error_after_report(result: object) -> str:
    """A repair refused: the report on stdout, one error line on stderr, exit 2."""
    return one_line_error(result, 2)  # type: ignore[arg-type]


def test_an_unreadable_source_compares_nothing(dsn: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_text(to_json(titan_event(uuid.uuid4(), 1)) + '\n{"data": {"quota_id": 7}}\n')
    line = one_line_error(run_inbox("reconcile", str(bad), database_url=dsn), 2)
    assert "nothing compared, the source cannot be read: event 1: data.quota_id must be a UUID" in line

    broken = tmp_path / "broken.json"
    broken.write_text("[" + to_json(titan_event(uuid.uuid4(), 1)) + ",")
    assert "the array is not closed" in one_line_error(
        run_inbox("reconcile", str(broken), database_url=dsn), 2
    )
    assert "cannot read" in one_line_error(
        run_inbox("reconcile", str(tmp_path / "nope"), database_url=dsn), 2
    )
    assert "not both" in one_line_error(
        run_inbox("reconcile", str(bad), "--source-dsn", dsn, "--source-table", "t", database_url=dsn), 2
    )


def test_reconcile_reads_titans_table_read_only(db: DictConnection, dsn: str) -> None:
    quota_id = uuid.uuid4()
    ingest(db, [titan_event(quota_id, 1, "INSERT")])
    drain(dsn)
    db.execute(
        "CREATE TABLE public.titan_quota AS SELECT quota_id, source_version AS version, counterparty_id,"
        " direction, period_month, qty_t, tolerance_pct, incoterm_code, metal_code,"
        " source_updated_at AS updated_at FROM public.quota"
    )
    result = run_inbox(
        "reconcile", "--source-dsn", dsn, "--source-table", "public.titan_quota", database_url=dsn
    )
    assert result.returncode == 0, result.stdout + result.stderr
    missing = run_inbox("reconcile", "--source-dsn", dsn, "--source-table", "public.nope", database_url=dsn)
    assert "source table public.nope" in one_line_error(missing, 2)
