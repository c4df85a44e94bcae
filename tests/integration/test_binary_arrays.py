"""inbox/db/binary.py: each packed array parameter is read by PostgreSQL as the very array psycopg's
own dumping of the same list gives (compared in PostgreSQL, as text and by equality), and a column
it cannot pack is left to psycopg as it is."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from inbox.db import binary
from inbox.db.connect import DictConnection

TEXTS = ["CU", "Zürich ✓", "", " x ", "a\nb", "\u2028", "😀" * 3, "CU"]
IDS = [str(uuid.UUID(int=n * 7919)) for n in range(1, 40)]
INSTANTS = [
    datetime(2026, 3, 1, 10, 2, tzinfo=UTC),
    datetime(2026, 3, 1, 12, 2, tzinfo=timezone(timedelta(hours=2))),  # the same instant
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-15, minutes=-59))),
    datetime(2000, 1, 1, tzinfo=UTC),
]

# (packer, the array type the query casts to, columns of values)
CASES: list[tuple[Callable[[Any], Any], str, list[list[Any]]]] = [
    (
        binary.text_array,
        "text[]",
        [
            TEXTS,
            [*TEXTS, None],
            [None, "BUY", "SELL", "BUY", "BUY", None],  # few distinct values
            IDS,  # one width: one text
            [*IDS[:5], "ü" * 36],  # one width, not ASCII
            [None] * 4,
            [],
        ],
    ),
    (
        binary.decimal_text_array,
        "text[]::numeric[]",
        [
            [Decimal("1250.500"), Decimal("1E+3"), Decimal("-0.0"), Decimal("0E-7"), Decimal("1e-7")],
            [None, Decimal("12345678901234567890.123456789012345678"), None, Decimal("7")],
            [None, None],
            [],
        ],
    ),
    (
        binary.int8_array,
        "bigint[]",
        [[0, 1, -1, 2**63 - 1, -(2**63)], [None, 5, None], [None] * 3, [7] * 3, []],
    ),
    (binary.bool_array, "boolean[]", [[True, False, True], [None, True, None, False], [None], []]),
    (
        binary.date_array,
        "date[]",
        [
            [date(2026, 3, 1), date(1, 1, 1), date(9999, 12, 31), date(2000, 1, 1), date(1999, 12, 31)],
            [None, date(2026, 1, 1), None, date(2026, 1, 1)],
            [],
        ],
    ),
    (binary.timestamptz_array, "timestamptz[]", [INSTANTS, [None, *INSTANTS, None], [None], []]),
    (
        binary.uuid_array,
        "uuid[]",
        [[uuid.UUID(i) for i in IDS], IDS, [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)], []],
    ),
]


def _psycopgs(values: Sequence[Any]) -> Any:
    """What psycopg sent before: decimals as their text, the rest as the list itself."""
    if values and any(type(v) is Decimal for v in values):
        return [None if v is None else str(v) for v in values]
    return list(values)


@pytest.mark.parametrize(("pack", "cast", "columns"), CASES, ids=[c[0].__name__ for c in CASES])
def test_packed_arrays_are_what_psycopg_sends(
    db: DictConnection, pack: Callable[[Any], Any], cast: str, columns: list[list[Any]]
) -> None:
    for values in columns:
        packed = pack(values)
        assert isinstance(packed, binary.Packed), values
        row = db.execute(
            f"SELECT %(packed)b::{cast}::text AS packed, %(plain)b::{cast}::text AS plain,"
            f" %(packed)b::{cast} IS NOT DISTINCT FROM %(plain)b::{cast} AS same",
            {"packed": packed, "plain": _psycopgs(values)},
        ).fetchone()
        assert row is not None
        assert (row["packed"], row["same"]) == (row["plain"], True), values


@pytest.mark.parametrize(
    ("pack", "values"),
    [
        (binary.text_array, ["ok", 1]),
        (binary.text_array, ["ok", "\ud800"]),  # no UTF-8: psycopg refuses it, as before
        (binary.text_array, [["a list"]]),
        (binary.int8_array, [1, 2**63]),  # beyond bigint
        (binary.int8_array, [1, True]),
        (binary.bool_array, [True, 1]),
        (binary.date_array, [date(2026, 1, 1), datetime(2026, 1, 1, tzinfo=UTC)]),
        (binary.timestamptz_array, [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1)]),
        (binary.uuid_array, [uuid.UUID(int=1), "not a UUID object"]),
    ],
)
def test_what_cannot_be_packed_is_left_to_psycopg(pack: Callable[[Any], Any], values: list[Any]) -> None:
    assert pack(values) is values


def test_decimals_among_other_values_go_as_texts() -> None:
    values: list[Any] = [Decimal("1.50"), 2.5, None]
    assert binary.decimal_text_array(values) == ["1.50", "2.5", None]
