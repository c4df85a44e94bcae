"""Reconcile public.quota with Titan's truth (`inbox reconcile`), and repair the drift through the inbox.

Memory stays flat whatever the size: the source is read as a stream (a file of events in any format
the inbox accepts, or Titan's table through a server-side cursor), each event keyed and validated by
the inbox's own parsers (inbox/formats.py), and copied into a temp table with COPY. The comparison
is one SQL function, inbox.quota_drift (sql/functions), which a DBA can run against a table of their
own; its result lands in a second temp table, streamed out in quota_id order and repaired from in
batches.

A repair is an event of source 'reconcile' filed in the inbox (sql/queries.sql,
reconcile_file_repairs), never a write to public.quota: the workers apply it, so the version gate,
dead letters and the outbox apply as to any event, and `inbox quota show` tells it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from inbox.db.connect import connect
from inbox.db.errors import DatabaseError
from inbox.db.queries import Queries
from inbox.events import InvalidEvent, UnkeyableEvent
from inbox.formats import QUOTA_FIELDS, interpret, key_event, skip_reason

FORMAT = "inbox.reconcile/1"
DRIFTS = ("missing", "extra", "differs", "invalid")
VERSIONS = ("behind", "ahead", "same")
# Titan's quota table: the columns read from --source-table, by their Titan names.
TITAN_COLUMNS = ("quota_id", "version", *QUOTA_FIELDS)
MAX_PROBLEMS_SHOWN = 5
_FIRST_UUID = uuid.UUID(int=0)

Progress = Callable[[int], None]


class SourceUnreadable(Exception):
    """Events of the source that cannot be keyed: nothing was compared. problems: (index, reason)."""

    def __init__(self, problems: list[tuple[int | None, str]], total: int) -> None:
        self.problems = problems
        self.total = total
        shown = "; ".join(
            f"event {i}: {reason}" if i is not None else reason for i, reason in problems[:MAX_PROBLEMS_SHOWN]
        )
        more = f" (and {total - MAX_PROBLEMS_SHOWN} more)" if total > MAX_PROBLEMS_SHOWN else ""
        super().__init__(f"{shown}{more}")


@dataclass
class Loaded:
    """What was read from the source."""

    events: int = 0
    skipped: int = 0  # tombstones and truncates: not events
    invalid: int = 0  # keyed, but breaking CSLA's rules


@dataclass
class Summary:
    source_rows: int
    source_quotas: int
    csla_quotas: int
    skipped: int
    # (drift, versions) -> quotas
    counts: dict[tuple[str, str | None], int] = field(default_factory=dict)

    @property
    def drifting(self) -> int:
        return sum(self.counts.values())

    def by_drift(self) -> dict[str, int]:
        return {d: sum(n for (drift, _), n in self.counts.items() if drift == d) for d in DRIFTS}

    def by_versions(self) -> dict[str, int]:
        return {v: sum(n for (_, versions), n in self.counts.items() if versions == v) for v in VERSIONS}

    def as_json(self) -> dict[str, Any]:
        return {
            "record": "summary",
            "format": FORMAT,
            "source": {
                "rows": self.source_rows,
                "quotas": self.source_quotas,
                "duplicates": self.source_rows - self.source_quotas,
                "skipped": self.skipped,
            },
            "csla_quotas": self.csla_quotas,
            "drifting": self.drifting,
            "drift": self.by_drift(),
            "versions": self.by_versions(),
        }


@dataclass
class Repaired:
    run_id: uuid.UUID
    filed: int = 0
    refiled: int = 0
    in_flight: int = 0
    not_repaired: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "record": "repair",
            "run_id": self.run_id,
            "filed": self.filed,
            "refiled": self.refiled,
            "in_flight": self.in_flight,
            "not_repaired": self.not_repaired,
        }


# -- reading the source ---------------------------------------------------------------------------


def table_values(dsn: str, table: str, fetch: int = 10_000) -> Iterator[dict[str, Any]]:
    """Titan's table, read only, through a server-side cursor: each row as a flattened record (the
    format a JDBC sink writes), so that the inbox's parser judges it like any event."""
    try:
        with connect(dsn, application_name="quota-inbox reconcile source") as conn:
            conn.read_only = True
            rows = Queries(conn).stream_table(
                table, TITAN_COLUMNS, cursor_name="reconcile_source", fetch=fetch
            )
            for row in rows:
                yield {name: _as_event_value(value) for name, value in row.items()}
    except DatabaseError as exc:
        # One line naming the source, whatever failed: the connection, the table or a column.
        columns = ", ".join(TITAN_COLUMNS)
        reason = f"source table {table}: {exc} (it needs the columns {columns})"
        raise SourceUnreadable([(None, reason)], 1) from exc


