"""API keys cached in each routing replica's memory, so Resolve reads no database.

The bound: an entry lives `ttl_s` (2 s). A revocation, rotation or expiry takes
effect at once on the replica that made it (its entry is dropped) and within
`ttl_s` on every other replica. Unknown digests are cached too (same TTL), so a
flood of bad keys does not reach the database more than once per 2 s per key.

A caller that reuses a Resolve answer (`reuse_for_ms`) stays inside the same
bound: routing never lets it reuse past the moment this cache's entry of the key
goes stale (`fresh_for`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from services.routing.domain.access import ApiKey

DEFAULT_TTL_S = 2.0
MAX_ENTRIES = 100_000


@dataclass
class _Entry:
    key: ApiKey | None
    loaded_at: float


class KeyCache:
    def __init__(
        self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def get(self, digest: str) -> tuple[bool, ApiKey | None]:
        """(found, key); found is False when the entry is missing or stale."""
        entry = self._entries.get(digest)
        if entry is None or self._clock() - entry.loaded_at >= self.ttl_s:
            return False, None
        return True, entry.key

    def fresh_for(self, digest: str) -> float:
        """Seconds before the entry goes stale (0 when missing or stale)."""
        entry = self._entries.get(digest)
        if entry is None:
            return 0.0
        return max(0.0, self.ttl_s - (self._clock() - entry.loaded_at))

    def put(self, digest: str, key: ApiKey | None) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = _Entry(key, self._clock())

    def update(self, digest: str, key: ApiKey) -> None:
        """Replace a cached key without extending its life."""
        entry = self._entries.get(digest)
        if entry is not None:
            entry.key = key

    def forget(self, key_id: str) -> None:
        for digest, entry in list(self._entries.items()):
            if entry.key is not None and entry.key.key_id == key_id:
                del self._entries[digest]
