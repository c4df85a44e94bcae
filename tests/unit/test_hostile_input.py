"""Issue 12, the cases found outside the fuzzers' corpus, one by one: each fails without its fix.

H1 numbers whose exponent Decimal cannot take; H2 numbers that grow when PostgreSQL prints them;
H4 time-zone offsets Python takes and PostgreSQL refuses; M8 stored strings that drive a terminal or
flood a log; and the Low items (text fields with control characters, counts of 0 or less, secrets
with stray whitespace). The database side of each is in tests/integration/test_hostile_apply.py,
the HTTP side in tests/acceptance/test_http_limits.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from decimal import Decimal
from typing import Any

import pytest

from inbox.commands import build_parser
from inbox.commands.config import load_settings
from inbox.commands.errors import CliError
from inbox.events import InvalidEvent, quota_row
from inbox.formats import interpret
from inbox.ingest import BadBatch, loads, parse_body
from inbox.kafka.batch import Event, Origin, Reject, classify
from inbox.logs import JsonFormatter
from inbox.settings import positive_int
from inbox.text import LOG_FIELD_CHARS, printable, unsafe_character
from tests.helpers import titan_event, to_json

HUGE_EXPONENTS = ["1e9999999999999999999", "1e-99999999999999999999", "-1E+99999999999999999999999"]
EXPANDING = ["1e131071", "1e41", "1e-42", "0e-100", "1.5e1000", "9" * 1001, "0." + "0" * 41 + "1"]
WITHIN = ["1e40", "1e-41", "123.456e30", "9" * 1000, "0.000001", "1.5", "-0", "18446744073709551615"]


def _event_with_qty(number: str) -> str:
    return to_json(titan_event(uuid.uuid4(), 1, qty_t=Decimal(7))).replace('"qty_t": 7', f'"qty_t": {number}')


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(titan_event(uuid.uuid4(), 1)["data"])
    fields.update(overrides)
    return fields


# -- H1 and H2: numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", HUGE_EXPONENTS + EXPANDING)
def test_a_number_beyond_the_limits_is_a_value_error_naming_it(number: str) -> None:
    with pytest.raises(ValueError, match="number") as refused:
        loads(f'{{"qty_t": {number}}}')
    assert type(refused.value) is ValueError  # not decimal.InvalidOperation, which nothing catches


@pytest.mark.parametrize("number", WITHIN)
def test_a_number_within_the_limits_keeps_its_exact_digits(number: str) -> None:
    assert loads(f"[{number}]") == [Decimal(number) if any(c in number for c in ".eE") else int(number)]


@pytest.mark.parametrize("number", HUGE_EXPONENTS + EXPANDING)
def test_a_kafka_message_with_such_a_number_is_a_reject_not_a_crash(number: str) -> None:
    value = _event_with_qty(number).encode()

    outcome = classify(Origin("titan.quota", 0, 7), value)

    assert isinstance(outcome, Reject)
    assert outcome.raw == value
    assert outcome.reason.startswith("not valid JSON: number")


@pytest.mark.parametrize("number", HUGE_EXPONENTS + EXPANDING)
def test_a_request_with_such_a_number_is_refused_naming_its_item(number: str) -> None:
    body = "\n".join([_event_with_qty("1"), _event_with_qty(number)]).encode()

    with pytest.raises(BadBatch) as refused:
        parse_body(body)

    assert refused.value.unparseable
    ((index, reason),) = refused.value.problems
    assert index == 1 and "number" in reason


@pytest.mark.parametrize("text", ["1e131071", "1e-16383", "1e9999999999999999999", "1" * 2000])
def test_a_quantity_given_as_text_beyond_the_limits_is_invalid(text: str) -> None:
    """Numeric text (Debezium's decimal.handling.mode=string, the JDBC sink's text columns) is
    stored as text, but the quota row would print it in full: a dead letter naming the field."""
    with pytest.raises(InvalidEvent, match="qty_t"):
        quota_row(_fields(qty_t=text))


def test_a_connect_decimal_with_a_huge_negative_scale_is_invalid() -> None:
    """A VariableScaleDecimal carries its own scale: -100000 would make 1 into 1e100000."""
    event = {
        "op": "c",
        "before": None,
        "after": {**_fields(qty_t={"scale": -100_000, "value": "AQ=="}), "version": 1},
    }

    with pytest.raises(InvalidEvent, match="qty_t"):
        interpret(event)


# -- H4: offsets as PostgreSQL takes them ---------------------------------------------------------


@pytest.mark.parametrize(
    "updated_at",
    [
        "2026-01-01T00:00:00+20:00",
        "2026-01-01T00:00:00-16:00",
        "2026-01-01T00:00:00+23:59:59.999999",
        "2026-01-01T00:00:00+05:30:15.5",
        "0001-01-01T00:00:00+10:00",  # year 0 in UTC: PostgreSQL takes it, Python cannot read it back
        "9999-12-31T23:00:00-15:00",
    ],
)
def test_an_updated_at_postgresql_refuses_is_invalid_naming_the_field(updated_at: str) -> None:
    with pytest.raises(InvalidEvent, match="updated_at"):
        quota_row(_fields(updated_at=updated_at))


@pytest.mark.parametrize(
    "updated_at",
    ["2026-01-01T00:00:00+15:59:59", "2026-01-01T00:00:00-15:59", "2026-01-01T00:00:00+05:30:15"],
)
def test_an_updated_at_at_postgresqls_limits_is_taken(updated_at: str) -> None:
    assert quota_row(_fields(updated_at=updated_at)).source_updated_at is not None


# -- Low: text fields -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["counterparty_id", "metal_code", "incoterm_code"])
@pytest.mark.parametrize(
    "text",
    ["CP\x1b[2J", "CP\r\n| fake | row", "CP\u202e1", "CP\u2066", "CP\x85", "CP\u2028", "CP\ud800", "\x00"],
)
def test_a_text_field_with_a_control_bidi_or_surrogate_character_is_invalid(field: str, text: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        quota_row(_fields(**{field: text}))

    (reason,) = refused.value.reasons
    assert reason.startswith(f"{field} holds a control character (U+")


@pytest.mark.parametrize("text", ["CP-1 Müller & Söhne", "銅 CU", "emoji 👍🏽‍", "tab-free\u00a0nbsp", "Ａ"])
def test_ordinary_unicode_text_is_taken(text: str) -> None:
    assert quota_row(_fields(counterparty_id=text)).counterparty_id == text


def test_a_lone_surrogate_escape_is_refused_at_the_door_naming_its_item() -> None:
    good = to_json(titan_event(uuid.uuid4(), 1))
    bad = to_json(titan_event(uuid.uuid4(), 1, counterparty_id="@@")).replace("@@", "\\udc00")

    with pytest.raises(BadBatch) as refused:
        parse_body(f"[{good}]\n[{bad}]".encode(), ndjson=True)

    ((index, reason),) = refused.value.problems
    assert index == 1 and "lone UTF-16 surrogate" in reason
    assert loads('"\\ud83d\\ude00"') == "\U0001f600"  # a pair is one character


# -- M8: what is printed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("UPDATE\r\n| fake | row", "UPDATE\\x0d\\x0a| fake | row"),
        ("\u202eEVIL", "\\u202eEVIL"),
        ("\ud800", "\\ud800"),
        ("\x85\u2028\u2029\x7f", "\\x85\\u2028\\u2029\\x7f"),
        ("Müller 銅 👍", "Müller 銅 👍"),
    ],
)
def test_printable_escapes_every_unsafe_character(stored: str, shown: str) -> None:
    assert printable(stored) == shown
    assert unsafe_character(printable(stored)) is None


def test_printable_cuts_a_long_value_and_says_how_much() -> None:
    assert printable("x" * 2_000_000, 200) == "x" * 200 + f"…[{2_000_000 - 200} more characters]"


def test_a_two_megabyte_event_type_is_no_two_megabyte_log_line() -> None:
    record = logging.makeLogRecord(
        {"msg": "event dead-lettered", "levelname": "WARNING", "event_type": "\x1b[31m" + "A" * 2_000_000}
    )

    line = JsonFormatter().format(record)

    assert len(line) < 3 * LOG_FIELD_CHARS
    assert "\x1b" not in line
    assert json.loads(line)["event_type"].endswith(f"[{2_000_005 - LOG_FIELD_CHARS} more characters]")


# -- Low: counts and secrets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "--batch-size", "0", "events.ndjson"],
        ["replay", "--batch-size", "-1", "events.ndjson"],
        ["dlq", "replay", "--all-matching", "--batch-size", "0"],
        ["dlq", "list", "--limit", "-1"],
    ],
)
def test_a_count_below_one_is_refused_with_a_clear_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)

    assert exited.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err


def test_positive_int_takes_one_and_more() -> None:
    assert positive_int("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="not a whole number"):
        positive_int("ten")


@pytest.mark.parametrize("name", ["api_token", "hmac_secret"])
@pytest.mark.parametrize("secret", ["s3cret\n", " s3cret", "s3cret\t"])
def test_a_secret_with_stray_whitespace_is_refused_at_startup_in_one_line(
    name: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newline from a secret file made every request fail to match, and nothing said why."""
    monkeypatch.setenv(f"INBOX_{name.upper()}", secret)

    with pytest.raises(CliError) as refused:
        load_settings()

    assert f"INBOX_{name.upper()}" in str(refused.value) and "whitespace" in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_an_event_is_an_event_however_it_is_classified() -> None:
    """Sanity for the tests above: a good message still classifies as an event."""
    assert isinstance(classify(Origin("t", 0, 1), _event_with_qty("1.5").encode()), Event)
