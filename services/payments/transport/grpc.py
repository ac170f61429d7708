"""The PaymentsService servicer: translate the wire, call the use case, return.

DomainError raised here or below is turned into a rich gRPC status by the
GuardInterceptor.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from services.payments import handlers
from services.payments.domain import commands
from services.payments.domain.checkout import CardCheckout
from services.payments.domain.model import TopUpStatus
from services.payments.domain.orders import OrderTtls
from services.payments.domain.providers import ProvidersOn
from services.payments.storage.unit_of_work import UnitOfWork
from services.payments.transport.messages import (
    order_to_proto,
    status_from_proto,
    status_to_proto,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.money import Bucket
from tokenforge.wire import bucket_or_none

_OUTCOMES = {
    payments_pb2.SANDBOX_OUTCOME_PAY: commands.SandboxOutcome.PAY,
    payments_pb2.SANDBOX_OUTCOME_FAIL: commands.SandboxOutcome.FAIL,
    payments_pb2.SANDBOX_OUTCOME_EXPIRE: commands.SandboxOutcome.EXPIRE,
}


def _bucket(value: int) -> Bucket:
    bucket = bucket_or_none(value)
    if bucket is None:
        choices = "; ".join(f"`{b.value}` ({b.label}, pays for {b.pays_for})" for b in Bucket)
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"Say which balance this top-up adds to: {choices}.",
            {"param": "bucket", "allowed": ",".join(b.value for b in Bucket)},
        )
    return bucket


def _outcome(value: int) -> commands.SandboxOutcome:
    try:
        return _OUTCOMES[value]  # type: ignore[index]
    except KeyError:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "Say which outcome to simulate: PAY, FAIL or EXPIRE.",
            {"param": "outcome"},
        ) from None


_DECISIONS = {
    payments_pb2.REVIEW_DECISION_APPROVE: commands.ReviewDecision.APPROVE,
    payments_pb2.REVIEW_DECISION_REJECT: commands.ReviewDecision.REJECT,
}

_OUTCOMES_TO_PROTO = {
    handlers.EventOutcome.ACCEPTED: payments_pb2.PROVIDER_EVENT_OUTCOME_ACCEPTED,
    handlers.EventOutcome.DUPLICATE: payments_pb2.PROVIDER_EVENT_OUTCOME_DUPLICATE,
    handlers.EventOutcome.IGNORED: payments_pb2.PROVIDER_EVENT_OUTCOME_IGNORED,
}


def _status_filter(value: int) -> TopUpStatus | None:
    return None if value == payments_pb2.TOP_UP_STATUS_UNSPECIFIED else status_from_proto(value)


def _decision(value: int) -> commands.ReviewDecision:
    try:
        return _DECISIONS[value]  # type: ignore[index]
    except KeyError:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "Say whether you APPROVE or REJECT the top-up.",
            {"param": "decision"},
        ) from None


def _account(account_id: str) -> str:
    if not account_id:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "account_id is required.", {"param": "account_id"}
        )
    return account_id


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        order_ttls: OrderTtls,
        checkout: CardCheckout | None = None,
        *,
        sandbox: bool = False,
    ) -> None:
        self._uow = uow_factory
        self._order_ttls = order_ttls
        self._checkout = checkout
        self._providers = ProvidersOn.configured(sandbox=sandbox, card=checkout is not None)

    async def CreateTopUp(
        self, request: payments_pb2.CreateTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreateTopUpResponse:
        order, replayed = await handlers.open_top_up(
            commands.CreateTopUp(
                account_id=_account(request.account_id),
                bucket=_bucket(request.bucket),
                provider=request.provider,
                paid_amount_minor=request.paid_amount_minor,
                currency=request.currency,
                idempotency_key=request.idempotency_key,
            ),
            self._uow(),
            providers=self._providers,
            ttl=self._order_ttls,
            checkout=self._checkout,
        )
        return payments_pb2.CreateTopUpResponse(top_up=order_to_proto(order), replayed=replayed)

    async def GetTopUp(
        self, request: payments_pb2.GetTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.GetTopUpResponse:
        order = await handlers.get_top_up(
            commands.GetTopUp(_account(request.account_id), request.order_id), self._uow()
        )
        return payments_pb2.GetTopUpResponse(top_up=order_to_proto(order))

    async def ListTopUps(
        self, request: payments_pb2.ListTopUpsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListTopUpsResponse:
        page = await handlers.list_top_ups(
            commands.ListTopUps(
                _account(request.account_id),
                request.page_size,
                request.page_token,
                _status_filter(request.status),
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
            commands.SimulateSandboxOutcome(
                _account(request.account_id), request.order_id, _outcome(request.outcome)
            ),
            self._uow(),
            providers=self._providers,
        )
        return payments_pb2.SimulateSandboxOutcomeResponse(top_up=order_to_proto(order))

    async def HandleProviderEvent(
        self,
        request: payments_pb2.HandleProviderEventRequest,
        context: grpc.aio.ServicerContext,
    ) -> payments_pb2.HandleProviderEventResponse:
        result = await handlers.handle_provider_event(
            commands.HandleProviderEvent(
                provider=request.provider,
                body=request.body,
                headers={k.lower(): v for k, v in request.headers.items()},
            ),
            self._uow(),
            self._checkout,
        )
        return payments_pb2.HandleProviderEventResponse(
            outcome=_OUTCOMES_TO_PROTO[result.outcome],
            provider_event_id=result.provider_event_id,
            order_id=result.order_id,
            status=(
                status_to_proto(result.status)
                if result.status is not None
                else payments_pb2.TOP_UP_STATUS_UNSPECIFIED
            ),
        )

    async def SubmitTransferProof(
        self,
        request: payments_pb2.SubmitTransferProofRequest,
        context: grpc.aio.ServicerContext,
    ) -> payments_pb2.SubmitTransferProofResponse:
        order = await handlers.submit_transfer_proof(
            commands.SubmitTransferProof(
                _account(request.account_id), request.order_id, request.transfer_reference
            ),
            self._uow(),
        )
        return payments_pb2.SubmitTransferProofResponse(top_up=order_to_proto(order))

    async def CancelTopUp(
        self, request: payments_pb2.CancelTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CancelTopUpResponse:
        order = await handlers.cancel_top_up(
            commands.CancelTopUp(_account(request.account_id), request.order_id),
            self._uow(),
            checkout=self._checkout,
        )
        return payments_pb2.CancelTopUpResponse(top_up=order_to_proto(order))

    async def ReviewTopUp(
        self, request: payments_pb2.ReviewTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ReviewTopUpResponse:
        order = await handlers.review_top_up(
            commands.ReviewTopUp(
                order_id=request.order_id,
                decision=_decision(request.decision),
                reason=request.reason,
                operator=request.operator,
            ),
            self._uow(),
        )
        return payments_pb2.ReviewTopUpResponse(top_up=order_to_proto(order))

    async def ListAllTopUps(
        self, request: payments_pb2.ListAllTopUpsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListAllTopUpsResponse:
        page = await handlers.list_all_top_ups(
            commands.ListAllTopUps(
                status=_status_filter(request.status),
                account_id=request.account_id,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
            self._uow(),
        )
        return payments_pb2.ListAllTopUpsResponse(
            top_ups=[order_to_proto(o) for o in page.orders],
            next_page_token=page.next_page_token,
        )

    async def InspectTopUp(
        self, request: payments_pb2.InspectTopUpRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.InspectTopUpResponse:
        order = await handlers.inspect_top_up(request.order_id, self._uow())
        return payments_pb2.InspectTopUpResponse(top_up=order_to_proto(order))
