"""The catalog file on disk: the bootstrap of the versioned catalog (see
storage/catalog_store.py: the newest database version runs; operators change it with
`tokenforge catalog apply`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from services.routing.domain.catalog import Catalog, parse_catalog

DEMO_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "demo.yaml"


def read_catalog(path: Path, env: Mapping[str, str] | None = None) -> Catalog:
    """Read and validate a catalog file (raises CatalogError, OSError)."""
    return parse_catalog(path.read_bytes(), str(path), os.environ if env is None else env)
