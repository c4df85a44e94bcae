"""Load the SQL that lives in sql/: named queries, numbered migrations and object files.

sql/migrations/NNN_name.sql   numbered, immutable: tables, indexes, grants, data; applied once each.
                              The first may be NNN_baseline.sql: 001-NNN squashed (inbox/db/migrate.py).
sql/functions/<schema>.<object>.sql
                              one function, view or trigger each, the current definition
                              (CREATE OR REPLACE); applied again whenever its text changes, in the
                              order of sql/functions/manifest.txt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

_NAME_LINE = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")
_OBJECT_FILE = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\.sql$")
MANIFEST = "manifest.txt"
# The name of a migration that stands for all the numbers up to its own (the first file shipped).
BASELINE = "baseline"


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
        return _sha256(self.sql)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_migrations(entries: dict[str, str]) -> list[Migration]:
    """Numbered migrations from {file name: text}: no gaps, no duplicates, no stray .sql files. They
    start at 001, or at a baseline (NNN_baseline.sql, which replaces 001-NNN)."""
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
    for later in ordered[1:]:
        if later.name == BASELINE:
            raise ValueError(f"{later.version:03d}_{BASELINE}: only the first migration may be a baseline")
    first = ordered[0].version if ordered and ordered[0].name == BASELINE else 1
    for expected, migration in enumerate(ordered, start=first):
        if migration.version != expected:
            raise ValueError(f"migration {expected:03d} is missing (next is {migration.version:03d})")
    return ordered


def _sql_files(folder: str) -> dict[str, str]:
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sql_root().joinpath(folder).iterdir()
        if entry.name.endswith(".sql")
    }


def migrations() -> list[Migration]:
    return parse_migrations(_sql_files("migrations"))


@dataclass(frozen=True)
class ObjectFile:
    """One file of sql/functions: a function, view or trigger as it stands now."""

    file: str
    sql: str

    @property
    def checksum(self) -> str:
        return _sha256(self.sql)


def parse_manifest(text: str) -> list[str]:
    """File names, one a line; blank lines and '#' comments are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def parse_object_files(manifest: str, entries: dict[str, str]) -> list[ObjectFile]:
    """The object files in manifest order: every .sql file listed exactly once, nothing else listed."""
    order = parse_manifest(manifest)
    seen: set[str] = set()
    for name in order:
        if not _OBJECT_FILE.match(name):
            raise ValueError(f"{MANIFEST} lists {name!r}, which is not named <schema>.<object>.sql")
        if name in seen:
            raise ValueError(f"{MANIFEST} lists {name} twice")
        if name not in entries:
            raise ValueError(f"{MANIFEST} lists {name}, which is not in sql/functions")
        seen.add(name)
    unlisted = sorted(set(entries) - seen)
    if unlisted:
        raise ValueError(f"sql/functions/{unlisted[0]} is not listed in {MANIFEST}: add it where it belongs")
    return [ObjectFile(name, entries[name]) for name in order]


def object_files() -> list[ObjectFile]:
    manifest = sql_root().joinpath("functions", MANIFEST).read_text(encoding="utf-8")
    return parse_object_files(manifest, _sql_files("functions"))
