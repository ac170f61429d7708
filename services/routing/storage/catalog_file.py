"""The catalog file on disk, re-read when it changes so an edit needs no restart.

The file's modification time is checked at most every `check_every_s` seconds, on
the next read after that; a broken edit is logged and the last good catalog stays.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from services.routing.domain.catalog import Catalog, CatalogError, parse_catalog

log = logging.getLogger(__name__)

DEMO_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "demo.yaml"


def read_catalog(path: Path, env: Mapping[str, str] | None = None) -> Catalog:
    """Read and validate a catalog file (raises CatalogError, OSError)."""
    return parse_catalog(path.read_bytes(), str(path), os.environ if env is None else env)


class CatalogFile:
    def __init__(
        self,
        path: Path,
        *,
        check_every_s: float = 2.0,
        env: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._env = env
        self._check_every_s = check_every_s
        self._monotonic = monotonic
        self._stamp = self._stat()
        # A broken catalog at start is an error: there is no good one to keep.
        self._catalog = read_catalog(path, env)
        self._checked_at = monotonic()
        log.info("catalog %s loaded, version %s", path, self._catalog.version)

    def _stat(self) -> tuple[int, int]:
        info = self.path.stat()
        return info.st_mtime_ns, info.st_size

    def current(self) -> Catalog:
        now = self._monotonic()
        if now - self._checked_at >= self._check_every_s:
            self._checked_at = now
            self._reload_if_changed()
        return self._catalog

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._stat()
        except OSError as err:
            log.error(
                "catalog %s cannot be read, keeping version %s: %s",
                self.path,
                self._catalog.version,
                err,
            )
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            catalog = read_catalog(self.path, self._env)
        except (CatalogError, OSError) as err:
            log.error("catalog edit refused, keeping version %s: %s", self._catalog.version, err)
            return
        if catalog.version != self._catalog.version:
            log.info(
                "catalog %s reloaded: version %s -> %s",
                self.path,
                self._catalog.version,
                catalog.version,
            )
        self._catalog = catalog
