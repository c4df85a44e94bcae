"""Issue 13: the apply's updates of the version gate and of the quota row are HOT updates.

An update is HOT (no new index entry in any index, nothing for vacuum to remove from them) only when
it changes no column an index names and the new row version fits on its page. Every apply updates
one gate row (inbox.quota_versions) and one quota row (public.quota) per quota; migration 022 keeps
the columns it sets out of those tables' indexes and leaves room on public.quota's pages.
"""

from __future__ import annotations

import uuid

from inbox.db.connect import DictConnection
from inbox.db.queries import Queries
from tests.helpers import ingest, titan_event

QUOTAS = 200


def _apply_all(db: DictConnection, events: int) -> None:
    """Claim and apply `events` due events in one transaction, as a worker's batch."""
    with db.transaction():
        keys = Queries(db).claim_batch(events)
        assert Queries(db).process_batch(ledger=None, keys=keys, max_attempts=5).applied == events


def _updates(db: DictConnection) -> dict[str, tuple[int, int]]:
    """Per table, (updates, HOT updates) so far, this session's included (flushed when it went idle)."""
    db.execute("SELECT pg_stat_force_next_flush()")
    db.execute("SELECT pg_stat_clear_snapshot()")
    rows = db.execute(
        "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE relid IN ('inbox.quota_versions'::regclass, 'public.quota'::regclass)"
    ).fetchall()
    return {r["relname"]: (r["n_tup_upd"], r["n_tup_hot_upd"]) for r in rows}


def test_the_apply_updates_gate_and_quota_rows_in_place(db: DictConnection) -> None:
    """Full pages of seeded rows, then rounds of updates of a tenth of them, each its own transaction
    (as the workers' batches are: a later round's page prune reclaims an earlier round's versions)."""
    quotas = [uuid.uuid4() for _ in range(QUOTAS)]
    ingest(db, [titan_event(q, 1, "INSERT") for q in quotas])
    _apply_all(db, QUOTAS)
    changed = quotas[::10]
    before = _updates(db)
    for version in range(2, 5):
        ingest(db, [titan_event(q, version, "UPDATE", qty_t=f"{version}50.125") for q in changed])
        _apply_all(db, len(changed))
    after = _updates(db)
    totals = {t: (after[t][0] - before[t][0], after[t][1] - before[t][1]) for t in after}

    # every gate and quota update is HOT (before 022: no gate update was, its applied_at being a key of
    # quota_versions_deleted_idx; public.quota at fillfactor 100 had no room on its full pages)
    n = 3 * len(changed)
    assert totals == {"quota_versions": (n, n), "quota": (n, n)}


def test_no_index_of_gate_or_quota_names_a_column_the_apply_sets(db: DictConnection) -> None:
    """The apply sets every column of both tables but the keys (quota_id) and public.quota's
    created_at: an index on any other column, in its key or its predicate, makes each update non-HOT."""
    rows = db.execute(
        "SELECT i.indexrelid::regclass::text AS index, a.attname"
        " FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0"
        " AND NOT a.attisdropped"
        " WHERE i.indrelid IN ('inbox.quota_versions'::regclass, 'public.quota'::regclass)"
        " AND (a.attnum = ANY (i.indkey)"
        "      OR pg_get_expr(i.indpred, i.indrelid) ~ ('\\m' || a.attname || '\\M')"
        "      OR pg_get_expr(i.indexprs, i.indrelid) ~ ('\\m' || a.attname || '\\M'))"
        " AND a.attname NOT IN ('quota_id', 'created_at')"
    ).fetchall()
    assert rows == []
