"""Hostile text in the operators' web app, in headless Chromium: markup in site, asset and rule
ids, in the plan's texts and in a gateway's channel names is shown as text, never run or
rendered as markup (the page writes text nodes; the content security policy is a second wall,
so the test looks for elements, not only for a script that ran)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alerts.api import create_app
from alerts.audit import AuditTrail
from alerts.devices import DeviceWindow
from alerts.lifecycle import AlertBook
from alerts.live import LiveHub
from alerts.settings import ApiUser
from alerts.signing import Signer
from milkguard.contract.v1 import Batch, Reading, encode_batch
from tests.alerts.records import change
from tests.alerts.webapp import serving
from tests.servers import require_binary

pytestmark = pytest.mark.integration

TOKEN = "qa-token-wang-0123456789abcdef"
IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = "<script>window.__xss=2</script>"
HOSTILE_ID = f"{IMG}/{SCRIPT}/<b>rule</b>"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    trail = AuditTrail(tmp_path / "audit.db", Signer.load_or_create(tmp_path / "key.pem"))
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    # past the contract (which holds site and asset to plain ids), straight into the book
    record = change("opened")
    record.update(
        site=IMG,
        asset=SCRIPT,
        rule_id="<b>rule</b>",
        action="<iframe src=about:blank></iframe>",
        limit={**record["limit"], "source": "<a href=javascript:alert(1)>PMO</a>"},
        channels=[IMG],
    )
    book.on_deviation(record, 1_795_341_600_000)
    devices = DeviceWindow()
    now = int(time.time() * 1000)
    reading = Reading(asset=SCRIPT[:60], channel=IMG, value=4.0, unit="degC", ts=now)
    batch = Batch(v=1, site="plant-01", gateway="gw-1", seq=1, sent_at=now, readings=[reading])
    assert devices.take("milkguard/v1/gw/plant-01/gw-1/batch", encode_batch(batch))
    hub = LiveHub(book, devices_version=lambda: devices.version)
    users = [ApiUser(name="wang", role="qa", token=TOKEN)]
    app = create_app(users, book, trail, tmp_path, devices=devices, hub=hub)
    try:
        with serving(app, hub) as base:
            yield f"{base}/"
    finally:
        book.close()
        trail.close()


def test_markup_in_ids_texts_and_channel_names_is_shown_as_text(url: str) -> None:
    chromium = require_binary("chromium", "chromium")
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#token", TOKEN)
            page.click("#login")
            row = page.locator("#alerts tr").first
            expect(row).to_contain_text(f"{IMG} / {SCRIPT}")
            expect(row).to_contain_text("<b>rule</b>")
            assert row.get_attribute("data-alert-id") == HOSTILE_ID
            assert_no_markup(page, "#alerts")

            row.click()
            facts = page.locator("#detail-facts")
            expect(facts).to_contain_text("<a href=javascript:alert(1)>PMO</a>")
            expect(facts).to_contain_text("<iframe src=about:blank></iframe>")
            expect(page.locator("#detail-title")).to_contain_text(f"{IMG} / {SCRIPT}")
            assert_no_markup(page, "#view-alert")

            page.goto(url + "?view=gateway&site=plant-01&gateway=gw-1")
            card = page.locator("#channels .channel").first
            expect(card.locator(".name")).to_contain_text(IMG)
            assert_no_markup(page, "#channels", canvases=1)
        finally:
            browser.close()


def assert_no_markup(page: Any, where: str, canvases: int = 0) -> None:
    """No element the hostile text would have made, and no script of it ran."""
    for tag in ("img", "script", "iframe", "b"):
        assert page.locator(f"{where} {tag}").count() == 0, f"a <{tag}> in {where}"
    assert page.locator(f"{where} a[href^='javascript']").count() == 0
    assert page.locator(f"{where} canvas").count() == canvases  # uPlot's own, no other
    assert page.evaluate("window.__xss") is None
