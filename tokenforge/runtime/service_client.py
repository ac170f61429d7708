"""The base of the typed clients of our services (`services/<ctx>/client.py`).

One `Peer` (channel, credential, request id, client span), a deadline on every call,
and the retry that every idempotent call may take: a call that found the service
unavailable is tried again with jittered exponential backoff; a refusal is never
retried. Subclasses set `service` (the peer's name in errors) and `stub`, and add
the typed methods; a call that has a batch RPC goes through `_batcher`.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Self, TypeVar

from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.batching import Batcher
from tokenforge.runtime.grpc_client import Peer
from tokenforge.wire import item_outcomes

T = TypeVar("T")

DEFAULT_DEADLINE_S = 2.0
DEFAULT_ATTEMPTS = 3
BACKOFF_S = 0.05


class ServiceClient:
    service: ClassVar[str]
    stub: Any

    def __init__(
        self,
        peer: Peer,
        *,
        deadline: float = DEFAULT_DEADLINE_S,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = BACKOFF_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.peer = peer
        self.deadline = deadline
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._sleep = sleep

    @classmethod
    def connect(cls, address: str, token: str, **options: Any) -> Self:
        return cls(Peer(cls.service, address, token), **options)

    async def close(self) -> None:
        await self.peer.close()

    def as_caller(self, token: str) -> Self:
        """This client calling with another credential on the same channel (the
        gateway's operator console passes on the operator's own, so each service
        authorizes the operator as it does the CLI). For plain calls: batched calls
        and caches stay the original client's. Closing it closes nothing."""
        other = copy.copy(self)
        other.peer = self.peer.as_caller(token)
        return other

    def _batcher(
        self,
        unary: str,
        many: str,
        batch: Callable[[Sequence[Any]], Any],
        *,
        alone: Callable[[Any], Any] = lambda item: item,
        **options: Any,
    ) -> Batcher[Any, Any]:
        """A `Batcher` over the `unary` RPC and its batch RPC `many`: an item goes alone
        as `alone(item)` (the item itself by default), several as `batch(items)`, whose
        answer's `outcomes` become each item's answer or error (tokenforge.wire). A call
        carries its item's request id, a batch its first item's (the batch runs in the
        first caller's trace). `options` go to the Batcher (max_size, batching, linger);
        it is named `<service>.<unary>` in the metrics."""

        async def one(item: Any) -> Any:
            return await self._once(unary, alone(item), getattr(item, "request_id", ""))

        async def several(items: Sequence[Any]) -> list[Any]:
            answer = await self._once(many, batch(items), getattr(items[0], "request_id", ""))
            return item_outcomes(answer.outcomes)

        return Batcher(one, several, name=f"{self.service}.{unary}", **options)

    async def _once(
        self, method: str, request: Any, request_id: str = "", timeout: float | None = None
    ) -> Any:
        return await self.peer.call(
            getattr(self.stub, method),
            request,
            timeout=self.deadline if timeout is None else timeout,
            request_id=request_id,
        )

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, retried on SERVICE_UNAVAILABLE (for idempotent calls only)."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except DomainError as error:
                if error.reason is not Reason.SERVICE_UNAVAILABLE or attempt == self.attempts:
                    raise
            await self._sleep(delay * (1 + random.random()))  # noqa: S311 - jitter, not secrets
            delay *= 2
        raise AssertionError("unreachable")

    async def _call(
        self, method: str, request: Any, request_id: str = "", timeout: float | None = None
    ) -> Any:
        """One unary call, retried on SERVICE_UNAVAILABLE (`timeout`: the client's
        deadline unless given)."""
        return await self._retrying(lambda: self._once(method, request, request_id, timeout))
