"""Recording a receipt of no run costs one database round trip: one insert that
commits itself (no BEGIN, no COMMIT); a replay adds one read of the stored receipt
to compare with. A run's receipt keeps its transaction (it also ends the draw)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.usage import handlers
from services.usage.domain import commands
from services.usage.storage.unit_of_work import SqlAlchemyUnitOfWork
from services.usage.transport.grpc import receipt_from_wire
from tests.integration.round_trips import counting, spy_statements
from tests.integration.usage.test_usage_receipts_service import a_receipt
from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.db import create_engine, sessionmaker
from tokenforge.runtime.service import RunningService


@pytest.fixture
async def engine(database_url: str, usage_app: RunningService) -> AsyncIterator[AsyncEngine]:
    found = create_engine(database_url, pool_size=2)
    yield found
    await found.dispose()


async def test_a_receipt_is_one_round_trip_and_a_replay_reads_it_back_whole(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = sessionmaker(engine)
    sent = spy_statements(monkeypatch)

    def uow() -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(sessions)

    warm = receipt_from_wire(a_receipt("acct_rt"))
    await handlers.record_receipt(commands.RecordReceipt(warm), uow())  # pool set-up
    counting.set(True)
    for _ in range(3):
        receipt = receipt_from_wire(a_receipt("acct_rt"))
        sent.clear()
        stored = await handlers.record_receipt(commands.RecordReceipt(receipt), uow())
        assert [s.split(" ")[0] for s in sent] == ["INSERT"], sent
        assert stored == replace(receipt, finished_at=stored.finished_at)

        sent.clear()
        replayed = await handlers.record_receipt(commands.RecordReceipt(receipt), uow())
        assert [s.split(" ")[0] for s in sent] == ["INSERT", "SELECT"], sent
        assert replayed == stored  # attempts and route attempts (JSON) read back whole

        with pytest.raises(DomainError) as refused:
            await handlers.record_receipt(
                commands.RecordReceipt(replace(receipt, charge_micros=1)), uow()
            )
        assert refused.value.reason is Reason.IDEMPOTENCY_CONFLICT
