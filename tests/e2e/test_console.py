"""The web console (/console/) and the player (/players/), in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import pytest

from tests.browser import Browser


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def test_the_browser_harness_reports_console_errors(browser):
    """The harness itself: a page's console.error and an uncaught exception are collected, so a clean run of
    the console means something."""
    page = browser.new_page()
    page.goto("data:text/html,<script>console.error('boom'); setTimeout(() => { throw new Error('bang') })"
              "</script>")
    page.wait_for("true", 1)
    assert page.eval("1 + 2") == 3
    from tests.helpers import wait_for
    wait_for(lambda: len(page.errors) >= 2, 5, what="both errors")
    assert any("boom" in e for e in page.errors) and any("bang" in e for e in page.errors), page.errors
