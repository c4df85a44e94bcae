"""Path 1, the seed's design: one HTTP request per event, upserted straight into quota in one
transaction. Run as `python -m inbox_bench.seed_app PORT DSN`.

It is built from the same parts as our service (FastAPI on uvicorn, a psycopg pool, run_in_threadpool,
our parser and our validation), so the difference measured is the design, not the plumbing. It does
less than the service per event (no inbox row, no outbox message, no dead letters), which favours it.
"""

from __future__ import annotations

import sys
from dataclasses import astuple
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from inbox.db.connect import DictConnection, configure
from inbox.events import InvalidEvent, UnkeyableEvent, key_titan_event, validate_titan_event
from inbox.ingest import loads
from inbox_bench.quota_sql import COLUMN_NAMES, COLUMNS, NEWER_ONLY, ON_CONFLICT

# Version-gated like the seed's intent, so an older event never overwrites a newer one.
UPSERT = (
    f"INSERT INTO public.quota AS q ({COLUMNS}) VALUES ({', '.join(['%s'] * len(COLUMN_NAMES))})"
    f" {ON_CONFLICT} {NEWER_ONLY}"
)
DELETE = "DELETE FROM public.quota WHERE quota_id = %s AND source_version < %s"


def create_seed_app(dsn: str) -> FastAPI:
    pool: ConnectionPool[DictConnection] = ConnectionPool(
        dsn, min_size=4, max_size=8, open=False, kwargs={"row_factory": dict_row}, configure=configure
    )
    app = FastAPI(on_startup=[pool.open], on_shutdown=[pool.close])

    def _upsert(event: dict[str, Any]) -> None:
        key = key_titan_event(event)
        row = validate_titan_event(event)
        with pool.connection() as conn:  # one transaction, committed when the block ends
            if row is None:
                conn.execute(DELETE, (key.quota_id, key.version))
                return
            conn.execute(UPSERT, (key.quota_id, key.version, *astuple(row)))

    @app.post("/event", status_code=202)
    async def post_event(request: Request) -> JSONResponse:
        try:
            event = loads((await request.body()).decode("utf-8"))
            await run_in_threadpool(_upsert, event)
        except (ValueError, UnkeyableEvent, InvalidEvent) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"applied": True}, status_code=202)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def main(argv: list[str]) -> None:
    port, dsn = int(argv[0]), argv[1]
    uvicorn.run(create_seed_app(dsn), host="127.0.0.1", port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
