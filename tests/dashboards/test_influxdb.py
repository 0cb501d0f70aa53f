"""Every panel of every dashboard, run on a real InfluxDB 1.6 engine loaded with a simulated
plant day as the stream writes it: the series each panel means, with the right values at the
times the scenarios put their faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards.boards import all_dashboards
from dashboards.influxql import InfluxDB, Series, Window, expand, resolve_variables
from dashboards.preview import PanelData, run_panel, table_rows
from simulators.plantday import DAY, PlantDay, simulate_plant_day
from tests.servers import start_influxdb

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
DAY_MS = round(DAY.timestamp() * 1000)


@pytest.fixture(scope="module")
def day() -> PlantDay:
    return simulate_plant_day()


@pytest.fixture(scope="module")
def influx(day: PlantDay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    server = start_influxdb(tmp_path_factory.mktemp("influxd"))
    try:
        client = InfluxDB(server.url, "milkguard")
        client.write(day.lines)
        yield client
    finally:
        server.stop()


def _window(first_h: float, last_h: float) -> Window:
    return Window(DAY_MS + round(first_h * HOUR_MS), DAY_MS + round(last_h * HOUR_MS))


def _panel(uid: str, title_start: str) -> dict[str, Any]:
    model = all_dashboards()[uid]
    return next(p for p in model["panels"] if p["title"].startswith(title_start))


def _run(influx: InfluxDB, uid: str, title: str, first_h: float, last_h: float) -> PanelData:
    window = _window(first_h, last_h)
    variables = resolve_variables(all_dashboards()[uid], influx, window)
    return run_panel(influx, _panel(uid, title), window, variables)


def _points(series: list[Series]) -> list[tuple[int, float]]:
    return [(row[0], float(row[1])) for s in series for row in s.values if row[1] is not None]


def test_every_panel_and_annotation_query_returns_data_over_the_day(influx: InfluxDB) -> None:
    window = _window(0, 16)
    empty: list[str] = []
    for uid, model in all_dashboards().items():
        variables = resolve_variables(model, influx, window)
        for panel in model["panels"]:
            data = run_panel(influx, panel, window, variables)
            for ref_id, series in data.results.items():
                if not any(row[1:] != [None] * (len(row) - 1) for s in series for row in s.values):
                    empty.append(f"{uid} / {panel['title']} / {ref_id}")
        for item in model["annotations"]["list"]:
            if not influx.execute(expand(item["target"]["query"], window, variables)):
                empty.append(f"{uid} / annotation {item['name']}")
    # the day's farm tanks and rooms stay within their limits: nothing to shade there
    assert empty == ["farm-tank / annotation Deviations", "rooms-cans / annotation Deviations"]


def test_htst_chart_shows_the_heater_dip_below_the_legal_limit_while_the_valve_diverts(
    influx: InfluxDB,
) -> None:
    # htst-heater-dip-diverts from 11:00: the heating medium falls 1.5 degC at 0.5-0.6 h
    chart = _run(influx, "htst", "Indicating and recording", 11, 12)
    indicating = _points(chart.results["A"])
    recorder = _points(chart.results["B"])
    legal = _points(chart.results["C"])
    assert {value for _, value in legal} == {72.0}  # PMO 72 degC, from the limit measurement
    dip = [v for t, v in indicating if DAY_MS + 11.55 * HOUR_MS <= t <= DAY_MS + 11.58 * HOUR_MS]
    assert dip
    assert max(dip) < 72.0
    healthy = [v for t, v in indicating if t < DAY_MS + 11.45 * HOUR_MS]
    assert min(healthy) > 72.5
    # the recorder never reads above the indicating thermometer
    by_time = dict(indicating)
    assert all(v <= by_time[t] for t, v in recorder if t in by_time)
    valve = _points(_run(influx, "htst", "Flow-diversion valve", 11, 12).results["A"])
    diverted = [t for t, v in valve if v == 0.0]
    assert diverted
    assert DAY_MS + 11.5 * HOUR_MS <= min(diverted) <= DAY_MS + 11.55 * HOUR_MS


def test_htst_cut_in_and_cut_out_marks_are_the_valve_switching(influx: InfluxDB) -> None:
    model = all_dashboards()["htst"]
    window = _window(11, 12)
    variables = resolve_variables(model, influx, window)
    item = next(a for a in model["annotations"]["list"] if a["name"].startswith("Cut-in"))
    (series,) = influx.execute(expand(item["target"]["query"], window, variables))
    switches = [row[1] for row in series.values]
    assert switches == [-1.0, 1.0]  # cut-out (diverts), then cut-in (forward again)


def test_holding_time_falls_below_the_legal_15_s_during_the_flow_surge(influx: InfluxDB) -> None:
    # htst-flow-surge from 13:00: 11,500 L/h at 0.5-0.6 h, fastest particle about 13.8 s
    data = _run(influx, "htst", "Fastest particle", 13, 14)
    holding = _points(data.results["A"])
    assert {v for _, v in _points(data.results["B"])} == {15.0}
    surge = [v for t, v in holding if DAY_MS + 13.52 * HOUR_MS <= t <= DAY_MS + 13.58 * HOUR_MS]
    assert surge
    assert max(surge) < 14.0
    assert min(v for t, v in holding if t < DAY_MS + 13.45 * HOUR_MS) > 15.0


def test_forward_flow_time_per_day_counts_the_diverted_minutes_out(influx: InfluxDB) -> None:
    (series,) = _run(influx, "htst", "Time in forward flow", 11, 14).results["A"]
    (forward_s,) = [row[1] for row in series.values if row[1] is not None]
    # three one-hour runs, diverted for about six minutes of the heater dip
    assert 2.8 * 3600 < forward_s < 2.95 * 3600


def test_uht_f0_per_parcel_drops_below_the_minimum_in_the_heater_dip(influx: InfluxDB) -> None:
    data = _run(influx, "uht", "F0 per parcel", 14, 15)
    f0 = _points(data.results["A"])
    assert {v for _, v in _points(data.results["B"])} == {3.0}
    dip = [v for t, v in f0 if DAY_MS + 14.51 * HOUR_MS <= t <= DAY_MS + 14.54 * HOUR_MS]
    assert dip
    assert min(dip) < 3.0
    assert min(v for t, v in f0 if t < DAY_MS + 14.45 * HOUR_MS) > 4.0


def test_truck_route_and_compartment_limits(influx: InfluxDB) -> None:
    (route,) = _run(influx, "truck-load", "Route", 6, 11).results["A"]
    lat, lon = route.column("lat"), route.column("lon")
    assert len(lat) == 600
    assert (lat[0], lon[0]) == (31.2, 121.4)
    limits = _run(influx, "truck-load", "Compartment temperatures", 0, 6).results["B"]
    assert {(s.tags["bound"], v) for s in limits for _, v in _points([s])} >= {
        ("min", 2.0),
        ("max", 6.0),
    }


def test_overview_counts_deviations_by_severity_and_lists_every_gateway(influx: InfluxDB) -> None:
    columns, rows = table_rows(_run(influx, "plant-overview", "Open deviations", 0, 16))
    counted = {row[columns.index("severity")]: row for row in rows}
    assert counted["critical"][columns.index("opened")] == 5
    assert counted["major"][columns.index("opened")] == 2
    # the last flow surge's deviation is still open at the day's end; all others closed
    assert counted["critical"][columns.index("open")] == 1
    assert counted["major"][columns.index("open")] == 0
    columns, rows = table_rows(_run(influx, "plant-overview", "Gateways", 0, 16))
    assert len(rows) == 8
    assert {row[columns.index("state")] for row in rows} == {"offline"}  # last wills at the end
    columns, rows = table_rows(_run(influx, "plant-overview", "Current value", 0, 15))
    store = next(r for r in rows if r[columns.index("asset")] == "store-1")
    assert store[columns.index("max")] == 6.0
    assert 3.0 < store[columns.index("value")] < 5.0


def test_deviation_table_holds_each_closed_deviation_with_its_interval(
    influx: InfluxDB, day: PlantDay
) -> None:
    columns, rows = table_rows(_run(influx, "deviations", "Deviations", 0, 15))
    closed = {c.deviation.id: c.deviation for c in day.changes if c.kind == "closed"}
    assert {row[columns.index("id")] for row in rows} == set(closed)
    for row in rows:
        deviation = closed[row[columns.index("id")]]
        assert row[columns.index("start_ms")] == deviation.start_ms
        assert row[columns.index("end_ms")] == deviation.end_ms
        assert row[columns.index("rule")] == deviation.rule_id
    # the day ends in a flow surge from 15:30, cut off at 15:33 while its deviation is open
    columns, rows = table_rows(_run(influx, "deviations", "Still open", 0, 16))
    (still_open,) = rows
    assert still_open[columns.index("kind")] == "htst_holding_time"
    assert still_open[columns.index("start_ms")] == pytest.approx(DAY_MS + 15.5 * HOUR_MS, abs=6000)


def test_rooms_and_cans_show_humidity_oxygen_and_their_limits(influx: InfluxDB) -> None:
    humidity = _run(influx, "rooms-cans", "Relative humidity", 14, 15)
    assert all(30 < v < 65 for _, v in _points(humidity.results["A"]))
    assert {v for _, v in _points(humidity.results["B"])} == {65.0}
    oxygen = _run(influx, "rooms-cans", "Residual oxygen", 14, 15)
    assert {v for _, v in _points(oxygen.results["B"])} == {3.0}


def test_previews_draw_every_dashboard(influx: InfluxDB, tmp_path: Path) -> None:
    from dashboards.preview import render  # noqa: PLC0415 - matplotlib is slow to import

    for uid, model in all_dashboards().items():
        path = render(model, influx, _window(0, 15), tmp_path)
        assert path.name == f"{uid}.png"
        assert path.stat().st_size > 20_000
