"""Usage's own metrics (services/usage/metrics.py), read from the registry of this
process, where the usage service of these tests runs: a stored receipt counts once by
its status, a replay not at all, another receipt for a taken request id is a conflict."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.integration.usage.test_usage_receipts_service import a_receipt
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.usage.v1 import usage_pb2


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_stored_receipts_and_conflicts_are_counted(usage: Any) -> None:
    stored = ("tokenforge_usage_receipts_stored_total", {"status": "succeeded"})
    conflicts = "tokenforge_usage_receipt_conflicts_total"
    before, conflicts_before = sample(stored[0], **stored[1]), sample(conflicts)
    receipt = a_receipt(f"acct-{uuid.uuid4()}")
    request = usage_pb2.RecordReceiptRequest(receipt=receipt)
    await usage.call("RecordReceipt", request)
    await usage.call("RecordReceipt", request)  # a replay answers the first
    assert sample(stored[0], **stored[1]) == before + 1

    other = usage_pb2.Receipt()
    other.CopyFrom(receipt)
    other.charge_micros += 1
    with pytest.raises(DomainError) as refused:
        await usage.call("RecordReceipt", usage_pb2.RecordReceiptRequest(receipt=other))
    assert refused.value.reason is Reason.IDEMPOTENCY_CONFLICT
    assert sample(conflicts) == conflicts_before + 1
