"""The catalog file is re-read when it changes (checked at most every 2 s); a broken
edit keeps the last good catalog."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from services.routing.domain.catalog import CatalogError
from services.routing.storage.catalog_file import DEMO_CATALOG, CatalogFile


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def demo_text() -> str:
    return DEMO_CATALOG.read_text()


def test_an_edit_is_picked_up_after_the_check_interval(tmp_path: Path, demo_text: str) -> None:
    path, clock = tmp_path / "catalog.yaml", Clock()
    write(path, demo_text, 1_000_000_000)
    source = CatalogFile(path, env={}, monotonic=clock)
    first = source.current()

    write(path, demo_text.replace("input: 2500000", "input: 3000000"), 2_000_000_000)
    clock.now += 1.0
    before_interval = source.current()
    clock.now += 1.0
    after_interval = source.current()

    assert before_interval is first
    assert after_interval.version != first.version
    route = after_interval.model("demo-chat").routes[0]  # type: ignore[union-attr]
    assert route.price.input_per_million == 3_000_000


def test_a_broken_edit_keeps_the_last_good_catalog_and_logs_why(
    tmp_path: Path, demo_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "catalog.yaml", Clock()
    write(path, demo_text, 1_000_000_000)
    source = CatalogFile(path, env={}, monotonic=clock)
    good = source.current()

    write(path, demo_text.replace("bucket: routed", "bucket: credit"), 2_000_000_000)
    clock.now += 5
    with caplog.at_level(logging.ERROR):
        kept = source.current()

    assert kept is good
    assert "models[0].routes[1].bucket" in caplog.text


def test_a_broken_catalog_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("models: []\n")

    with pytest.raises(CatalogError) as caught:
        CatalogFile(path, env={})

    assert str(path) in str(caught.value)
