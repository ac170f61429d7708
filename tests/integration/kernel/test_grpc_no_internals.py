"""Callers of a service are users too (DESIGN S2), against a real gRPC server: a NUL in
any string field is refused INVALID_ARGUMENT naming it before a handler runs, an
unexpected failure answers INTERNAL without its text, and a refusal that echoes a
huge input still arrives (its status is clipped to fit gRPC's trailers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.runtime.batch_items import without_nul_items
from tokenforge.runtime.grpc_client import Peer, to_domain_error
from tokenforge.runtime.grpc_server import create_server

LEAK = (
    "(sqlalchemy.dialects.postgresql.asyncpg.Error) invalid byte sequence [SQL: SELECT "
    "wallet.balances.posted FROM wallet.balances WHERE account_id = $1] ('acct_1',)"
)


class Wallet(wallet_pb2_grpc.WalletServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    async def GetBalances(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.calls += 1
        if request.account_id == "boom":
            raise RuntimeError(LEAK)
        if request.account_id == "restarting":  # its database restarting (issue 21)
            raise RuntimeError(LEAK) from ConnectionRefusedError(111, "Connection refused")
        if request.account_id.startswith("long"):
            raise DomainError(
                Reason.ACCOUNT_NOT_FOUND,
                f"No account {request.account_id}.",
                {"account_id": request.account_id},
            )
        return wallet_pb2.GetBalancesResponse()


class Payments(payments_pb2_grpc.PaymentsServiceServicer):  # type: ignore[misc]
    async def HandleProviderEvent(self, request: Any, context: Any) -> Any:  # noqa: N802
        return payments_pb2.HandleProviderEventResponse()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Peer, Wallet]]:
    wallet = Wallet()
    server = create_server(
        [
            (
                wallet_pb2_grpc.add_WalletServiceServicer_to_server,
                wallet,
                "tokenforge.wallet.v1.WalletService",
            ),
            (
                payments_pb2_grpc.add_PaymentsServiceServicer_to_server,
                Payments(),
                "tokenforge.payments.v1.PaymentsService",
            ),
        ],
        port=0,
    )
    await server.server.start()
    peer = Peer("wallet", f"127.0.0.1:{server.port}", "")
    try:
        yield peer, wallet
    finally:
        await peer.close()
        await server.stop(grace=0.1)


async def test_a_nul_in_a_string_field_is_refused_before_the_handler_runs(
    served: tuple[Peer, Wallet],
) -> None:
    peer, wallet = served
    stub = wallet_pb2_grpc.WalletServiceStub(peer.channel)
    with pytest.raises(DomainError) as refused:
        await peer.call(stub.GetBalances, wallet_pb2.GetBalancesRequest(account_id="a\x00"))
    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert refused.value.metadata == {"field": "account_id"}
    assert wallet.calls == 0
    payments = payments_pb2_grpc.PaymentsServiceStub(peer.channel)
    with pytest.raises(DomainError) as in_a_map:
        await peer.call(
            payments.HandleProviderEvent,
            payments_pb2.HandleProviderEventRequest(provider="stripe", headers={"x": "1\x00"}),
        )
    assert in_a_map.value.metadata == {"field": "headers[x]"}


async def test_an_unexpected_failure_answers_internal_without_its_text(
    served: tuple[Peer, Wallet],
) -> None:
    peer, _ = served
    stub = wallet_pb2_grpc.WalletServiceStub(peer.channel)
    with pytest.raises(DomainError) as failed:
        await peer.call(
            stub.GetBalances, wallet_pb2.GetBalancesRequest(account_id="boom"), request_id="req_1"
        )
    assert failed.value.reason is Reason.INTERNAL
    assert "req_1" in failed.value.message
    for leaked in ("SELECT", "wallet.", "sqlalchemy", "asyncpg", "acct_1", "RuntimeError"):
        assert leaked not in failed.value.message
        assert leaked not in str(failed.value.metadata)


async def test_a_database_restarting_answers_unavailable_without_internals(
    served: tuple[Peer, Wallet],
) -> None:
    """Not INTERNAL (a bug, a 500 at the gateway that says nothing of a charge):
    UNAVAILABLE, which callers retry when the call is idempotent."""
    peer, _ = served
    stub = wallet_pb2_grpc.WalletServiceStub(peer.channel)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetBalances(wallet_pb2.GetBalancesRequest(account_id="restarting"))
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "could not reach its database" in str(failed.value.details())
    for leaked in ("SELECT", "sqlalchemy", "asyncpg", "acct_1", "Connection refused"):
        assert leaked not in str(failed.value.details())
    with pytest.raises(DomainError) as heard:
        await peer.call(stub.GetBalances, wallet_pb2.GetBalancesRequest(account_id="restarting"))
    assert heard.value.reason is Reason.SERVICE_UNAVAILABLE


async def test_a_refusal_echoing_a_huge_input_still_arrives(
    served: tuple[Peer, Wallet],
) -> None:
    peer, _ = served
    stub = wallet_pb2_grpc.WalletServiceStub(peer.channel)
    with pytest.raises(DomainError) as refused:
        await peer.call(
            stub.GetBalances, wallet_pb2.GetBalancesRequest(account_id="long" + "a" * 20_000)
        )
    assert refused.value.reason is Reason.ACCOUNT_NOT_FOUND
    assert len(refused.value.message) <= 2048


class _PlainStatus(grpc.aio.AioRpcError):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNKNOWN,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=f"Unexpected <class 'sqlalchemy.exc.DBAPIError'>: {LEAK}",
        )


def test_the_client_never_copies_a_plain_status_details_into_the_message() -> None:
    error = to_domain_error(_PlainStatus(), "usage")
    assert error.reason is Reason.INTERNAL
    assert "usage" in error.message
    assert "SELECT" not in error.message and "sqlalchemy" not in error.message


async def test_a_batch_item_with_a_nul_is_refused_alone_and_the_others_run() -> None:
    items = [
        wallet_pb2.GetBalancesRequest(account_id="a"),
        wallet_pb2.GetBalancesRequest(account_id="b\x00"),
        wallet_pb2.GetBalancesRequest(account_id="c"),
    ]
    ran: list[str] = []

    async def run(clean: list[Any]) -> list[Any]:
        ran.extend(item.account_id for item in clean)
        return [f"done {item.account_id}" for item in clean]

    outcomes = await without_nul_items(items, run)
    assert ran == ["a", "c"]
    assert outcomes[0] == "done a" and outcomes[2] == "done c"
    assert isinstance(outcomes[1], DomainError)
    assert outcomes[1].reason is Reason.INVALID_ARGUMENT
    assert outcomes[1].metadata == {"field": "account_id"}