def _as_event_value(value: Any) -> Any:
    """A column value as an event carries it: text for UUIDs, dates and times; Decimal stays exact."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _truth_row(item: int, value: Any) -> tuple[Any, ...] | None:
    """One source event as a row of reconcile_source; None for a tombstone or a truncate."""
    if skip_reason(value) is not None:
        return None
    key = key_event(value)
    try:
        row = interpret(value)
    except InvalidEvent as exc:
        return (item, key.quota_id, key.version, key.is_delete, str(exc), *([None] * 8))
    if row is None or key.is_delete:
        return (item, key.quota_id, key.version, True, None, *([None] * 8))
    return (
        item,
        key.quota_id,
        key.version,
        False,
        None,
        row.counterparty_id,
        row.direction,
        row.period_month,
        row.qty_t,
        row.tolerance_pct,
        row.incoterm_code,
        row.metal_code,
        row.source_updated_at,
    )


def load_source(queries: Queries, values: Iterable[Any], progress: Progress | None = None) -> Loaded:
    """Stream the source into pg_temp.reconcile_source with COPY; SourceUnreadable if an event cannot
    be keyed (then nothing is compared: a quota that cannot be read would look deleted at Titan)."""
    loaded = Loaded()
    problems: list[tuple[int | None, str]] = []
    unkeyable = 0
    queries.reconcile_create_source()
    with queries.conn.transaction(), queries.reconcile_copy_source() as write_row:
        for item, value in enumerate(values):
            try:
                row = _truth_row(item, value)
            except UnkeyableEvent as exc:
                unkeyable += 1
                if len(problems) < MAX_PROBLEMS_SHOWN:
                    problems.append((item, str(exc)))
                continue
            if row is None:
                loaded.skipped += 1
            else:
                loaded.events += 1
                loaded.invalid += row[4] is not None
                if not problems:
                    write_row(row)
            if progress is not None and item % 10_000 == 0:
                progress(item)
    if problems:
        raise SourceUnreadable(problems, unkeyable)
    queries.reconcile_analyze_source()
    return loaded


# -- comparing ------------------------------------------------------------------------------------


def compare(queries: Queries, loaded: Loaded) -> Summary:
    """Compare into pg_temp.reconcile_drift (inbox.quota_drift) and count."""
    queries.reconcile_compare()
    counts = queries.reconcile_counts()
    summary = Summary(
        source_rows=counts.source_rows,
        source_quotas=counts.source_quotas,
        csla_quotas=counts.csla_quotas,
        skipped=loaded.skipped,
    )
    for row in queries.reconcile_drift_counts():
        summary.counts[(row["drift"], row["versions"])] = row["quotas"]
    return summary


def drift_rows(queries: Queries, fetch: int = 5_000) -> Iterator[dict[str, Any]]:
    """The drift, quota by quota in quota_id order, through a server-side cursor."""
    with queries.conn.transaction():
        yield from queries.reconcile_drift_rows(cursor_name="reconcile_drift", fetch=fetch)


def extra_to_delete(summary: Summary) -> int:
    return summary.by_drift()["extra"]


def repair(queries: Queries, batch_size: int = 5_000, progress: Progress | None = None) -> Repaired:
    """File the corrections through the inbox, one transaction per batch; wake the workers."""
    result = Repaired(run_id=uuid.uuid4())
    after = _FIRST_UUID
    done = 0
    while True:
        with queries.conn.transaction():
            batch = queries.reconcile_file_repairs(after=after, limit=batch_size, run_id=result.run_id)
            if batch.last_quota_id is None:
                break
            if batch.filed or batch.refiled:
                queries.wake_workers()
        result.filed += batch.filed
        result.refiled += batch.refiled
        result.in_flight += batch.in_flight
        result.not_repaired += batch.not_repaired
        done += batch.filed + batch.refiled + batch.in_flight + batch.not_repaired
        if progress is not None:
            progress(done)
        after = batch.last_quota_id
    return result


# -- what an operator reads -----------------------------------------------------------------------


def _value(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, Decimal | int):
        return str(value)
    return repr(value)


def _version(version: int | None, deleted: bool | None) -> str:
    if version is None:
        return "none"
    return f"v{version}{' delete' if deleted else ''}"


def drift_line(row: dict[str, Any]) -> str:
    """One line per drifting quota: what differs, with both values (exact digits)."""
    gate = _version(row["gate_version"], row["gate_deleted"])
    versions = row["versions"] or "-"
    head = (
        f"{row['drift']:<8} {row['quota_id']}  {versions:<6}  "
        f"source {_version(row['source_version'], row['source_deleted'])}, "
        f"CSLA {_version(row['csla_version'], False) if row['csla'] is not None else 'no row'} (gate {gate})"
    )
    if row["drift"] == "invalid":
        return f"{head}: {row['invalid']}"
    if row["drift"] == "differs" and row["columns"]:
        source, csla = row["source"], row["csla"]
        details = "; ".join(
            f"{c} source {_value(source.get(c))}, CSLA {_value(csla.get(c))}" for c in row["columns"]
        )
        return f"{head}: {details}"
    return head


def summary_lines(summary: Summary) -> list[str]:
    drift = summary.by_drift()
    versions = summary.by_versions()
    duplicates = summary.source_rows - summary.source_quotas
    lines = [
        f"source: {summary.source_quotas} quotas in {summary.source_rows} events"
        + (f" ({duplicates} repeated: the highest version taken)" if duplicates else "")
        + (f", {summary.skipped} tombstones/truncates skipped" if summary.skipped else ""),
        f"CSLA: {summary.csla_quotas} quotas",
    ]
    if not summary.drifting:
        lines.append("no drift: public.quota equals the source")
        return lines
    lines.append(
        f"drift: {summary.drifting} quotas: {drift['missing']} missing in CSLA, "
        f"{drift['extra']} extra in CSLA, {drift['differs']} differ, "
        f"{drift['invalid']} invalid at the source; versions: "
        f"{versions['behind']} behind, {versions['ahead']} ahead, {versions['same']} same"
    )
    return lines


def repair_line(repaired: Repaired) -> str:
    return (
        f"repair run {repaired.run_id}: filed {repaired.filed} new events and {repaired.refiled} over "
        f"finished events of the same key; left {repaired.in_flight} to events in flight; "
        f"{repaired.not_repaired} not repaired (the notes are in `inbox quota show`). The workers apply "
        "the repairs: reconcile again once the inbox has drained"
    )
