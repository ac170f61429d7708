"""A failure nobody planned for answers 500 internal_error, unless it was the gateway's
own database not answering (a restart, a failover): then 503 service_unavailable with
Retry-After, which clears with time (issue 21: seen under `make chaos`)."""

from __future__ import annotations

import asyncpg
import sqlalchemy.exc

from services.gateway.transport.http.common import unexpected
from tokenforge.errors import Reason, http_status


def chained(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


def test_the_database_restarting_answers_503_with_retry_after() -> None:
    shutting_down = asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
    for error in (
        shutting_down,
        chained(RuntimeError("enqueue failed"), shutting_down),
        sqlalchemy.exc.OperationalError("INSERT", {}, ConnectionRefusedError(111, "refused")),
        ConnectionRefusedError(111, "Connect call failed"),
        chained(
            sqlalchemy.exc.InternalError("DELETE", {}, Exception("wrapped")),
            asyncpg.exceptions.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            ),
        ),
        asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        ),
    ):
        answer = unexpected("req_1", error)
        assert answer.reason is Reason.SERVICE_UNAVAILABLE, error
        assert http_status(answer) == 503
        assert (answer.metadata or {})["retry_after_s"] == "2"
        assert "req_1" in answer.message and "Try again" in answer.message


def test_anything_else_is_an_internal_error_naming_the_request() -> None:
    for error in (KeyError("x"), ValueError("bad"), chained(RuntimeError("a"), TypeError("b"))):
        answer = unexpected("req_2", error)
        assert answer.reason is Reason.INTERNAL
        assert http_status(answer) == 500
        assert answer.metadata == {"request_id": "req_2"}
