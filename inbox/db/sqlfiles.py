"""Load the SQL that lives in sql/: named queries and numbered migrations."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

_NAME_LINE = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")


def sql_root() -> Traversable:
    return files("inbox.sql")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file into its '-- name: x' blocks; a name used twice is an error."""
    queries: dict[str, str] = {}
    marks = list(_NAME_LINE.finditer(text))
    ends = [following.start() for following in marks[1:]] + [len(text)]
    for mark, end in zip(marks, ends, strict=False):
        name = mark.group("name")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = text[mark.end() : end].strip()
    return queries


@cache
def queries() -> dict[str, str]:
    return parse_queries(sql_root().joinpath("queries.sql").read_text(encoding="utf-8"))


def query(name: str) -> str:
    return queries()[name]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def parse_migrations(entries: dict[str, str]) -> list[Migration]:
    """Numbered migrations from {file name: text}: no gaps, no duplicates, no stray .sql files."""
    found: dict[int, Migration] = {}
    for file_name, text in entries.items():
        match = _MIGRATION_FILE.match(file_name)
        if not match:
            raise ValueError(f"migration file {file_name!r} is not named NNN_lower_case_name.sql")
        version = int(match.group("version"))
        if version in found:
            raise ValueError(f"migration version {version} appears twice: {found[version].name}, {file_name}")
        found[version] = Migration(version, match.group("name"), text)
    ordered = [found[v] for v in sorted(found)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {expected:03d} is missing (next is {migration.version:03d})")
    return ordered


def migrations() -> list[Migration]:
    folder = sql_root().joinpath("migrations")
    entries = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    }
    return parse_migrations(entries)
