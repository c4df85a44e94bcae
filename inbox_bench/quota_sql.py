"""The version-gated upsert into public.quota that the benchmark's own SQL writes: the seed's design
(seed_app, one row per call) and the ceilings (ceiling, set-based from the stored payloads).
The service's own upsert is sql/functions/inbox.apply_events.sql; these stand in for it."""

from __future__ import annotations

from dataclasses import fields

from inbox.events import QuotaRow

# The key, then a validated event's fields, which are named as their columns: (quota_id, version,
# *astuple(row)) lines up with them.
COLUMN_NAMES = ("quota_id", "source_version", *(f.name for f in fields(QuotaRow)))
COLUMNS = ", ".join(COLUMN_NAMES)

ON_CONFLICT = "ON CONFLICT (quota_id) DO UPDATE SET " + ", ".join(
    [*(f"{c} = excluded.{c}" for c in COLUMN_NAMES[1:]), "updated_at = now()"]
)

# The gate of a plain upsert: an older event never overwrites a newer one.
NEWER_ONLY = "WHERE q.source_version < excluded.source_version"


def payload_values(alias: str) -> str:
    """The SELECT list of COLUMNS from a row `alias` with quota_id, version and d (the event's data
    object), cast from the stored text as the ceilings do instead of validating it."""
    a = alias
    return (
        f"{a}.quota_id, {a}.version, {a}.d ->> 'counterparty_id', {a}.d ->> 'direction',"
        f" date_trunc('month', ({a}.d ->> 'period_month')::date)::date, ({a}.d ->> 'qty_t')::numeric,"
        f" ({a}.d ->> 'tolerance_pct')::numeric, {a}.d ->> 'incoterm_code', {a}.d ->> 'metal_code',"
        f" ({a}.d ->> 'updated_at')::timestamptz"
    )
