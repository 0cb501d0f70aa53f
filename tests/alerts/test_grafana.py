"""Links into the Grafana dashboards: the dashboard that charts the deviation's kind, at its
time an hour either side, with the site, asset and channel as variables; the base URL is a
validated setting, so no field of an alert can point a link elsewhere."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alerts.grafana import alert_links, site_links
from alerts.settings import AlertSettings
from tests.alerts.records import change

BASE = "https://dairy.example/grafana/"
START = 1_795_341_600_000  # 2026-11-22T10:00:00Z, the record's start


def test_an_htst_deviation_links_to_the_recording_chart_at_its_time() -> None:
    links = alert_links(BASE, change("closed"), now_ms=0)

    assert [link["uid"] for link in links] == ["htst", "deviations", "plant-overview"]
    assert links[0]["url"] == (
        "https://dairy.example/grafana/d/htst?var-site=plant-01&var-asset=htst-1"
        f"&var-channel=hold_temp&from={START - 3_600_000}&to={START + 5_000 + 3_600_000}"
    )


@pytest.mark.parametrize(
    ("kind", "unit", "uid"),
    [
        ("uht_lethality", "min", "uht"),
        ("cooling_deadline", "degC", "farm-tank"),
        ("temperature_exposure", "degC", "truck-load"),
        ("critical_limit", "%RH", "rooms-cans"),
        ("critical_limit", "degC", "plant-overview"),
    ],
)
def test_each_kind_opens_the_dashboard_that_charts_it(kind: str, unit: str, uid: str) -> None:
    record = {**change("opened"), "kind": kind}
    record["limit"] = {**record["limit"], "unit": unit}
    assert alert_links(BASE, record, now_ms=START)[0]["uid"] == uid


def test_an_open_deviation_is_shown_until_now_and_fields_are_encoded() -> None:
    record = {**change("opened"), "asset": "tank 1&var-site=other"}
    [main, *_] = alert_links(BASE, record, now_ms=START + 60_000)
    assert "var-asset=tank+1%26var-site%3Dother" in main["url"]
    assert main["url"].endswith(f"to={START + 60_000 + 3_600_000}")


def test_without_a_grafana_url_there_are_no_links() -> None:
    assert alert_links(None, change("opened"), now_ms=0) == []
    assert site_links(None) == []


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://grafana",
        "https://admin:pw@grafana/",
        "https://grafana/?orgId=2",
    ],
)
def test_the_grafana_url_is_a_plain_http_base(url: str) -> None:
    with pytest.raises(ValidationError, match="grafana_url"):
        AlertSettings(grafana_url=url)  # type: ignore[arg-type]


def test_the_device_window_must_stay_bounded() -> None:
    with pytest.raises(ValidationError, match="at most 2880"):
        AlertSettings(devices={"window_h": 48, "bucket_s": 10})  # type: ignore[arg-type]
