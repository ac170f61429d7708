"""The PaymentsService servicer: translate the wire, call the use case, return.

DomainError raised here or below is turned into a rich gRPC status by the
GuardInterceptor.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc

from services.payments import handlers
from services.payments.storage.unit_of_work import UnitOfWork
from services.payments.transport.messages import order_to_proto
from tokenforge.common.v1 import common_pb2
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket
from tokenforge.payments.v1 import payments_pb2, payments_pb2_grpc

_BUCKETS = {common_pb2.BUCKET_CREDIT: Bucket.CREDIT, common_pb2.BUCKET_ROUTED: Bucket.ROUTED}

_OUTCOMES = {
    payments_pb2.SANDBOX_OUTCOME_PAY: handlers.SandboxOutcome.PAY,
    payments_pb2.SANDBOX_OUTCOME_FAIL: handlers.SandboxOutcome.FAIL,
    payments_pb2.SANDBOX_OUTCOME_EXPIRE: handlers.SandboxOutcome.EXPIRE,
}


def _bucket(value: int) -> Bucket:
    try:
        return _BUCKETS[value]  # type: ignore[index]
    except KeyError:
        choices = "; ".join(f"`{b.value}` ({b.label}, pays for {b.pays_for})" for b in Bucket)
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"Say which balance this top-up adds to: {choices}.",
            {"param": "bucket", "allowed": ",".join(b.value for b in Bucket)},
        ) from None


def _outcome(value: int) -> handlers.SandboxOutcome:
    try:
        return _OUTCOMES[value]  # type: ignore[index]
    except KeyError:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "Say which outcome to simulate: PAY, FAIL or EXPIRE.",
            {"param": "outcome"},
        ) from None


def _account(account_id: str) -> str:
    if not account_id:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "account_id is required.", {"param": "account_id"}
        )
    return account_id


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):  # type: ignore[misc]
    def __init__(self, uow_factory: Callable[[], UnitOfWork], order_ttl: timedelta) -> None:
        self._uow = uow_factory
        self._order_ttl = order_ttl

    async def CreateTopUp(
        self, request: payments_pb2.CreateTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreateTopUpResponse:
        order = await handlers.create_top_up(
            handlers.CreateTopUp(
                account_id=_account(request.account_id),
                bucket=_bucket(request.bucket),
                provider=request.provider,
                paid_amount_minor=request.paid_amount_minor,
                currency=request.currency,
                idempotency_key=request.idempotency_key,
            ),
            self._uow(),
            ttl=self._order_ttl,
        )
        return payments_pb2.CreateTopUpResponse(top_up=order_to_proto(order))

    async def GetTopUp(
        self, request: payments_pb2.GetTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetTopUpResponse:
        order = await handlers.get_top_up(
            handlers.GetTopUp(_account(request.account_id), request.order_id), self._uow()
        )
        return payments_pb2.GetTopUpResponse(top_up=order_to_proto(order))

    async def ListTopUps(
        self, request: payments_pb2.ListTopUpsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListTopUpsResponse:
        page = await handlers.list_top_ups(
            handlers.ListTopUps(
                _account(request.account_id), request.page_size, request.page_token
            ),
            self._uow(),
        )
        return payments_pb2.ListTopUpsResponse(
            top_ups=[order_to_proto(o) for o in page.orders],
            next_page_token=page.next_page_token,
        )

    async def SimulateSandboxOutcome(
        self,
        request: payments_pb2.SimulateSandboxOutcomeRequest,
        context: grpc.aio.ServicerContext,
    ) -> payments_pb2.SimulateSandboxOutcomeResponse:
        order = await handlers.simulate_sandbox_outcome(
            handlers.SimulateSandboxOutcome(
                _account(request.account_id), request.order_id, _outcome(request.outcome)
            ),
            self._uow(),
        )
        return payments_pb2.SimulateSandboxOutcomeResponse(top_up=order_to_proto(order))
