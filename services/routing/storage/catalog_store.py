"""The running catalog: versioned in the routing schema, the same on every replica.

Precedence:

- The **database wins** once it holds a version. The highest `version_id` in
  `routing.catalog_versions` is the running catalog; Resolve answers name it
  (`v<id>`).
- The **file** on disk (`TOKENFORGE_CATALOG_PATH`, else the demo catalog) is the
  bootstrap: at start, when the table is empty, the file becomes version 1. When
  the file's content differs from the last version a start took from a file (author
  `file:<path>`), the start applies it as a new version: editing the file and
  restarting is a deliberate change. Edits to the file while routing runs are not
  read: change a running catalog with `tokenforge catalog apply` (PutCatalog). A
  file that fails validation at start is refused and the database version stays
  (with no version at all, routing cannot start).
- Every change is validated whole first: a catalog with any error is refused whole
  (INVALID_ARGUMENT naming line and field) and the running one stays.
- Replicas converge by polling the newest version id every `poll_every_s` (2 s):
  a change reaches every replica within about that bound. `${VAR}` references are
  kept in the stored text and resolved by each replica from its own environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from services.routing.domain.catalog import Catalog, CatalogError, parse_catalog
from services.routing.storage.repository import FILE_AUTHOR_PREFIX, StoredCatalog
from services.routing.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason

log = logging.getLogger(__name__)


def sha256_text(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def refusal(error: CatalogError) -> DomainError:
    metadata = {"field": error.path or "<root>", "problem": error.problem}
    if error.line is not None:
        metadata["line"] = str(error.line)
    return DomainError(
        Reason.INVALID_ARGUMENT,
        f"Catalog refused whole, the running catalog stays: {error}",
        metadata,
    )


class CatalogStore:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        bootstrap: Path,
        *,
        env: Mapping[str, str] | None = None,
        poll_every_s: float = 2.0,
    ) -> None:
        self._uow = uow_factory
        self._bootstrap = bootstrap
        self._env = env
        self.poll_every_s = poll_every_s
        self._catalog: Catalog | None = None
        self._stored: StoredCatalog | None = None
        self._listeners: list[Callable[[Catalog], None]] = []

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def current(self) -> Catalog:
        if self._catalog is None:
            raise RuntimeError("catalog store not started")
        return self._catalog

    @property
    def stored(self) -> StoredCatalog:
        if self._stored is None:
            raise RuntimeError("catalog store not started")
        return self._stored

    def parse(self, content: str, source: str) -> Catalog:
        return parse_catalog(content.encode("utf-8"), source, self.env)

    def _use(self, stored: StoredCatalog) -> None:
        catalog = replace(self.parse(stored.content, stored.version), version=stored.version)
        self._catalog, self._stored = catalog, stored

    async def start(self) -> None:
        """Load the newest version, bootstrapping (or updating) from the file."""
        author = FILE_AUTHOR_PREFIX + str(self._bootstrap)
        content: str | None = None
        try:
            content = self._bootstrap.read_text("utf-8")
            self.parse(content, str(self._bootstrap))
        except (OSError, CatalogError) as error:
            log.error("catalog file %s not used: %s", self._bootstrap, error)
            content = None
        async with self._uow() as uow:
            await uow.catalogs.lock()
            latest = await uow.catalogs.latest()
            from_file = await uow.catalogs.latest_from_file()
            if content is not None and (
                from_file is None or from_file.content_sha256 != sha256_text(content)
            ):
                latest = await uow.catalogs.add(content, sha256_text(content), author)
                log.info("catalog file %s applied as %s", self._bootstrap, latest.version)
            await uow.commit()
        if latest is None:
            raise RuntimeError(f"no catalog: {self._bootstrap} is unusable and none is stored")
        self._use(latest)
        log.info("catalog %s running", latest.version)

    async def refresh(self) -> bool:
        """Adopt a newer version if one was stored (by any replica); True if changed."""
        async with self._uow() as uow:
            newest = await uow.catalogs.latest_id()
            if self._stored is not None and newest <= self._stored.version_id:
                return False
            stored = await uow.catalogs.latest()
        if stored is None:
            return False
        try:
            self._use(stored)
        except CatalogError as error:
            # Valid where it was stored, not here (e.g. an env var this replica lacks).
            log.error("catalog %s cannot run here, keeping the previous one: %s", stored, error)
            return False
        log.info("catalog now %s (by %s)", stored.version, stored.created_by)
        for listener in self._listeners:
            listener(self.current())
        return True

    def on_change(self, listener: Callable[[Catalog], None]) -> None:
        self._listeners.append(listener)

    async def put(self, content: str, author: str) -> tuple[StoredCatalog, bool]:
        """Validate whole, then store as the newest version and run it here at once."""
        try:
            self.parse(content, "catalog")
        except CatalogError as error:
            raise refusal(error) from None
        digest = sha256_text(content)
        async with self._uow() as uow:
            await uow.catalogs.lock()
            latest = await uow.catalogs.latest()
            if latest is not None and latest.content_sha256 == digest:
                return latest, False
            stored = await uow.catalogs.add(content, digest, author or "operator")
            await uow.commit()
        await self.refresh()
        return stored, True

    async def history(self, limit: int) -> list[StoredCatalog]:
        async with self._uow() as uow:
            return await uow.catalogs.history(limit)

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_every_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("catalog poll failed; retrying in %s s", self.poll_every_s)
