"""What commands print: tables and JSON on stdout, progress on stderr."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO


def print_table(rows: list[dict[str, Any]], columns: list[str], out: TextIO) -> None:
    cells = [[("NULL" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    for r in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)), file=out)
    if not rows:
        print("  (none)", file=out)


def jsonable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(jsonable(value), indent=2), file=out)


def seconds(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.1f}s"


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Progress:
    """A bar on a terminal; a line per step elsewhere (logs, CI)."""

    def __init__(self, total: int, out: TextIO, width: int = 30) -> None:
        self.total = total
        self.done_count = 0
        self.out = out
        self.width = width
        self.tty = out.isatty()

    def advance(self, n: int) -> None:
        self.done_count += n
        share = self.done_count / self.total if self.total else 1.0
        if self.tty:
            filled = round(share * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            print(f"\r[{bar}] {self.done_count}/{self.total}", end="", file=self.out, flush=True)
        else:
            print(
                f"replay: {self.done_count}/{self.total} events stored ({share:.0%})",
                file=self.out,
                flush=True,
            )

    def done(self) -> None:
        if self.tty:
            print(file=self.out)
