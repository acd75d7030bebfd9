"""A real headless Chromium (Debian's `chromium` package) driven by Playwright's Python client, for the web
UI's tests. No browser is ever downloaded: Playwright is pointed at /usr/bin/chromium. Every request the
page makes is recorded, so a test can assert that nothing left 127.0.0.1 (the UI works offline)."""

from __future__ import annotations

import contextlib

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("HAYAI_TEST_CHROMIUM", "/usr/bin/chromium")
# as the machine notes say: without the background-networking flags Chromium's own connections are refused
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTEFACTS = Path(os.environ.get("HAYAI_UI_ARTEFACTS", Path(tempfile.gettempdir()) / "hayai-ui-screenshots"))


def require_browser():
    """Skip (naming what is missing) only when chromium or playwright is truly absent."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")


class Browser:
    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        # Playwright gives every launch a fresh, empty profile of its own (it refuses --user-data-dir)
        self.browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        self.requests: list[str] = []

    def page(self, url: str, viewport: dict = DESKTOP):
        page = self.browser.new_page(viewport=viewport)
        page.on("request", lambda request: self.requests.append(request.url))
        page.set_default_timeout(60_000)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#tab_generate, #generate", state="attached")
        # Gradio fills the pages with the model's defaults after load: wait for that before reading or clicking
        page.wait_for_function("!document.body.innerText.includes('Loading...')")
        return page

    def outside(self) -> list[str]:
        """Requests that went anywhere but this machine's loopback."""
        return [url for url in self.requests
                if urlsplit(url).scheme not in ("data", "blob", "about") and urlsplit(url).hostname != "127.0.0.1"]

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()


@contextlib.contextmanager
def offline_browser():
    """A Browser for a test module; at the end, fails if any page fetched from beyond this machine."""
    browser = Browser()
    try:
        yield browser
    finally:
        browser.close()
    assert browser.outside() == [], f"the UI fetched from beyond this machine: {browser.outside()[:5]}"


def shot(page, name: str, full_page: bool = False) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label).click()
