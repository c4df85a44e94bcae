"""Durations as people type them (INBOX_RETENTION, --since): short forms, ISO 8601, never negative."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from inbox.settings import Settings, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        ("1.5h", timedelta(minutes=90)),
        ("3600", timedelta(hours=1)),
        ("P7D", timedelta(days=7)),
        ("PT12H", timedelta(hours=12)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("0s", timedelta(0)),
    ],
)
def test_durations_read_the_forms_people_type(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert Settings(retention=text).retention == expected


@pytest.mark.parametrize("text", ["-1h", "-P1D", "-90"])
def test_negative_durations_are_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="must not be negative"):
        Settings(retention=text)


@pytest.mark.parametrize("text", ["1 hour", "h", "7 days, 0:00:00x", "P"])
def test_a_non_duration_names_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ValidationError, match=r"not a duration: use .*90s.*P7D"):
        Settings(retention=text)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(hours=12), "12h"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=1.5), "1.5s"),
    ],
)
def test_durations_print_as_typed_and_read_back(value: timedelta, shown: str) -> None:
    assert format_duration(value) == shown
    assert parse_duration(shown) == value
