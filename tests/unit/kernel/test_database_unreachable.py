"""Which failures mean "the database could not be reached or went away" (answered
UNAVAILABLE, try again) and which are a refusal or a bug (issue 21: a PostgreSQL restart
answered 500s that said nothing of whether a request charged)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from tokenforge.runtime.db import database_unreachable


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "reset by peer"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        # SQLAlchemy wraps the driver's error; the cause tells.
        chained(
            sa_exc.InterfaceError("UPDATE ...", {}, Exception("connection is closed")),
            asyncpg.InterfaceError("connection is closed"),
        ),
        chained(RuntimeError("while claiming the key"), ConnectionRefusedError(111, "refused")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_database_gone_or_restarting_is_unreachable(error: BaseException) -> None:
    assert database_unreachable(error)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("a bug"),
        KeyError("account"),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        sa_exc.IntegrityError("INSERT ...", {}, Exception("duplicate key")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_refusal_or_a_bug_is_not(error: BaseException) -> None:
    assert not database_unreachable(error)


def test_a_cycle_of_causes_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert not database_unreachable(first)
