"""The kernel's wire helpers (tokenforge/wire.py): the one bucket map, and the words
of the wire's enums (run and receipt statuses)."""

from __future__ import annotations

import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Bucket
from tokenforge.wire import bucket_from_proto, bucket_or_none, bucket_to_proto, enum_word


@pytest.mark.parametrize("bucket", list(Bucket))
def test_every_bucket_goes_to_the_wire_and_back(bucket: Bucket) -> None:
    assert bucket_or_none(bucket_to_proto(bucket)) is bucket
    assert bucket_from_proto(bucket_to_proto(bucket)) is bucket


def test_an_unset_or_unknown_bucket_is_none_or_refused() -> None:
    assert bucket_or_none(common_pb2.BUCKET_UNSPECIFIED) is None
    assert bucket_or_none(99) is None
    with pytest.raises(DomainError) as refused:
        bucket_from_proto(common_pb2.BUCKET_UNSPECIFIED)
    assert refused.value.reason is Reason.INVALID_ARGUMENT


def test_enum_words_are_the_names_after_the_prefix() -> None:
    assert [enum_word(usage_pb2.RunStatus, v) for v in range(6)] == [
        "unspecified",
        "open",
        "closing",
        "closed",
        "expired",
        "unspecified",
    ]
    assert enum_word(usage_pb2.ReceiptStatus, usage_pb2.RECEIPT_STATUS_REJECTED) == "rejected"
