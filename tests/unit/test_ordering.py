"""Version-less deletes (REPLICA IDENTITY DEFAULT): which rows hold only their key, how such a delete
is keyed and ordered, and what the refusal says (issue 14, item 8: in the mutation run, [tool.mutmut])."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from inbox.formats import key_event, ordering
from tests.cdc_events import debezium_event, flattened_record
from tests.helpers import titan_event, unkeyable

QUOTA_ID = uuid.UUID("0b7e3f52-4c1a-4d2e-8f90-123456789abc")
IDENTITY_FIX = "Titan's table needs REPLICA IDENTITY FULL (ALTER TABLE public.quota REPLICA IDENTITY FULL)"
VERSION_RANGE = "must be an integer between 0 and 9223372036854775807"
KEY_ONLY = {"quota_id": str(QUOTA_ID), "version": 0, "counterparty_id": "", "metal_code": ""}


def _debezium_delete(before: dict[str, Any], lsn: int | None = 4242) -> dict[str, Any]:
    event = debezium_event(QUOTA_ID, 9, "d")
    event["before"] = before
    if lsn is None:
        del event["source"]["lsn"]
    else:
        event["source"]["lsn"] = lsn
    return event


def _flattened_delete(row: dict[str, Any], lsn: int | None = 4242) -> dict[str, Any]:
    return {**row, "__deleted": "true"} | ({} if lsn is None else {"__lsn": lsn})


@pytest.mark.parametrize(
    ("before", "key_only"),
    [
        (KEY_ONLY, True),
        ({"quota_id": str(QUOTA_ID)}, True),  # nullable columns arrive as nulls, or not at all
        ({**KEY_ONLY, "version": None, "counterparty_id": None, "metal_code": None}, True),
        ({**KEY_ONLY, "version": 3}, False),
        ({**KEY_ONLY, "counterparty_id": "CP-1"}, False),
        ({**KEY_ONLY, "metal_code": "XAU"}, False),
        ({**KEY_ONLY, "counterparty_id": "CP-1", "metal_code": "XAU"}, False),
    ],
)
def test_a_row_holds_only_its_key_when_version_counterparty_and_metal_are_all_empty(
    before: dict[str, Any], key_only: bool
) -> None:
    assert ordering(_debezium_delete(before)) == (4242, key_only)
    assert ordering(_flattened_delete(before)) == (4242, key_only)
    if key_only:
        key = key_event(_flattened_delete(before))
        assert (key.quota_id, key.version, key.is_delete, key.source_lsn) == (QUOTA_ID, 0, True, 4242)


def test_ordering_of_events_that_are_no_version_less_delete() -> None:
    assert ordering(flattened_record(QUOTA_ID, 5) | {"__lsn": 77}) == (77, False)
    assert ordering(flattened_record(QUOTA_ID, 5, deleted=True) | {"__lsn": 77}) == (77, False)
    assert ordering({**KEY_ONLY, "__lsn": 77}) == (77, False)  # key-only, but no delete
    assert ordering(flattened_record(QUOTA_ID, 5, wrapped=True)) == (None, False)
    assert ordering(titan_event(QUOTA_ID, 5)) == (None, False)
    assert ordering({"schema": {}, "payload": [1]}) == (None, False)
    assert ordering([KEY_ONLY]) == (None, False)


def test_a_version_less_delete_without_an_lsn_names_the_fix_of_its_format() -> None:
    lead = "a delete without the old row's version (REPLICA IDENTITY DEFAULT sends only the key) needs"
    assert unkeyable(_debezium_delete(KEY_ONLY, lsn=None)) == (
        f"{lead} source.lsn to be ordered by: {IDENTITY_FIX}"
    )
    assert unkeyable(_flattened_delete(KEY_ONLY, lsn=None)) == (
        f"{lead} __lsn to be ordered by: {IDENTITY_FIX}, or add lsn to ExtractNewRecordState's add.fields"
    )
    # the worker's check of a stored event: keyed at version 0 without its LSN
    key = key_event(_flattened_delete(KEY_ONLY, lsn=None), need_lsn=False)
    assert (key.version, key.is_delete, key.source_lsn) == (0, True, None)


def test_a_delete_that_cannot_be_keyed_names_the_field_and_the_fix() -> None:
    bad_id = {**KEY_ONLY, "quota_id": "nope"}
    assert unkeyable(_debezium_delete(bad_id)) == "before.quota_id must be a UUID string"
    assert unkeyable(_flattened_delete(bad_id)) == "quota_id must be a UUID string"
    bad_version = {**KEY_ONLY, "version": "x", "counterparty_id": "CP-1"}
    assert unkeyable(_debezium_delete(bad_version)) == (
        f"before.version {VERSION_RANGE} (a delete is keyed from the old row: {IDENTITY_FIX})"
    )
    assert unkeyable(_flattened_delete(bad_version)) == (
        f"version {VERSION_RANGE} (a delete is keyed from the old row: {IDENTITY_FIX})"
    )
