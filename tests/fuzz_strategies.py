"""Hypothesis strategies for hostile input: JSON that is almost right, values of the wrong type, edge
numbers, deep nesting, long strings, bytes that are not UTF-8; and valid events to mix them with.

A body is built as a tree of JSON values and rendered to text by render(); Raw leaves are written
verbatim, which is how tokens Python's json cannot produce (NaN, 1e999999, lone surrogate escapes,
10 000 nested brackets) get into a body.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from inbox.formats import QUOTA_FIELDS
from tests.cdc_events import FORMATS, encode_event, quota_columns

# Modest in CI; INBOX_SOAK=1 searches much longer.
EXAMPLES = 2000 if os.environ.get("INBOX_SOAK") == "1" else 150


def examples(count: int) -> int:
    """A property test's count of examples; in the mutation run, the fewer of its hypothesis profile
    ("mutation", tests/unit/conftest.py): each mutant reruns the tests that reach its function."""
    if settings.get_current_profile_name() == "mutation":
        return int(settings.get_profile("mutation").max_examples)
    return count


class Raw(str):
    """A token rendered verbatim into the JSON text."""


EDGE_NUMBERS = (
    "0",
    "-0",
    "0.000",
    "-7",
    "1.5",
    "1E+2",
    "123456789012345678901234567890.123456789",
    "1e5000",  # PostgreSQL writes it back as 5001 digits
    "-1e131071",  # numeric's largest exponent
    "1e131072",  # one beyond
    "1e-16383",  # numeric's smallest scale
    "1e-16384",  # one beyond
    "1e999999999",
    "1e9999999999999999999",  # issue 12 H1: decimal.InvalidOperation, a 500 and a consumer crash loop
    "1e-99999999999999999999",
    "1e40",  # the most zeros a number may add (H2: 1e131071 was 8 bytes in, 131,072 digits out)
    "1e41",
    "1e-41",
    "1e-42",
    "0e-100",  # zero, printed with 100 decimal places
    "9" * 1000,  # the most digits a number may have
    "9" * 1001,
    "NaN",
    "Infinity",
    "-Infinity",
)
EDGE_STRINGS = (
    '""',
    '"\\u0000"',  # jsonb cannot hold NUL
    '"\\ud800"',  # a lone surrogate: Python accepts it, PostgreSQL does not
    '"\\ud83d\\ude00"',  # a valid surrogate pair
    '"\\""',
    '"' + "x" * 100_000 + '"',
    # issue 12 M8 and Low: terminal escapes, forged rows, bidi overrides, a lone low surrogate
    '"\\u001b[2J\\u001b]0;pwned\\u0007"',
    '"UPDATE\\r\\n| 00000000-0000-0000-0000-000000000000 | fake row"',
    '"\\u202eUSDC"',
    '"\\udc00"',
    # issue 12 H4: offsets Python takes and PostgreSQL refuses, and the last one it takes
    '"2026-01-01T00:00:00+20:00"',
    '"2026-01-01T00:00:00+05:30:15.5"',
    '"0001-01-01T00:00:00+10:00"',
    '"2026-01-01T00:00:00-15:59:59"',
)
EDGE_STRUCTURES = (
    "[" * 64 + "]" * 64,  # at the nesting limit
    "[" * 65 + "]" * 65,  # one beyond
    "[" * 100_000 + "]" * 100_000,  # beyond Python's recursion limit
    '{"a":' * 70 + "1" + "}" * 70,
    "[" + "1," * 5000 + "1]",
    "{}",
    "[]",
    "null",
)

edge_tokens = st.sampled_from(EDGE_NUMBERS + EDGE_STRINGS + EDGE_STRUCTURES).map(Raw)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    edge_tokens,
)

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)


# What a mutation puts in place of a value: an edge token a third of the time.
replacements = st.one_of(edge_tokens, scalars, json_values)


def render(value: Any) -> str:
    """JSON text of a value tree: Decimals with their exact digits, Raw tokens as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


# -- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One item of a request: its value tree, and whether it is an untouched valid upsert."""

    value: Any
    quota_id: uuid.UUID | None = None  # set for intact events
    version: int = 1

    @property
    def intact(self) -> bool:
        return self.quota_id is not None


# Never the same quota twice, in any example: what a test expects of one quota stays its own.
fresh_ids = st.builds(uuid.uuid4)


@st.composite
def valid_events(draw: st.DrawFn) -> Item:
    """A valid upsert in any of the accepted formats, of a quota no other example uses."""
    quota_id = draw(fresh_ids)
    version = draw(st.integers(min_value=0, max_value=2**63 - 1))
    fmt = draw(st.sampled_from(FORMATS))
    value = json.loads(
        encode_event(fmt, quota_id, version, False, quota_columns(quota_id, version)), parse_float=Decimal
    )
    return Item(value, quota_id, version)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return [prefix]


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


@st.composite
def mutated_events(draw: st.DrawFn) -> Item:
    """A valid event (upsert or delete, any format) with one part broken: a value replaced by one
    of the wrong type or an edge value, a field removed, or extra fields added."""
    base = draw(valid_events()).value
    if draw(st.booleans()):
        fmt = draw(st.sampled_from(FORMATS))
        quota_id = draw(fresh_ids)
        base = json.loads(
            encode_event(fmt, quota_id, 3, True, quota_columns(quota_id, 3)), parse_float=Decimal
        )
    paths = _paths(base)
    # Half the time a quota field itself: that is where a wrong value does harm past the parser.
    fields = [p for p in paths if p and p[-1] in QUOTA_FIELDS]
    path = draw(st.sampled_from(fields if draw(st.booleans()) else paths))
    how = draw(st.sampled_from(["replace", "remove", "extra"]))
    if how == "replace" or not path:
        return Item(_replaced(base, path, draw(replacements)))
    parent_path, last = path[:-1], path[-1]
    parent: Any = base
    for step in parent_path:
        parent = parent[step]
    if how == "remove" and isinstance(parent, dict):
        return Item(_replaced(base, parent_path, {k: v for k, v in parent.items() if k != last}))
    extra = draw(st.dictionaries(st.text(max_size=12), json_values, min_size=1, max_size=3))
    if isinstance(parent, dict):
        return Item(_replaced(base, parent_path, {**extra, **parent}))
    return Item(_replaced(base, path, draw(replacements)))


items = st.one_of(valid_events(), mutated_events(), json_values.map(Item))


@dataclass(frozen=True)
class Body:
    raw: bytes
    content_type: str
    items: tuple[Item, ...]  # empty when the body was not built from items
    shape: str = "bytes"  # how the items were joined: array, ndjson, single


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    """A POST /events body: junk bytes, or items as one object, an array or NDJSON, maybe with a
    byte that breaks UTF-8 somewhere."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return Body(draw(st.binary(max_size=300)), "application/json", ())
    chosen = tuple(draw(st.lists(items, min_size=1, max_size=6)))
    if draw(st.integers(min_value=0, max_value=14)) == 0:  # larger than a small body limit
        chosen += (Item({"padding": Raw('"' + "x" * 300_000 + '"')}),)
    shape = draw(st.sampled_from(["array", "ndjson", "single"] if len(chosen) == 1 else ["array", "ndjson"]))
    texts = [render(item.value) for item in chosen]
    text = {"array": "[" + ",".join(texts) + "]", "ndjson": "\n".join(texts), "single": texts[0]}[shape]
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"])) + raw[at:]
    content_type = "application/x-ndjson" if shape == "ndjson" and draw(st.booleans()) else "application/json"
    return Body(raw, content_type, chosen, shape)
