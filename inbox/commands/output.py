"""What commands print: tables and JSON on stdout, progress on stderr."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from inbox.text import LOG_FIELD_CHARS, printable

# A table cell shows at most this many characters of a value, a block's field LOG_FIELD_CHARS; the
# cut says how many characters it left out. Values may be stored strings from outside: each one
# goes through text.printable, so an ESC sequence, a line break or a bidi override in an eventType
# cannot drive the terminal or forge a row.
CELL_CHARS = 200


def print_table(rows: list[dict[str, Any]], columns: list[str], out: TextIO) -> None:
    cells = [
        [("NULL" if row[c] is None else printable(str(row[c]), CELL_CHARS)) for c in columns] for row in rows
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    for r in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)
    if not rows:
        print("  (none)", file=out)


def jsonable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime | date):  # a quota's period_month is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def dumps_exact(value: Any, indent: int | None = 2) -> str:
    """JSON in which a Decimal is a number with its stored digits (json writes no Decimal; a float
    would round it, a string would change its type). Times and ids are strings, as in jsonable."""
    numbers: list[str] = []
    marker = uuid.uuid4().hex  # no stored string can be a fresh random marker

    def walk(item: Any) -> Any:
        if isinstance(item, Decimal) and item.is_finite():
            numbers.append(str(item))
            return f"{marker}{len(numbers) - 1}"
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return jsonable(item)

    text = json.dumps(walk(value), indent=indent)
    return re.sub(f'"{marker}(\\d+)"', lambda m: numbers[int(m[1])], text)


def print_json(value: Any, out: TextIO) -> None:
    print(dumps_exact(value), file=out)


def terminal_width() -> int:
    """The terminal's columns ($COLUMNS when set); 100 when not a terminal; never below 40."""
    return max(shutil.get_terminal_size((100, 24)).columns, 40)


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """Lines of at most width columns; long words (ids, JSON) are broken rather than overflow."""
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent) or [indent.rstrip()]


def print_block(title: str, fields: list[tuple[str, str]], out: TextIO, width: int | None = None) -> None:
    """One record as a block: a title line, then 'label  value' lines, values wrapped to the width."""
    width = width or terminal_width()
    for line in wrap(printable(title, LOG_FIELD_CHARS), width):
        print(line, file=out)
    label_width = max((len(label) for label, _ in fields), default=0)
    for label, text in fields:
        lines = wrap(printable(text, LOG_FIELD_CHARS), width - label_width - 4)
        print(f"  {label:<{label_width}}  {lines[0]}".rstrip(), file=out)
        for line in lines[1:]:
            print(" " * (label_width + 4) + line, file=out)


def print_wrapped_json(value: Any, out: TextIO, indent: str = "  ", width: int | None = None) -> None:
    """Pretty JSON (exact numbers), each line wrapped to the width under its own indentation."""
    width = width or terminal_width()
    for line in dumps_exact(value).splitlines():
        lead = indent + " " * (len(line) - len(line.lstrip()))
        pieces = wrap(line.strip(), max(width - len(lead) - 2, 20))
        print(lead + pieces[0], file=out)
        for piece in pieces[1:]:
            print(lead + "  " + piece, file=out)


def seconds(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.1f}s"


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


class TerminalBar:
    """A progress bar on a terminal, nothing elsewhere: for a command whose stdout is its report
    (reconcile), where Progress's lines would only add noise to a log. Counts what show() is given,
    or, with a total and position(), how far through a file it is."""

    def __init__(
        self,
        out: TextIO,
        label: str,
        total: int | None = None,
        position: Callable[[], int] | None = None,
        width: int = 30,
    ) -> None:
        """total: of what position() (bytes read) or show()'s count measures; None: a count only."""
        self.out = out
        self.label = label
        self.total = total
        self.position = position
        self.width = width
        self.shown = out.isatty()

    def show(self, count: int) -> None:
        if not self.shown:
            return
        if self.total:
            done = self.position() if self.position else count
            filled = round(min(done / self.total, 1.0) * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            print(f"\r{self.label} [{bar}] {count:,}", end="", file=self.out, flush=True)
        else:
            print(f"\r{self.label} {count:,}", end="", file=self.out, flush=True)

    def done(self) -> None:
        if self.shown:
            print(file=self.out, flush=True)
