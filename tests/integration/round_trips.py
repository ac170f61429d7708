"""Count the statements asyncpg sends for the test's own task: a hot path's cost on the
wire (prepared executions, simple queries; prepares are once per connection and
statement, so not counted). The servers the tests run in-process share asyncpg but
run in other tasks (a wallet's hold sweeper, say) and are not counted.

    sent = spy_statements(monkeypatch)
    counting.set(True)       # in the test's task, after its set-up
    ...                      # sent[...] names each statement by its first 30 characters
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import asyncpg
import pytest
from asyncpg import prepared_stmt

counting: ContextVar[bool] = ContextVar("counting", default=False)


def spy_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []

    def spy(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if name != "prepare" and counting.get():
                query = args[0] if args and isinstance(args[0], str) else self._query
                sent.append(" ".join(query.split())[:30])
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counted)

    for name in ("fetch", "fetchrow", "fetchval", "executemany"):
        spy(prepared_stmt.PreparedStatement, name)
    for name in ("execute", "executemany", "prepare", "fetch", "fetchrow", "fetchval"):
        spy(asyncpg.Connection, name)
    return sent
