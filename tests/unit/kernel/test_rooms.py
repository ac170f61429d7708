"""Every service has the rooms docs/ARCHITECTURE.md's map ("Rooms") names: the map is
read from the document itself, so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())


def rooms_of_the_map() -> list[list[str]]:
    """Each row of the map's table: the paths its first column names (any of them)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Rooms", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [re.findall(r"`([^`]+)`", row.split("|")[1]) for row in rows]


def test_the_map_names_the_rooms() -> None:
    names = {name for row in rooms_of_the_map() for name in row}
    assert {"domain/", "domain/commands.py", "storage/", "transport/", "client.py"} <= names
    assert {"metrics.py", "app.py"} <= names
    assert SERVICES == ["gateway", "payments", "routing", "usage", "wallet"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_every_room_of_the_map(service: str) -> None:
    home = ROOT / "services" / service
    missing = [
        " or ".join(row)
        for row in rooms_of_the_map()
        if not any(
            (home / name).is_dir() if name.endswith("/") else (home / name).is_file()
            for name in row
        )
    ]
    assert not missing, f"services/{service} lacks {missing} (docs/ARCHITECTURE.md, Rooms)"
