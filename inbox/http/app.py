"""The FastAPI app of the HTTP API: wiring only. The routes are in inbox/http/routes.py, what a
request must show before any route sees it in inbox/http/guard.py, the server around the app in
inbox/http/server.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from inbox.http.guard import RequestGuard, split_list
from inbox.http.routes import AppState, router
from inbox.settings import Settings


def create_app(settings: Settings, dsn: str) -> FastAPI:
    """The app on dsn: events are stored as INBOX_INGEST_ROLE, /metrics read as INBOX_READONLY_ROLE
    (each the login role of dsn when unset)."""
    state = AppState.build(settings, dsn)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.pool.open(wait=False)
        try:
            yield
        finally:
            state.threads.shutdown(wait=True)
            state.pool.close()

    app = FastAPI(
        title="Quota Inbox",
        summary="Titan quota change events into the CSLA inbox.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.openapi else None,
    )
    app.state.inbox = state
    app.add_middleware(
        RequestGuard,
        check_host=state.token is None and state.hmac_secret is None,
        allowed_hosts=split_list(settings.allowed_hosts),
        allowed_origins=split_list(settings.allowed_origins),
    )
    app.include_router(router)
    return app
