"""Partial batches in the parser: the items that cannot be keyed are left out with their reason and
their text verbatim, tombstones are counted, and the events kept are the batch's own texts, in order
(issue 14, item 8: these tests are in the mutation run, [tool.mutmut])."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from inbox.events import EventKey
from inbox.ingest import BadBatch, ParsedBatch, Rejected, parse_body, parse_texts
from tests.cdc_events import debezium_event
from tests.helpers import titan_event, to_json

QUOTA_ID = uuid.UUID("0b7e3f52-4c1a-4d2e-8f90-123456789abc")
FIRST, SECOND, THIRD = (to_json(titan_event(QUOTA_ID, version)) for version in (1, 2, 3))
# An item that cannot be keyed, with what a naive cut at commas or brackets would split: verbatim.
ODD = '{"note": "a, b ] c", "n": [1, {"m": 2.50}], "e": 1E+2}'
ODD_REASON = (
    "data.quota_id must be a UUID string; "
    "metadata.version must be an integer between 0 and 9223372036854775807"
)
TOMBSTONE = to_json({"schema": {"type": "struct"}, "payload": None})


def _key(version: int) -> EventKey:
    return EventKey(QUOTA_ID, version, False, None)


def test_an_array_keeps_its_good_elements_verbatim_and_rejects_the_rest() -> None:
    body = f'[ {FIRST} ,\n\t{ODD}\r\n, null ,{SECOND}, {TOMBSTONE},"text" ,{THIRD}  ]'
    batch = parse_body(body.encode(), partial=True)
    assert batch.keys == [_key(1), _key(2), _key(3)]
    assert batch.skipped == 2  # null and the Debezium tombstone
    assert batch.rejected == [
        Rejected(1, ODD_REASON, ODD),
        Rejected(5, "an event must be a JSON object, not a string", '"text"'),
    ]
    assert [r.raw for r in batch.rejected] == [ODD, '"text"']  # raw is not in the dataclass's ==
    assert batch.array_text == f"[{FIRST},{SECOND},{THIRD}]"
    assert len(batch) == 3


def test_without_partial_the_same_batch_is_refused_naming_each_bad_item() -> None:
    body = f"[{FIRST}, {ODD}, {SECOND}, 7]"
    with pytest.raises(BadBatch) as caught:
        parse_body(body.encode())
    assert caught.value.problems == [(1, ODD_REASON), (3, "an event must be a JSON object, not a number")]
    assert caught.value.unparseable is False


def test_items_are_counted_across_texts_arrays_and_single_values() -> None:
    texts = [f"[{FIRST}, {ODD}]", ' "lone" ', f"[{SECOND}]", "[]", f"  [ {ODD} , {THIRD} ]  ", "null"]
    batch = parse_texts(texts, partial=True)
    assert batch.keys == [_key(1), _key(2), _key(3)]
    assert [(r.index, r.raw) for r in batch.rejected] == [(1, ODD), (2, '"lone"'), (4, ODD)]
    assert batch.skipped == 1
    assert batch.array_text == f"[{FIRST},{SECOND},{THIRD}]"
    assert json.loads(batch.array_text) == [json.loads(t) for t in (FIRST, SECOND, THIRD)]


def test_ndjson_lines_that_cannot_be_keyed_are_left_out() -> None:
    body = f"{FIRST}\n{ODD}\n{SECOND}\n[1]\n".encode()
    batch = parse_body(body, ndjson=True, partial=True)
    assert batch.keys == [_key(1), _key(2)]
    assert [(r.index, r.raw) for r in batch.rejected] == [(1, ODD), (3, "1")]
    assert batch.array_text == f"[{FIRST},{SECOND}]"


def test_a_batch_of_nothing_but_rejects_and_tombstones_keeps_them_all() -> None:
    batch = parse_body(f"[{ODD}, null, {ODD}]".encode(), partial=True)
    assert batch == ParsedBatch(keys=[], array_text="[]", skipped=1, rejected=batch.rejected)
    assert [(r.index, r.raw) for r in batch.rejected] == [(0, ODD), (2, ODD)]


def test_tombstones_alone_are_left_out_of_a_whole_batch() -> None:
    delete = to_json(debezium_event(QUOTA_ID, 4, "d"))
    batch = parse_body(f"[null,{delete},null]".encode())
    assert batch.skipped == 2
    assert batch.rejected == []
    assert batch.array_text == f"[{delete}]"
    batch = parse_body(f"{TOMBSTONE}\n{FIRST}".encode())
    assert (batch.skipped, batch.array_text) == (1, f"[{FIRST}]")


def test_a_batch_with_nothing_left_out_is_passed_through_whole() -> None:
    texts = [f"[ {FIRST},\n{SECOND} ]", THIRD]
    batch = parse_texts(texts, partial=True)
    assert (batch.rejected, batch.skipped) == ([], 0)
    assert batch.array_text == f"[ {FIRST},\n{SECOND} ,{THIRD}]"


def _column_batch() -> ParsedBatch:
    batch = parse_body(f"[{FIRST}, {SECOND}]".encode())
    assert batch.columns is not None  # the edge read it column by column (ParsedBatch.of_columns)
    return batch


def test_a_column_batch_builds_keys_and_rows_only_when_read() -> None:
    batch = _column_batch()
    assert batch.skipped == 0 and batch.rejected == []  # set by of_columns, not looked up
    assert len(batch) == 2
    assert batch.of_its_columns() is True
    assert "keys" not in batch.__dict__ and "rows" not in batch.__dict__  # neither asks for them
    with pytest.raises(AttributeError, match=r"^nothing$"):
        batch.nothing  # noqa: B018  (only keys and rows are built from the columns)
    assert "nothing" not in batch.__dict__
    assert batch.keys == [_key(1), _key(2)]
    assert batch.rows is batch.columns.rows  # type: ignore[union-attr]
    assert batch.of_its_columns() is True  # rows read, still the columns' own


def test_a_batch_whose_rows_are_not_its_columns_own_is_not_sent_as_columns() -> None:
    batch = _column_batch()
    assert dataclasses.replace(batch, rows=[None, None]).of_its_columns() is False
    assert ParsedBatch(keys=[], array_text="[]").of_its_columns() is False  # no columns at all
