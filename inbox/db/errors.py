"""One classifier of database errors, for every caller: worker, HTTP, Kafka, jobs and commands.

psycopg's exception classes stay psycopg's (no wrapping on the hot path); callers catch
DatabaseError (or Unreachable) from here and ask `classify` what the failure means for them:

| Failure      | what failed                                        | the callers' answer                    |
|--------------|----------------------------------------------------|----------------------------------------|
| TRANSIENT    | the connection or the moment: connection lost,     | retry later: workers release the batch |
|              | server shutting down, deadlock, serialization      | with backoff, HTTP answers 503, Kafka  |
|              | failure, lock or statement timeout, pool exhausted | keeps the batch, commands exit 2       |
| NOT_MIGRATED | a table, function or schema of this version absent | `inbox migrate`                        |
| REFUSED      | the role lacks a privilege                         | grant it (SECURITY.md); 503 meanwhile  |
| POISON       | PostgreSQL refused a value of the data itself      | the one event is refused or            |
|              | (DataError: a lone surrogate, a date out of range; | dead-lettered, never its neighbours    |
|              | ProgramLimitExceeded: beyond the 1 GB limits)      |                                        |
| OTHER        | any other error raised by a statement              | workers bisect; HTTP answers 503       |
"""

from __future__ import annotations

from enum import Enum

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

# What callers catch: every error the driver raises, and the connection-level ones among them.
DatabaseError = psycopg.Error
Unreachable = psycopg.OperationalError
# a value PostgreSQL refuses to hold (SQLSTATE class 22: numeric overflow, a date out of range)
RefusedValue = psycopg.DataError
# statement_timeout (or a cancel): `inbox status` falls back to estimates when counting takes too long.
QueryCanceled = pg_errors.QueryCanceled
__all__ = [
    "DatabaseError",
    "Failure",
    "PoolTimeout",
    "QueryCanceled",
    "Unreachable",
    "classify",
    "is_transient",
    "primary_message",
    "sqlstate",
]


class Failure(Enum):
    TRANSIENT = "transient"
    NOT_MIGRATED = "not_migrated"
    REFUSED = "refused"
    POISON = "poison"
    OTHER = "other"


# OperationalError covers the connection (lost, refused, admin shutdown) and, as its subclasses,
# DeadlockDetected, SerializationFailure, LockNotAvailable and QueryCanceled (statement_timeout).
_TRANSIENT: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)
_NOT_MIGRATED: tuple[type[Exception], ...] = (
    pg_errors.UndefinedTable,
    pg_errors.UndefinedFunction,
    pg_errors.InvalidSchemaName,
)


def classify(exc: BaseException) -> Failure | None:
    """What a database error means; None when exc is no database error (a bug: let it raise)."""
    # before TRANSIENT: psycopg makes ProgramLimitExceeded (54000, a value beyond a size limit) an
    # OperationalError, and retrying the batch that holds it would cost every neighbour its attempts
    if isinstance(exc, psycopg.DataError | pg_errors.ProgramLimitExceeded):
        return Failure.POISON
    if isinstance(exc, _TRANSIENT):
        return Failure.TRANSIENT
    if not isinstance(exc, psycopg.Error):
        return None
    if isinstance(exc, _NOT_MIGRATED):
        return Failure.NOT_MIGRATED
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return Failure.REFUSED
    return Failure.OTHER


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Failure.TRANSIENT


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a server error (None for client-side ones)."""
    return getattr(exc, "sqlstate", None)


def primary_message(exc: BaseException) -> str:
    """The server's primary message without libpq's context lines, else the exception's text."""
    diag = getattr(exc, "diag", None)
    return str(getattr(diag, "message_primary", None) or exc)
