"""The console in a real browser: `tokenforge dev` as a child process (like
tests/e2e/test_dev_command.py) and Debian's headless Chromium driven by playwright.

Chromium comes from `apt-get install chromium` (`make test` does it); playwright's own
browser download is never used. Screenshots land in tests/browser/screenshots/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.devsystem import running_dev

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running `tokenforge dev` and its dev.json."""
    with running_dev(tmp_path_factory.mktemp("console-dev")) as info:
        yield info


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope on purpose: while the sync API is open, its event loop counts as
    # running in this thread, which the async tests of later modules cannot share.
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, dev: dict[str, Any]) -> Iterator[Any]:
    """A fresh tab, signed in to the console with the demo key."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(tab, dev)
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


def sign_in(tab: Any, dev: dict[str, Any], key: str | None = None) -> None:
    tab.goto(dev["gateway_url"] + "/console")
    tab.get_by_label("API key", exact=True).fill(key or dev["api_key"])
    tab.get_by_role("button", name="Sign in").click()
    tab.get_by_role("heading", name="Wallet", level=1).wait_for()


def shot(tab: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
