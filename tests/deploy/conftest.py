"""Render the kustomize overlays once per session (see k8s_tree.py)."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_tree import K8S, OVERLAYS, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """overlay name -> the objects `kubectl kustomize deploy/k8s/overlays/<name>` prints."""
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}
