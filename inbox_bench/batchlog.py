"""Path 3c: a batch-oriented inbox (PgQ's batch log) in SQL alone, beside the honest ceiling (3b,
ceiling.py): the same events, 2 sessions, the same chunks, the same end state.

Ingest: each session COPYs its share, 500 events per transaction, into the current rotated event
table (append-only; the table's name read under the rotation lock, the ingest counted as
inbox.ingest_typed_events counts it), with the typed columns the edge reads (inbox.ingest.parse_texts,
run before the clock starts) beside the payload. Keyed: the tables have a unique (quota_id,
version, is_delete); a chunk that holds a stored key (a redelivery: the COPY fails) goes again
through a temporary stage and INSERT ... ON CONFLICT DO NOTHING, its duplicates counted (checked
untimed after ingest: the last chunk sent again). Unkeyed: no unique index; a redelivery is stored
again and ends stale at the gate.

A ticker (a third session, as PgQ's pgqd) records pg_current_snapshot() each time 500 more event
ids were drawn, and once more when ingest is over; each tick makes a batch. Apply: each session
repeats one statement (batchlog_sql.APPLY) that takes the oldest unfinished batch, applies it and
finishes it, until every batch is finished. During the apply the ticker rotates the event tables:
the first one, once all its batches are finished, is TRUNCATEd (retention without deletes).

The end state is compared with ceiling_honest's of the same run (quota rows, gate, outbox
messages, dead letters: measure.END_STATE), and every stored event's outcome is read back from the
batches (batchlog.v_event_status).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg

from inbox.db.connect import DictConnection, connect
from inbox.ingest import parse_texts
from inbox_bench.batchlog_sql import (
    APPLY,
    CHECK,
    COPY_LIST,
    FUNCTIONS,
    NTABLES,
    ROTATION_LOCK,
    STORED_STATUS,
    TYPED,
    TYPED_COLUMN_NAMES,
    TYPED_COLUMNS,
    partition,
    schema,
)
from inbox_bench.ceiling import SESSION, backend_pid
from inbox_bench.cluster import Cluster, scalar
from inbox_bench.config import Config
from inbox_bench.events import Stream
from inbox_bench.measure import Measurement, Phases, end_state
from inbox_bench.threads import on_threads

TICK_POLL_SECONDS = 0.005  # while ingest runs: a tick per 500 events at up to 100,000 events/s
ROTATE_POLL_SECONDS = 0.02  # afterwards, the rotation's check
# the columns ingest COPYs, typed as the event tables' (none of their defaults or constraints)
STAGE = (
    f"CREATE TEMP TABLE stage ON COMMIT DELETE ROWS AS SELECT {COPY_LIST} FROM batchlog.events WITH NO DATA"
)
INGEST_TABLE = "SELECT batchlog.ingest_table(%s) AS tbl"
INGEST_STAGED = "SELECT batchlog.ingest_staged() AS stored"
COPY = f"COPY {{}} ({COPY_LIST}) FROM STDIN"
# the rotation waits this long for the apply sessions' reads of the table it truncates, then retries
ROTATION_LOCK_TIMEOUT = "SET lock_timeout = '2s'"
# what ceiling_honest's end state must equal (measure.END_STATE) and what both report
COMPARED = (
    "quota_rows",
    "quota_digest",
    "gate_rows",
    "gate_version_sum",
    "gate_digest",
    "outbox_digest",
    "dead_letters",
)


def _value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | int | str):
        return str(value)
    raise TypeError(f"no COPY text for {type(value).__name__}")


def typed_copy_rows(stream: Stream, start: int, stop: int) -> str:
    """Event rows in COPY text format with the typed columns the edge reads (parse_texts, as
    `inbox serve` does); an upsert the edge could not type would be stored with its errors."""
    texts = stream.texts(start, stop)
    parsed = parse_texts(texts)
    if len(parsed.rows) != len(texts):
        raise RuntimeError("the edge did not read a row per event of the benchmark's stream")
    lines = []
    for (quota_id, version, is_delete), text, row in zip(
        stream.keys(start, stop), texts, parsed.rows, strict=True
    ):
        if row is None and not is_delete:
            errors, typed = '{"the edge could not type this upsert"}', [None] * len(TYPED)
        else:
            errors = "\\N"
            typed = [None] * len(TYPED) if row is None else [getattr(row, c) for c in TYPED]
        fields = [
            quota_id,
            str(version),
            "t" if is_delete else "f",
            "http",
            errors,
            *map(_value, typed),
            text,
        ]
        lines.append("\t".join(fields) + "\n")
    return "".join(lines)


class Ticker(threading.Thread):
    """PgQ's ticker on a session of its own: a tick per `every` event ids drawn while ingest runs,
    a last one when it is over; then the rotation, until the apply is over."""

    def __init__(self, conn: DictConnection, every: int, rotate_events: int) -> None:
        super().__init__(name="batchlog-ticker", daemon=True)
        self.conn, self.every, self.rotate_events = conn, every, rotate_events
        self.ingest_done, self.ticked_all, self.apply_done = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        self.error: BaseException | None = None
        self.rotations: list[dict[str, Any]] = []

    def run(self) -> None:
        try:
            while not self.ingest_done.is_set():
                self._tick(self.every)
                self._rotate()
                time.sleep(TICK_POLL_SECONDS)
            # Every ingest has committed: one more tick, whatever the sequence says (a COPY that drew
            # its ids before the last tick and committed after it is in no batch yet).
            self._tick(0)
            self.ticked_all.set()
            while not self.apply_done.is_set():
                self._rotate()
                time.sleep(ROTATE_POLL_SECONDS)
            # A run too short to fill a table past a finished one (--quick on a busy machine) still
            # shows a truncation: switch tables until one that held events was emptied.
            for _ in range(NTABLES):
                if any(r["truncated"] for r in self.rotations):
                    break
                self._rotate(0, "after apply")
        except BaseException as exc:
            self.error = exc
            self.ticked_all.set()

    def _tick(self, every: int) -> int | None:
        tick = _one(self.conn, "SELECT batchlog.tick(%s) AS t", [every])
        return None if tick is None else int(tick)

    def _rotate(self, rotate_events: int | None = None, during: str | None = None) -> None:
        started = time.perf_counter()
        every = self.rotate_events if rotate_events is None else rotate_events
        row = self.conn.execute("SELECT * FROM batchlog.rotate(%s)", [every], prepare=True).fetchone()
        if row is not None and row["switched_to"] is not None:
            self.rotations.append(
                {
                    "switched_to": f"events_{row['switched_to']}",
                    "truncated": row["truncated"],
                    "truncated_events": row["truncated_events"],
                    "seconds": round(time.perf_counter() - started, 4),
                    "during": during or ("apply" if self.ingest_done.is_set() else "ingest"),
                }
            )


def batch_ceiling(
    cluster: Cluster, stream: Stream, cfg: Config, honest: Measurement | None, keyed: bool, sessions: int = 2
) -> Measurement:
    name = "keyed" if keyed else "unkeyed"
    dsn = cluster.database(f"ceiling_batch_{name}", seeded=True)
    batches = stream.batches(cfg.batch_size)
    # made before the clock starts, as ceiling_honest's: the step times the database
    shares = [[typed_copy_rows(stream, a, z) for a, z in batches[i::sessions]] for i in range(sessions)]
    with connect(dsn, autocommit=True) as conn:
        typed = _one(conn, TYPED_COLUMNS, {"names": TYPED_COLUMN_NAMES})
        conn.execute(schema(typed))
        for tbl in range(NTABLES):
            conn.execute(partition(tbl, keyed))
        conn.execute(FUNCTIONS)
    conns = [connect(dsn, autocommit=True) for _ in range(sessions)]
    ticker_conn = connect(dsn, autocommit=True)
    ticker = Ticker(ticker_conn, cfg.batch_size, rotate_events=max(cfg.batch_size, len(stream) // 4))
    try:
        ticker_conn.execute(ROTATION_LOCK_TIMEOUT)
        for conn in conns:
            conn.execute(SESSION)
            if keyed:
                conn.execute(STAGE)
        pids = {"postgres": cluster.postmaster_pid()}
        pids.update({f"postgres session {i + 1}": backend_pid(c) for i, c in enumerate(conns)})
        pids["postgres ticker"] = backend_pid(ticker_conn)
        pids["bench client"] = os.getpid()

        fallbacks = [0] * sessions

        def store(i: int, rows: str) -> None:
            """One chunk, one transaction: COPY into the current table; keyed, a chunk that holds a
            key the table has (a redelivery) goes again through the stage, its duplicates skipped."""
            conn = conns[i]
            try:
                with conn.transaction():
                    table = _one(conn, INGEST_TABLE, [rows.count("\n")])
                    with conn.cursor().copy(COPY.format(table)) as copy:
                        copy.write(rows)
            except psycopg.errors.UniqueViolation:
                if not keyed:
                    raise
                fallbacks[i] += 1
                with conn.transaction():
                    with conn.cursor().copy(COPY.format("pg_temp.stage")) as copy:
                        copy.write(rows)
                    conn.execute(INGEST_STAGED, prepare=True)

        def ingest(i: int) -> int:
            for rows in shares[i]:
                store(i, rows)
            return len(shares[i])

        def apply(i: int) -> int:
            calls = 0
            while True:
                row = conns[i].execute(APPLY, prepare=True).fetchone()
                calls += 1
                if row is None:  # no batch left unclaimed
                    if ticker.ticked_all.is_set() and not scalar(
                        conns[i], "SELECT count(*) AS n FROM batchlog.batch WHERE finished_at IS NULL"
                    ):
                        return calls
                    time.sleep(0.001)

        phases = Phases(pids, len(stream))
        with phases.phase("ingest"):
            ticker.start()
            _, copies = on_threads(sessions, ingest, "batchlog-ingest")
        redelivered = _redeliver(conns[0], store) if keyed else 0  # untimed
        ticker.ingest_done.set()
        with phases.phase("apply"):
            _, calls = on_threads(sessions, apply, "batchlog-apply")
        ticker.apply_done.set()
        ticker.join(30)
        if ticker.error is not None:
            raise RuntimeError(f"the ticker failed: {ticker.error}") from ticker.error
        conn = conns[0]
        row = conn.execute(CHECK).fetchone()
        assert row is not None
        check = {k: int(v) for k, v in row.items()}
        stored = {
            str(r["status"]): (int(r["n"]), int(r["distinct_events"]))
            for r in conn.execute(STORED_STATUS).fetchall()
        }
        state = end_state(conn)
        messages = int(scalar(conn, "SELECT count(*) AS n FROM pgmq.q_quota_changes"))
        duplicates = int(
            scalar(
                conn,
                "SELECT coalesce(sum(value), 0) AS n FROM inbox.metric_counters WHERE metric = 'duplicate'",
            )
        )
    finally:
        for conn in [*conns, ticker_conn]:
            conn.close()
    problems = _problems(len(stream), check, stored)
    if duplicates != redelivered or sum(fallbacks) != (1 if redelivered else 0):
        problems.append(f"{redelivered} events sent again, {duplicates} counted as duplicates")
    if problems:
        raise RuntimeError(f"the batch log ({name}) lost track of events: {'; '.join(problems)}")
    statuses = {s: check[s] for s in ("applied", "stale", "dead") if check[s]}
    detail: dict[str, Any] = {
        "sessions": sessions,
        "keyed": keyed,
        "batch_size": cfg.batch_size,
        "copy_calls": copies,
        "apply_calls": calls,
        "batches": check["batches"],
        "mean_batch_events": round(check["batched_events"] / max(check["batches"], 1), 1),
        "largest_batch_events": check["largest_batch"],
        "statuses": statuses,  # from the batches' counts: every event, the truncated ones too
        "outcome_rows": check["outcome_rows"],
        "duplicates": duplicates,  # keyed: the redelivered chunk's events, none of them stored
        "redelivered_events": redelivered,
        "chunks_through_stage": sum(fallbacks),
        "stored_events_after_retention": check["stored_events"],
        "stored_statuses": {s: n for s, (n, _) in stored.items()},  # read back event by event
        "rotations": ticker.rotations,
        "truncated_events": check["truncated_events"],
        "outbox_messages": messages,
        "end_state": state,
        "cpu_note": "postgres = every server process; each session = its backend; ticker = the ticker's"
        " backend (ticks during ingest, rotation during apply); bench client = this process",
    }
    if honest is not None and "end_state" in honest.detail:
        theirs = honest.detail["end_state"]
        differ = [k for k in COMPARED if state[k] != theirs.get(k)]
        if statuses != honest.detail.get("statuses"):
            differ.append("statuses")
        if detail["outbox_messages"] != honest.detail.get("outbox_messages"):
            differ.append("outbox_messages")
        detail["same_end_state_as_ceiling_honest"] = not differ
        detail["end_state_differences"] = differ
    else:
        detail["same_end_state_as_ceiling_honest"] = None  # ceiling_honest not in this run
    return phases.measurement(
        "ceiling_batch" if keyed else "ceiling_batch_unkeyed",
        f"3c. batch log ({name}): SQL only, 2 sessions",
        detail,
    )


def _one(conn: DictConnection, statement: str, params: list[Any] | dict[str, Any]) -> Any:
    row = conn.execute(statement, params, prepare=True).fetchone()
    assert row is not None
    return next(iter(row.values()))


def _redeliver(conn: DictConnection, store: Callable[[int, str], None]) -> int:
    """Send again up to a chunk of events the current table holds, as a producer retrying after a
    lost answer would: each must be counted as a duplicate and nothing stored. Returns how many
    (none when a rotation right after the last COPY left the current table empty). The rotation
    lock, held shared meanwhile, keeps the current table current."""
    conn.execute("SELECT pg_advisory_lock_shared(%s)", [ROTATION_LOCK])
    try:
        table = scalar(conn, "SELECT 'batchlog.events_' || cur_table AS t FROM batchlog.queue")
        query = f"COPY (SELECT {COPY_LIST} FROM {table} ORDER BY id LIMIT 500) TO STDOUT"
        with conn.cursor().copy(query) as copy:
            rows = b"".join(bytes(data) for data in copy).decode("utf-8")
        if rows:
            store(0, rows)
    finally:
        conn.execute("SELECT pg_advisory_unlock_shared(%s)", [ROTATION_LOCK])
    return rows.count("\n")


def _problems(events: int, check: dict[str, int], stored: dict[str, tuple[int, int]]) -> list[str]:
    problems = []
    if check["open_batches"]:
        problems.append(f"{check['open_batches']} batches left unfinished")
    if check["batched_events"] != events:
        problems.append(f"the batches hold {check['batched_events']} events, {events} were sent")
    if check["applied"] + check["stale"] + check["dead"] != check["batched_events"]:
        problems.append("the batches' outcomes do not add up to their events")
    if check["stale"] + check["dead"] != check["outcome_rows"]:
        problems.append(
            f"{check['outcome_rows']} outcome rows for {check['stale'] + check['dead']} not applied"
        )
    read_back = sum(n for n, _ in stored.values())
    if read_back != check["stored_events"] or any(n != d for n, d in stored.values()):
        problems.append(f"{read_back} outcomes read back for {check['stored_events']} stored events")
    if set(stored) - {"applied", "stale", "dead"}:
        problems.append(f"stored events not finished: {stored}")
    if not check["truncations"]:
        problems.append("no event table was truncated during the run")
    return problems
