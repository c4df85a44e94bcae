"""POST /events stores events in the inbox; GET /health and GET /ready for probes; GET /metrics.

A request is stored in one transaction. Tombstones and truncates are skipped and counted; an item
that cannot be keyed is kept in inbox.rejects, named in the answer (and the log), and never refuses
the rest.

The routes hold no state of their own: what one app serves with (settings, pool, credentials) is its
AppState on app.state, set by create_app (inbox/http/app.py) and reached through the app_state
dependency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inbox.credentials import bearer_matches
from inbox.db.connect import DictPool, open_pool, with_role
from inbox.db.errors import DatabaseError, Failure, PoolTimeout, classify
from inbox.db.migrate import MigrationError, pending_migrations
from inbox.db.queries import Queries
from inbox.http.guard import NDJSON_TYPES
from inbox.http.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_problem
from inbox.ingest import BadBatch, ParsedBatch, parse_body
from inbox.metrics import registry_for
from inbox.settings import Settings
from inbox.store import IngestResult, store

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_AFTER_SECONDS = 5
# The threads that parse and store the bodies: as many as anyio's default (40), so that a request
# waits for a session in the pool (and is refused after its timeout), not for a thread.
THREADS = 40


@dataclass(frozen=True)
class AppState:
    """What one app serves with: events are stored as INBOX_INGEST_ROLE through pool, /metrics read
    as INBOX_READONLY_ROLE on metrics_dsn (each the login role of the DSN when unset)."""

    settings: Settings
    pool: DictPool
    token: str | None
    hmac_secret: bytes | None
    metrics_dsn: str
    metrics_token: str | None
    # Blocking work runs here (in_thread), not through starlette's run_in_threadpool: anyio's
    # capacity limiter and checks cost about a tenth of a small POST's CPU.
    threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(THREADS, thread_name_prefix="inbox-http")
    )

    @classmethod
    def build(cls, settings: Settings, dsn: str) -> AppState:
        """The state on dsn; its pool is not yet open (the app's lifespan opens and closes it)."""
        return cls(
            settings=settings,
            pool=open_pool(with_role(dsn, settings.ingest_role), application_name="quota-inbox http"),
            token=settings.api_token.get_secret_value() if settings.api_token else None,
            hmac_secret=(
                settings.hmac_secret.get_secret_value().encode("utf-8") if settings.hmac_secret else None
            ),
            metrics_dsn=with_role(dsn, settings.readonly_role),
            metrics_token=settings.metrics_token.get_secret_value() if settings.metrics_token else None,
        )


async def in_thread(state: AppState, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """function(*args, **kwargs) in one of the app's threads, the event loop free meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(state.threads, partial(function, *args, **kwargs))


def app_state(request: Request) -> AppState:
    state = request.app.state.inbox
    assert isinstance(state, AppState), "create_app sets app.state.inbox"
    return state


State = Annotated[AppState, Depends(app_state)]

router = APIRouter()


class BodyTooLarge(Exception):
    pass


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _authorized(request: Request, token: str) -> bool:
    return bearer_matches(request.headers.get("authorization"), token)


def _unauthenticated(request: Request, reason: str) -> JSONResponse:
    # For whoever watches for probing: who and why, never what credential was offered.
    client = request.client.host if request.client else None
    log.warning("refused an unauthenticated request", extra={"reason": reason, "client": client})
    return _error(401, reason)


def _signature_problem(request: Request, body: bytes, secret: bytes, tolerance_seconds: int) -> str | None:
    return signature_problem(
        secret,
        request.headers.get(SIGNATURE_HEADER),
        request.headers.get(TIMESTAMP_HEADER),
        body,
        now=time.time(),
        tolerance_seconds=tolerance_seconds,
    )


def _refusal(exc: DatabaseError | PoolTimeout) -> JSONResponse:
    """The answer when storing failed. Never a 500: the batch's one transaction did not commit, so
    nothing was stored (or, connection lost at COMMIT, all of it), and a retry is safe either way
    because a redelivery is a duplicate."""
    match classify(exc):
        case Failure.TRANSIENT:
            log.error("database unavailable; refusing events", extra={"error": str(exc)})
            return _error(503, "database unavailable; nothing was stored, retry later")
        case Failure.NOT_MIGRATED:
            log.error("database is not migrated; refusing events")
            return _error(503, "database not migrated (run `inbox migrate`); nothing was stored, retry later")
        case Failure.POISON:
            return _error(422, f"PostgreSQL refused the events; nothing was stored: {exc}")
        case Failure.REFUSED:
            log.error("the ingest role may not store events; refusing them", extra={"error": str(exc)})
            return _error(503, "database refused the ingest role; nothing was stored, retry later")
    log.error("database error; refusing events", extra={"error": f"{type(exc).__name__}: {exc}"})
    return _error(503, "database error; nothing was stored, retry later")


def _parse_and_store(
    pool: DictPool, body: bytes, ndjson: bool, settings: Settings
) -> IngestResult | JSONResponse:
    """The body parsed, then stored (_store), in one of the app's threads: one hop from the event
    loop per request, and a 10 MiB body never stalls /health. A body refused, or too many events,
    is answered here without a session (nothing stored); a database's refusal raises."""
    try:
        batch = parse_body(body, ndjson=ndjson, partial=True)
    except BadBatch as exc:
        problems = [{"index": index, "reason": reason} for index, reason in exc.problems]
        status = 400 if exc.unparseable else 422
        return _error(status, "nothing was stored", problems=problems)
    if len(batch) > settings.max_events_per_request:
        return _error(
            413,
            f"{len(batch)} events in one request, more than INBOX_MAX_EVENTS_PER_REQUEST "
            f"({settings.max_events_per_request}); nothing was stored: send them in smaller requests",
        )
    return _store(pool, batch, settings)


def _store(pool: DictPool, batch: ParsedBatch, settings: Settings) -> IngestResult:
    """Store the batch (and apply it, INBOX_HTTP_APPLY_AT_INGEST), then wake the workers for what is
    left (the pool's sessions do not notify inside the ingest's transaction: inbox/db/connect.py
    open_pool). The events are stored once store() returns: a hint that fails costs the workers a
    poll, never the request."""
    apply_attempts = settings.max_attempts if settings.http_apply_at_ingest else None
    with pool.connection() as conn:
        result = store(conn, batch, "http", apply_attempts=apply_attempts)
        if result.accepted > result.finished:
            try:
                Queries(conn).hint_workers(untyped=result.untyped)
            except DatabaseError as exc:
                log.warning("stored the events but could not wake the workers (they poll): %s", exc)
        return result


@router.post("/events", status_code=202)
async def post_events(request: Request) -> JSONResponse:
    # app_state called, not declared as a dependency: FastAPI's solving of one cost a tenth of the
    # CPU of a small POST
    state = app_state(request)
    settings = state.settings
    if state.token is not None and not _authorized(request, state.token):
        return _unauthenticated(request, "missing or wrong bearer token")
    try:
        body = await _read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        return _error(413, f"body larger than {settings.max_body_bytes} bytes")
    if state.hmac_secret is not None:
        problem = _signature_problem(request, body, state.hmac_secret, settings.hmac_tolerance_seconds)
        if problem is not None:
            return _unauthenticated(request, f"bad signature: {problem}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    ndjson = content_type in NDJSON_TYPES
    try:
        result = await in_thread(state, _parse_and_store, state.pool, body, ndjson, settings)
    except (DatabaseError, PoolTimeout) as exc:
        return _refusal(exc)
    if isinstance(result, JSONResponse):  # refused before any session was taken
        return result
    answer: dict[str, Any] = {"accepted": result.accepted, "duplicates": result.duplicates}
    if settings.http_apply_at_ingest:
        # of the accepted, finished before this answer (applied, stale or dead letters); the workers
        # apply the rest
        answer["finished"] = result.finished
    if result.skipped:
        answer["skipped"] = result.skipped  # tombstones and truncates
    if result.rejected:  # kept in inbox.rejects
        for item in result.rejected:
            log.warning("rejected an item of a request", extra={"index": item.index, "reason": item.reason})
        answer["rejected"] = [{"index": item.index, "reason": item.reason} for item in result.rejected]
    return JSONResponse(answer, status_code=202)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}


def _readiness(pool: DictPool) -> tuple[bool, str]:
    try:
        with pool.connection(timeout=2.0) as conn:
            Queries(conn).ping()
            pending = pending_migrations(conn)
    except (DatabaseError, PoolTimeout) as exc:
        return False, f"database unavailable: {exc}"
    except MigrationError as exc:
        return False, str(exc)
    if pending:
        return False, f"migrations not applied: {', '.join(pending)}"
    return True, "ready"


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    ok, detail = await in_thread(state, _readiness, state.pool)
    status = 200 if ok else 503
    return JSONResponse({"status": "ready" if ok else "not ready", "detail": detail}, status_code=status)


@router.get("/metrics")
async def metrics(request: Request, state: State) -> Response:
    if state.metrics_token is not None and not _authorized(request, state.metrics_token):
        return _unauthenticated(request, "missing or wrong bearer token for /metrics")
    # Counters come from the database: every process serves the same figures (inbox/metrics.py).
    registry = registry_for(state.metrics_dsn, state.settings.metrics_refresh_seconds)
    body = await in_thread(state, generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
