"""H3: no role that may CREATE in schema public can get its code run by the service's own functions.

Every function the project defines pins search_path to pg_catalog, pg_temp, so a planted
public.array_agg(text) (an exact match beats pg_catalog's polymorphic one) is never picked up.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

import pytest
from psycopg import sql

from inbox.db.connect import DictConnection
from tests.helpers import dead_letters, drain, ingest, titan_event

_names = itertools.count()


def test_every_function_of_the_project_pins_its_search_path(db: DictConnection) -> None:
    rows = db.execute(
        """SELECT p.oid::regprocedure::text AS name, p.proconfig
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname IN ('inbox', 'public')
             AND NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
           ORDER BY 1"""
    ).fetchall()
    assert len(rows) >= 19
    unpinned = [r["name"] for r in rows if "search_path=pg_catalog, pg_temp" not in (r["proconfig"] or [])]
    assert unpinned == []


# Overloads that beat pg_catalog's polymorphic built-ins by an exact type match, for the calls the
# project's functions and triggers make. Each one, when run, tries to make its author superuser.
_PLANTS = """
CREATE FUNCTION public.planted_escalate() RETURNS void LANGUAGE plpgsql AS $p$
BEGIN
    EXECUTE format('ALTER ROLE %I SUPERUSER', {planter});
EXCEPTION WHEN OTHERS THEN NULL;
END $p$;
CREATE FUNCTION public.planted_step(anyarray, anyelement) RETURNS anyarray LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_escalate(); RETURN $1 || $2; END $p$;
CREATE FUNCTION public.planted_max(anyarray, anyarray) RETURNS anyarray LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_escalate(); RETURN CASE WHEN $1 IS NULL OR $2 > $1 THEN $2 ELSE $1 END; END $p$;
CREATE FUNCTION public.planted_jsonb(jsonb, jsonb) RETURNS jsonb LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_escalate(); RETURN coalesce($1, '[]') || jsonb_build_array($2); END $p$;
CREATE AGGREGATE public.array_agg(text) (SFUNC = public.planted_step, STYPE = text[]);
CREATE AGGREGATE public.array_agg(uuid) (SFUNC = public.planted_step, STYPE = uuid[]);
CREATE AGGREGATE public.array_agg(jsonb) (SFUNC = public.planted_step, STYPE = jsonb[]);
CREATE AGGREGATE public.array_agg(boolean) (SFUNC = public.planted_step, STYPE = boolean[]);
CREATE AGGREGATE public.array_agg(double precision) (SFUNC = public.planted_step, STYPE = float8[]);
CREATE AGGREGATE public.max(bigint[]) (SFUNC = public.planted_max, STYPE = bigint[]);
CREATE AGGREGATE public.jsonb_agg(jsonb) (SFUNC = public.planted_jsonb, STYPE = jsonb);
CREATE FUNCTION public.width_bucket(double precision, double precision[]) RETURNS integer
LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_escalate(); RETURN pg_catalog.width_bucket($1, $2); END $p$;
CREATE FUNCTION public.cardinality(uuid[]) RETURNS integer LANGUAGE plpgsql AS $p$
BEGIN PERFORM public.planted_escalate(); RETURN pg_catalog.cardinality($1); END $p$;
"""


@pytest.fixture
def planter(db: DictConnection) -> Iterator[str]:
    """A role whose only right is CREATE on schema public (pre-PostgreSQL 15 gave that to PUBLIC)."""
    name = f"planter_{os.getpid()}_{next(_names)}"
    db.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    db.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(name)))
    try:
        db.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(name)))
        db.execute(_PLANTS.replace("{planter}", sql.Literal(name).as_string(db)).encode())
        db.execute("RESET ROLE")
        yield name
    finally:
        db.execute("RESET ROLE")
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _is_superuser(db: DictConnection, role: str) -> bool:
    row = db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    assert row is not None
    return bool(row["rolsuper"])


def test_a_role_that_may_create_in_public_cannot_climb_through_the_owners_operations(
    db: DictConnection, dsn: str, planter: str
) -> None:
    # the owner's everyday operations: ingest, the apply with its counter triggers, a dead letter,
    # its replay and resolution, the sink trigger, the status views, the jobs' functions
    quota_id, other = uuid.uuid4(), uuid.uuid4()
    ingest(db, [titan_event(quota_id, 1, "INSERT"), titan_event(other, 1, "INSERT")])
    drain(dsn)
    db.execute("INSERT INTO public.call_off (quota_id, qty_t) VALUES (%s, 1)", [quota_id])
    ingest(db, [titan_event(quota_id, 2, "DELETE")])
    drain(dsn)
    [letter] = dead_letters(db)
    db.execute("SELECT * FROM inbox.replay_dead_letters(%s::uuid[], 'replayed')", [[letter["id"]]])
    drain(dsn)
    [again] = dead_letters(db)
    db.execute("SELECT inbox.resolve_dead_letter(%s, 'left alone')", [again["id"]])
    db.execute(
        "INSERT INTO inbox.titan_quota_sink (quota_id, version, counterparty_id, __op) "
        "VALUES (%s, 3, 'X', 'u')",
        [other],
    )
    drain(dsn)
    db.execute("SELECT * FROM inbox.v_status")
    db.execute("SELECT * FROM inbox.v_lag")
    db.execute("SELECT * FROM inbox.v_dead_letters")
    db.execute("SELECT inbox.fold_counters('0 seconds')")
    db.execute("SELECT * FROM inbox.check_dead_letter_rate('1 hour', 1)")
    for _ in range(2):  # a ledger row of a session that never was; the second call releases it
        db.execute(
            "SELECT inbox.record_claim('w', 0, 1, %s, '{1}', '{false}', 5, '1 second', '1 minute')",
            [[other]],
        )
    db.execute("SELECT * FROM inbox.reap_abandoned_claims(10, 5, '1 second', '1 minute')")
    db.execute("SELECT inbox.purge_finished_events('0 seconds', 100)")

    assert not _is_superuser(db, planter)

    # The plants were armed: the same call outside the service's functions runs one.
    db.execute("SELECT array_agg(x) FROM (VALUES ('a'::text)) v(x)")
    assert _is_superuser(db, planter)
