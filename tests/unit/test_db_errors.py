"""The one classifier of database errors (inbox/db/errors.py), on the driver's own exception classes.

What each class means to a running worker is tested against real PostgreSQL raising it
(tests/integration/test_apply_failures.py); this pins the table in the module's docstring."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from inbox.db.errors import Failure, classify, is_transient


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), Failure.TRANSIENT),
        (pg_errors.AdminShutdown("terminating connection"), Failure.TRANSIENT),
        (pg_errors.DeadlockDetected("deadlock detected"), Failure.TRANSIENT),
        (pg_errors.SerializationFailure("could not serialize access"), Failure.TRANSIENT),
        (pg_errors.LockNotAvailable("could not obtain lock"), Failure.TRANSIENT),
        (pg_errors.QueryCanceled("canceling statement due to statement timeout"), Failure.TRANSIENT),
        (PoolTimeout("couldn't get a connection"), Failure.TRANSIENT),
        (pg_errors.UndefinedTable('relation "inbox.quota_events" does not exist'), Failure.NOT_MIGRATED),
        (pg_errors.UndefinedFunction("function inbox.process_batch does not exist"), Failure.NOT_MIGRATED),
        (pg_errors.InvalidSchemaName('schema "inbox" does not exist'), Failure.NOT_MIGRATED),
        (pg_errors.InsufficientPrivilege("permission denied"), Failure.REFUSED),
        (pg_errors.NumericValueOutOfRange("numeric field overflow"), Failure.POISON),
        (pg_errors.UntranslatableCharacter("unsupported Unicode escape sequence"), Failure.POISON),
        (pg_errors.ProgramLimitExceeded("total size of jsonb array elements exceeds"), Failure.POISON),
        (pg_errors.CheckViolation("violates check constraint"), Failure.OTHER),
        (pg_errors.RaiseException("raised by a trigger"), Failure.OTHER),
    ],
)
def test_each_driver_error_has_one_meaning(error: Exception, failure: Failure) -> None:
    assert classify(error) is failure
    assert is_transient(error) is (failure is Failure.TRANSIENT)


@pytest.mark.parametrize("error", [KeyError("quota_id"), ValueError("bad"), RuntimeError("bug")])
def test_an_error_that_is_no_database_error_has_no_meaning_here(error: Exception) -> None:
    """None: the caller lets it raise (a bug in our code must not be retried or dead-lettered)."""
    assert classify(error) is None
    assert not is_transient(error)
