"""The wallet started once against the real PostgreSQL and NATS of the session, with
the payments service it asks to confirm each top-up (sandbox orders, no NATS of its
own: the tests publish the events themselves, as payments' NATS user)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.payments import app as payments_service
from services.wallet import app
from services.wallet.storage.unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork, utcnow
from tests.conftest import embedded_nats, service_urls
from tests.integration.services import ADMIN, INTERNAL, Caller, calling, started
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.runtime.db import async_url, create_engine, sessionmaker
from tokenforge.runtime.embedded import EmbeddedNats
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

__all__ = ["ADMIN", "INTERNAL", "Payments", "Wallet"]


@pytest.fixture(scope="session")
def wallet_nats(servers_dir: Path) -> Iterator[EmbeddedNats | None]:
    """A NATS server of the wallet tests' own (with the same users): the wallets other
    tests of the session started (the e2e system's) share the durable consumer
    `wallet-topup-credits` and would take some of these tests' events, asking another
    payments service, which knows none of these orders."""
    yield from embedded_nats(servers_dir / "wallet-nats")


@pytest.fixture(scope="session")
def nats_url(wallet_nats: EmbeddedNats | None) -> str:
    """The operator's URL of the wallet tests' NATS (overrides the session's)."""
    return wallet_nats.url if wallet_nats else os.environ["TOKENFORGE_NATS_URL"]


@pytest.fixture(scope="session")
def nats_urls(wallet_nats: EmbeddedNats | None) -> dict[str, str]:
    """Each service's URL on the wallet tests' NATS (overrides the session's)."""
    return service_urls(wallet_nats)


@pytest.fixture(scope="session")
async def payments_app(database_url: str) -> AsyncIterator[RunningService]:
    """Payments on a database of its own: the session's other payments services (whose
    relays publish every unpublished outbox row of their database) leave its orders'
    events alone, so the only events about them are the ones these tests publish."""
    name = f"payments_wallet_tests_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(async_url(database_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    url = make_url(async_url(database_url)).set(database=name).render_as_string(hide_password=False)
    async with started(payments_service, url, sandbox_provider=True) as running:
        yield running


@pytest.fixture(scope="session")
async def wallet_app(
    database_url: str, nats_urls: dict[str, str], payments_app: RunningService
) -> AsyncIterator[RunningService]:
    async with started(
        app, database_url, nats_url=nats_urls["wallet"], payments_addr=payments_app.address
    ) as running:
        yield running


class Payments(Caller):
    """Real orders in the payments service, opened and paid (sandbox) over gRPC."""

    stub_class = payments_pb2_grpc.PaymentsServiceStub

    async def order(
        self, account: str, bucket: int, cents: int, *, pay: bool = True
    ) -> payments_pb2.TopUp:
        """A sandbox order of `cents` USD for `bucket`, paid unless `pay` is False."""
        created = await self.peer.call(
            self.stub.CreateTopUp,
            payments_pb2.CreateTopUpRequest(
                account_id=account,
                bucket=bucket,
                provider="sandbox",
                paid_amount_minor=cents,
                currency="USD",
                idempotency_key=str(uuid.uuid4()),
            ),
        )
        if not pay:
            return created.top_up
        paid = await self.peer.call(
            self.stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=account,
                order_id=created.top_up.order_id,
                outcome=payments_pb2.SANDBOX_OUTCOME_PAY,
            ),
        )
        return paid.top_up


@pytest.fixture(scope="session")
async def payments(payments_app: RunningService) -> AsyncIterator[Payments]:
    async with calling(Payments, payments_app, INTERNAL) as caller:
        yield caller


@pytest.fixture(scope="session")
async def internal_peer(wallet_app: RunningService) -> AsyncIterator[Peer]:
    peer = Peer("wallet", wallet_app.address, INTERNAL)
    yield peer
    await peer.close()


@pytest.fixture(scope="session")
async def admin_peer(wallet_app: RunningService) -> AsyncIterator[Peer]:
    peer = Peer("wallet", wallet_app.address, ADMIN)
    yield peer
    await peer.close()


class Wallet(Caller):
    stub_class = wallet_pb2_grpc.WalletServiceStub

    async def open_funded(self, credit: int = 0, routed: int = 0) -> str:
        account = f"acct-{uuid.uuid4()}"
        await self.call("OpenAccount", wallet_pb2.OpenAccountRequest(account_id=account))
        for bucket, amount in (
            (common_pb2.BUCKET_CREDIT, credit),
            (common_pb2.BUCKET_ROUTED, routed),
        ):
            if amount:
                await self.call(
                    "Credit",
                    wallet_pb2.CreditRequest(
                        account_id=account,
                        bucket=bucket,
                        amount_micros=amount,
                        order_id=f"order-{uuid.uuid4()}",
                    ),
                )
        return account

    async def balance(self, account: str, bucket: int = common_pb2.BUCKET_CREDIT) -> Any:
        response = await self.call("GetBalances", wallet_pb2.GetBalancesRequest(account_id=account))
        return next(b for b in response.balances if b.bucket == bucket)


def assert_one_of_settle_or_release_won(outcomes: list[str], entries: Any, after: Any) -> None:
    """50 settles of 60 and 50 releases raced on one hold of a balance of 1,000:
    whichever came first won, every later call replayed it or was refused, and the
    ledger and the balance show that one effect only."""
    succeeded = {o for o in outcomes if o != "refused"}
    assert succeeded in ({"Settle:HOLD_STATUS_SETTLED"}, {"Release:HOLD_STATUS_RELEASED"})
    if succeeded == {"Settle:HOLD_STATUS_SETTLED"}:
        assert outcomes.count("Settle:HOLD_STATUS_SETTLED") == 50
        assert [e.amount_micros for e in entries] == [-60]
        assert (after.posted_micros, after.held_micros) == (940, 0)
    else:
        assert outcomes.count("Release:HOLD_STATUS_RELEASED") == 50
        assert list(entries) == []
        assert (after.posted_micros, after.held_micros) == (1_000, 0)


@pytest.fixture(scope="session")
def wallet(internal_peer: Peer) -> Wallet:
    return Wallet(internal_peer)


@pytest.fixture(scope="session")
def operator(admin_peer: Peer) -> Wallet:
    return Wallet(admin_peer)


@pytest.fixture(scope="session")
async def engine(database_url: str, wallet_app: RunningService) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
def uow_at(engine: AsyncEngine) -> Callable[[timedelta], UnitOfWork]:
    """A unit of work whose clock runs `shift` ahead of now (to pass a hold's TTL)."""
    sessions = sessionmaker(engine)

    def make(shift: timedelta = timedelta()) -> UnitOfWork:
        def clock() -> datetime:
            return utcnow() + shift

        return SqlAlchemyUnitOfWork(sessions, clock)

    return make


@pytest.fixture(autouse=True)
async def reconciled_after(operator: Wallet) -> AsyncIterator[None]:
    """Every wallet scenario ends with a clean reconciliation of the whole wallet."""
    yield
    report = await operator.call("Reconcile", wallet_pb2.ReconcileRequest())
    assert report.ok, [f"{v.rule} {v.subject}: {v.detail}" for v in report.violations]
