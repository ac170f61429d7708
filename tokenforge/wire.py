"""Mapping between the shared protobuf types and the kernel's Python types."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, overload

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.timestamp_pb2 import Timestamp

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.money import Bucket, Price

_BUCKET_TO_PROTO = {
    Bucket.CREDIT: common_pb2.BUCKET_CREDIT,
    Bucket.ROUTED: common_pb2.BUCKET_ROUTED,
}
_BUCKET_FROM_PROTO = {v: k for k, v in _BUCKET_TO_PROTO.items()}
_KIND_TO_PROTO = {
    "official": common_pb2.ROUTE_KIND_OFFICIAL,
    "routed": common_pb2.ROUTE_KIND_ROUTED,
}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}


def bucket_to_proto(bucket: Bucket) -> common_pb2.Bucket:
    return _BUCKET_TO_PROTO[bucket]


def bucket_or_none(value: int) -> Bucket | None:
    """The bucket a wire value names; None when it is unset or unknown."""
    return _BUCKET_FROM_PROTO.get(value)  # type: ignore[call-overload, no-any-return]


def bucket_from_proto(value: int) -> Bucket:
    bucket = bucket_or_none(value)
    if bucket is None:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "bucket must be `credit` or `routed`.", {"param": "bucket"}
        )
    return bucket


def bucket_from_name(name: str) -> Bucket:
    try:
        return Bucket(name)
    except ValueError:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"Unknown balance {name!r}: use `credit` (Credit) or `routed` (Routed balance).",
            {"param": "bucket"},
        ) from None


def enum_word(enum: EnumTypeWrapper, value: int) -> str:
    """The word a wire enum's value stands for (RUN_STATUS_OPEN: "open"): its name
    after the prefix the enum's values share; "unspecified" for a value it does not name."""
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    found = enum.DESCRIPTOR.values_by_number.get(value)
    return found.name.removeprefix(prefix).lower() if found is not None else "unspecified"


def route_kind_to_proto(kind: str) -> common_pb2.RouteKind:
    return _KIND_TO_PROTO[kind]


def route_kind_from_proto(value: int) -> str:
    return str(_KIND_FROM_PROTO.get(value, "unspecified"))  # type: ignore[call-overload]


def price_from_proto(bucket: Bucket, prices: common_pb2.Prices) -> Price:
    return Price(
        bucket=bucket,
        input_per_million=prices.input_per_million_micros,
        output_per_million=prices.output_per_million_micros,
        cached_input_per_million=prices.cached_input_per_million_micros,
        request_fee=prices.request_fee_micros,
        cache_write_per_million=prices.cache_write_per_million_micros,
    )


def price_to_proto(price: Price) -> common_pb2.Prices:
    return common_pb2.Prices(
        input_per_million_micros=price.input_per_million,
        cached_input_per_million_micros=price.cached_input_per_million,
        output_per_million_micros=price.output_per_million,
        request_fee_micros=price.request_fee,
        cache_write_per_million_micros=price.cache_write,
    )


@overload
def timestamp(dt: datetime) -> Timestamp: ...
@overload
def timestamp(dt: None) -> None: ...
@overload
def timestamp(dt: datetime | None) -> Timestamp | None: ...
def timestamp(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    value: datetime = ts.ToDatetime(tzinfo=UTC)
    return value


def iso(ts: Timestamp) -> str | None:
    dt = from_timestamp(ts)
    return dt.isoformat() if dt else None


def item_error_to_proto(error: DomainError) -> common_pb2.ItemError:
    """One item's refusal inside a batch answer (the unary call's rich status)."""
    return common_pb2.ItemError(
        reason=error.reason.value, message=error.message, metadata=error.metadata or {}
    )


def item_error_from_proto(error: common_pb2.ItemError) -> DomainError:
    try:
        reason = Reason(error.reason)
    except ValueError:
        reason = Reason.INTERNAL
    return DomainError(reason, error.message, dict(error.metadata))


def item_outcomes(outcomes: Iterable[Any]) -> list[Any]:
    """A batch answer's outcomes (each a oneof `answer` | `error`), in order: each
    item's answer, or its refusal as the DomainError its unary call would raise."""
    return [
        item_error_from_proto(o.error) if o.WhichOneof("outcome") == "error" else o.answer
        for o in outcomes
    ]
