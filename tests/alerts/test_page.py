"""The operators' page in headless Chromium (Debian's, driven by Playwright): log in with a
token, acknowledge an alert, record a corrective action, and see both in the trail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.api import create_app
from alerts.audit import AuditTrail
from alerts.lifecycle import AlertBook
from alerts.settings import ApiUser
from alerts.signing import Signer
from tests.alerts.records import change
from tests.helpers import wait_until
from tests.servers import free_port, require_binary

pytestmark = pytest.mark.integration

TOKEN = "operator-token-li-0123456789ab"
HTST = "plant-01/htst-1/pmo-htst.temperature"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, AuditTrail]]:
    import uvicorn  # noqa: PLC0415

    trail = AuditTrail(tmp_path / "audit.db", Signer.load_or_create(tmp_path / "key.pem"))
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    book.on_deviation(change("opened"), 1_795_341_600_000)
    users = [ApiUser(name="li", role="operator", token=TOKEN, sites=["plant-01"])]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(users, book, trail, tmp_path), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the API server")
        yield f"http://127.0.0.1:{port}/", trail
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        book.close()
        trail.close()


def test_an_operator_logs_in_acknowledges_and_records_a_corrective_action(
    site: tuple[str, AuditTrail],
) -> None:
    chromium = require_binary("chromium", "chromium")
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    url, trail = site
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#token", TOKEN)
            page.click("#login")
            expect(page.locator("#who")).to_have_text("li (operator)")
            row = page.locator(f'tr[data-alert-id="{HTST}"]')
            expect(row).to_contain_text("raised")

            row.locator("button.ack").click()
            expect(row).to_contain_text("acknowledged")

            row.click()
            page.fill("textarea[name=cause]", "steam valve stuck half open")
            page.fill("textarea[name=action_taken]", "valve replaced, product held")
            page.select_option("select[name=disposition]", "hold")
            page.fill("input[name=lot]", "L-17")
            page.click("#sign")
            expect(page.locator("#trail")).to_contain_text("corrective_action.recorded by li")
            expect(page.locator("#trail")).to_contain_text("alert.acknowledged by li")
            assert page.locator("#error").inner_text() == ""
        finally:
            browser.close()

    kinds = [(e.kind, e.actor) for e in trail.entries(subject=HTST)]
    assert kinds == [
        ("alert.raised", "stream"),
        ("alert.acknowledged", "li"),
        ("corrective_action.recorded", "li"),
    ]
