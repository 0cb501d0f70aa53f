"""The operators' web app in headless Chromium (Debian's, driven by Playwright), on a running
alert service fed over a real Mosquitto: the overview with its filters and search in the URL,
an alert's detail (the deviation, who was told and when, the failed e-mails, the trail, the
signed report), the device page with its charts, and a deviation published by the stream
appearing without a reload. Each view is saved as a screenshot under docs/webapp/ for the
README."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milkguard.contract.v1 import GatewayStatus
from tests.alerts.records import DEV1, dev
from tests.alerts.webapp import (
    FARM,
    GRAFANA,
    HTST,
    SILO,
    TOKENS,
    Plant,
    deviation,
    running_plant,
    seed,
)
from tests.helpers import wait_until
from tests.servers import require_binary, start_mosquitto

pytestmark = pytest.mark.integration

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "webapp"


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    directory = tmp_path_factory.mktemp("webapp")
    broker = start_mosquitto(directory)
    try:
        with running_plant(directory, broker.port) as running:
            seed(running)
            yield running
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium", "chromium")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # a refused request (a 401 also counts against the lockout), a CSP violation: both fail
    opened.on(
        "response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield opened
        assert errors == []
    finally:
        context.close()


def log_in(page: Any, plant: Plant, who: str, query: str = "") -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(plant.url + query)
    page.fill("#token", TOKENS[who])
    page.click("#login")
    expect(page.locator("#live")).to_have_text("live")


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_overview_lists_the_sites_alerts_and_filters_them_by_the_url(
    plant: Plant, page: Any
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    log_in(page, plant, "authority")
    rows = page.locator("#alerts tr")
    expect(rows).to_have_count(3)
    expect(page.locator(f'tr[data-alert-id="{HTST}"]')).to_contain_text("critical")
    expect(page.locator(f'tr[data-alert-id="{FARM}"]')).to_contain_text("plant-02 / tank-7")
    grafana = page.locator("#grafana-links a")
    expect(grafana.first).to_have_attribute("href", f"{GRAFANA}d/plant-overview")
    shot(page, "overview")

    page.select_option("#filter-site", "plant-01")
    page.select_option("#filter-severity", "major")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-alert-id", SILO)
    assert "site=plant-01" in page.url
    assert "severity=major" in page.url

    page.select_option("#filter-severity", "")
    page.fill("#search", "HOLD_TEMP")  # a channel, in any case
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-alert-id", HTST)
    assert "q=HOLD_TEMP" in page.url

    # the URL is the state: opened afresh, it shows the same list
    page.goto(plant.url + "?view=alerts&state=raised&site=plant-02")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-alert-id", FARM)
    expect(page.locator("#filter-state")).to_have_value("raised")


def test_an_operator_sees_only_their_sites_alerts(plant: Plant, page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    log_in(page, plant, "zhao")
    expect(page.locator("#alerts tr")).to_have_count(1)
    expect(page.locator("#alerts tr").first).to_have_attribute("data-alert-id", FARM)


def test_an_alerts_detail_shows_the_deviation_who_was_told_the_trail_and_the_report(
    plant: Plant, page: Any
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    # the e-mail to li failed (no mail server): the detail must say so
    wait_until(lambda: plant.service.outbox.retried >= 1, 30, "a failed e-mail")
    log_in(page, plant, "li")
    page.locator(f'tr[data-alert-id="{HTST}"]').click()
    assert f"view=alert&id={HTST.replace('/', '%2F')}" in page.url

    def fact(field: str) -> Any:
        return page.locator(f'#detail-facts tr[data-field="{field}"] td')

    expect(fact("deviation")).to_contain_text(f"{DEV1} (htst_temperature), open")
    expect(fact("limit")).to_have_text("at least 72 degC")
    expect(fact("source")).to_have_text("PMO")
    expect(fact("start")).to_have_text("2026-11-22T10:00:00.000Z")
    expect(fact("end")).to_have_text("still open")
    expect(fact("peak")).to_have_text("71.2 degC")
    expect(fact("beyond")).to_have_text("0 s, 0 degree-minutes")
    expect(fact("late")).to_have_text("no")
    expect(fact("clock")).to_contain_text("stream time")
    on_device = "plant-01-gw (offset +40 ms): start 2026-11-22T10:00:00.040Z"
    expect(fact("clock")).to_contain_text(on_device)
    expect(fact("value")).to_contain_text("degC")  # the channel's latest reading, from its gateway
    expect(fact("value")).to_contain_text("gateway plant-01-gw")

    told = page.locator("#deliveries tr")
    expect(told.filter(has_text="email: li@plant")).to_contain_text("pending")
    expect(told.filter(has_text="email: li@plant")).to_have_class("failed")
    expect(told.filter(has_text="console: li")).to_contain_text("sent")
    expect(page.locator("#delivery-failures")).to_contain_text("delivery failure")

    expect(page.locator("#trail")).to_contain_text("alert.raised by stream → operator")
    report = page.locator(f'#reports li[data-deviation="{DEV1}"]')
    # detected on 2026-11-22, reported now: the 24 h deadline was missed, and it says so
    expect(report).to_contain_text("due by 2026-11-23T10:00:00.000Z (MISSED)")
    with page.expect_download() as download:
        report.locator("button", has_text="signed JSON").click()
    assert download.value.suggested_filename == f"{DEV1}.json"

    links = page.locator("#detail-grafana a")
    expect(links.first).to_have_attribute("href", _startswith(f"{GRAFANA}d/htst?var-site=plant-01"))
    shot(page, "alert-detail")

    page.locator("#back").click()
    page.locator(f'tr[data-alert-id="{SILO}"]').click()
    expect(fact("late")).to_contain_text("yes")
    expect(fact("source")).to_have_text("PMO Item 18r")
    expect(fact("beyond")).to_have_text("540 s, 9.3 degree-minutes")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _startswith(prefix: str) -> Any:
    import re  # noqa: PLC0415

    return re.compile("^" + re.escape(prefix))


def test_the_device_page_shows_every_gateway_and_charts_its_channels(
    plant: Plant, page: Any
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    log_in(page, plant, "authority", "?view=devices")
    gateways = page.locator("#gateways tr")
    expect(gateways).to_have_count(2)
    online = page.locator('tr[data-gateway="plant-01/plant-01-gw"]')
    expect(online.locator(".badge")).to_have_text("online")
    expect(online).to_contain_text("opcua-silos")  # the failing source
    expect(online).to_contain_text("synced, offset 12 ms (chrony)")
    offline = page.locator('tr[data-gateway="plant-02/farm-07-gw"]')
    expect(offline.locator(".badge").first).to_have_text("offline")
    expect(offline).to_contain_text("1250 (outbox nearly full)")
    expect(offline).to_contain_text("ALARM")
    expect(offline).to_contain_text("NOT synced")
    expect(offline).to_contain_text("30 min ago")  # its own stamp: the will is not a sighting
    shot(page, "devices")

    online.click()
    channels = page.locator("#channels .channel")
    expect(channels).to_have_count(3)
    hold = page.locator('.channel[data-channel="htst-1/hold_temp"]')
    expect(hold.locator(".value")).to_contain_text("degC")
    expect(hold.locator("canvas")).to_have_count(1)  # uPlot drew its chart
    assert hold.locator("canvas").bounding_box()["width"] > 100
    expect(page.locator('#gateway-facts tr[data-field="backlog"] td')).to_contain_text(
        "3 batches, 48000 bytes"
    )
    expect(page.locator("#gateway-grafana a").first).to_have_attribute(
        "href", f"{GRAFANA}d/plant-overview?var-site=plant-01"
    )
    shot(page, "device")

    # the gateway's local alarm goes off: the page shows it without a reload
    page.evaluate("window.__notReloaded = true")
    plant.status(
        GatewayStatus(
            v=1, site="plant-01", gateway="plant-01-gw", state="online", ts=now_ms(), alarm=True
        )
    )
    expect(page.locator('#gateway-facts tr[data-field="alarm"] td')).to_have_text("ON")
    assert page.evaluate("window.__notReloaded") is True


def test_a_deviation_published_by_the_stream_appears_without_a_reload(
    plant: Plant, page: Any
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    log_in(page, plant, "li")
    page.evaluate("window.__notReloaded = true")
    rows = page.locator("#alerts tr")
    before = rows.count()
    new = "plant-01/room-3/powder-room.humidity"
    humidity: dict[str, Any] = {
        "site": "plant-01",
        "asset": "room-3",
        "rule": "powder-room.humidity",
        "kind": "critical_limit",
        "severity": "minor",
        "channel": "rh",
        "limit": {"min": None, "max": 65.0, "unit": "%RH", "source": "company HACCP plan"},
        "peak": 68.0,
    }
    plant.deviation(deviation(9, **humidity))
    expect(page.locator(f'tr[data-alert-id="{new}"]')).to_contain_text("raised")
    expect(rows).to_have_count(before + 1)
    # the same page, the same tab: nothing reloaded it
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "live-update")

    # the stream closes it: the row turns resolved, still without a reload
    plant.deviation(deviation(9, change_kind="closed", **humidity))
    expect(page.locator(f'tr[data-alert-id="{new}"]')).to_contain_text("resolved")
    assert page.evaluate("window.__notReloaded") is True
    assert dev(9) in plant.service.book.get(new).deviations  # type: ignore[union-attr]
