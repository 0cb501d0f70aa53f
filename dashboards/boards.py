"""The plant operators' dashboards, one function each, as Grafana dashboard JSON models.

Every query is InfluxQL over the schema ``milkguard run`` and ``milkguard worker`` write
(README, "Time-series schema"), so one dashboard serves InfluxDB 1.x, 2.x (DBRP mapping) and
3.x. Variables ``site``, ``asset`` and ``channel`` come from tag values; limit lines come from
the ``limit`` measurement (the plan's limits as data), never from numbers typed in here.
The uids are the ones the alert service's page links to (``alerts/grafana.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.influxql import InfluxQL, annotation
from dashboards.panels import (
    SITE_ASSET,
    chart,
    route,
    rows,
    single,
    states,
    transform,
    variable,
)

Model = dict[str, Any]

#: Where the alert service's page is; a link column fills in the deviation.
ALERTS_URL_VARIABLE = "alerts_url"


def _limits(ref_id: str, channel: str) -> InfluxQL:
    """The plan's limits of a channel as step lines (one series per rule and bound)."""
    return InfluxQL(
        ref_id,
        f'SELECT last("value") FROM "limit" WHERE $timeFilter AND {SITE_ASSET} '
        f'AND "channel" = \'{channel}\' GROUP BY time($__interval), "rule", "kind", '
        '"bound" fill(previous)',
        alias="limit $tag_kind $tag_bound",
    )


def _channel(ref_id: str, channel: str, aggregate: str = "mean") -> InfluxQL:
    return InfluxQL(
        ref_id,
        f'SELECT {aggregate}("value") FROM "reading" WHERE $timeFilter AND {SITE_ASSET} '
        f'AND "channel" = \'{channel}\' GROUP BY time($__interval), "site", "asset" '
        "fill(none)",
        alias=f"$tag_site/$tag_asset {channel}",
    )


def _deviations_shaded(name: str = "Deviations") -> Model:
    """Each deviation as a region from its start to its end (open ones to now)."""
    query = (
        'SELECT "kind", "rule", "severity", "end_ms" FROM "deviation" WHERE $timeFilter '
        f"AND {SITE_ASSET} AND \"change\" = 'closed'"
    )
    shaded = annotation(name, query, color="red", text_column="rule")
    shaded["target"]["timeEndColumn"] = "end_ms"
    shaded["target"]["tagsColumn"] = "kind"
    return shaded


def _finish(
    uid: str,
    title: str,
    panels: list[Any],
    variables: list[Any],
    annotations: list[Model],
    *,
    description: str,
    time_from: str = "now-24h",
) -> Model:
    builder = (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["milkguard"])
        .timezone("utc")
        .time(time_from, "now")
        .refresh("1m")
    )
    for item in variables:
        builder.with_variable(item)
    for panel in panels:
        builder.with_panel(panel)
    model: Model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    # InfluxDB annotations are plain dicts: the SDK's annotation model has no InfluxDB query
    model["annotations"] = {"list": annotations}
    return model


def _site_asset(
    site_where: str = "", asset_where: str = "", measurement: str = "reading"
) -> list[Any]:
    where_site = f" WHERE {site_where}" if site_where else ""
    asset_filter = '"site" =~ /^$site$/' + (f" AND {asset_where}" if asset_where else "")
    return [
        variable(
            "site",
            f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "site"{where_site}',
            label="Site",
        ),
        variable(
            "asset",
            f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "asset" WHERE {asset_filter}',
            label="Asset",
        ),
    ]


def plant_overview() -> Model:
    """Every site and asset: current values against their limits, open deviations by severity,
    gateways online or offline, data freshness and edge alarms."""
    site_asset_channel = f'{SITE_ASSET} AND "channel" =~ /^$channel$/'
    latest = rows(
        1,
        "Current value against its limits",
        (0, 0, 16, 10),
        [
            InfluxQL(
                "A",
                f'SELECT last("value") AS "value" FROM "reading" WHERE $timeFilter AND '
                f'{site_asset_channel} GROUP BY "site", "asset", "channel", "unit"',
                result_format="table",
            ),
            InfluxQL(
                "B",
                f'SELECT last("value") AS "min" FROM "limit" WHERE $timeFilter AND '
                f'{site_asset_channel} AND "bound" = \'min\' GROUP BY "site", "asset", '
                '"channel"',
                result_format="table",
            ),
            InfluxQL(
                "C",
                f'SELECT last("value") AS "max" FROM "limit" WHERE $timeFilter AND '
                f'{site_asset_channel} AND "bound" = \'max\' GROUP BY "site", "asset", '
                '"channel"',
                result_format="table",
            ),
        ],
        transformations=[transform("merge", {})],
    )
    deviations = rows(
        2,
        "Open deviations by severity",
        (16, 0, 8, 10),
        [
            InfluxQL(
                "A",
                'SELECT count("start_ms") AS "opened" FROM "deviation" WHERE $timeFilter AND '
                '"site" =~ /^$site$/ AND "change" = \'opened\' GROUP BY "severity"',
                result_format="table",
            ),
            InfluxQL(
                "B",
                'SELECT count("start_ms") AS "closed" FROM "deviation" WHERE $timeFilter AND '
                '"site" =~ /^$site$/ AND "change" = \'closed\' GROUP BY "severity"',
                result_format="table",
            ),
        ],
        transformations=[
            transform("merge", {}),
            transform(
                "calculateField",
                {
                    "mode": "binary",
                    "binary": {"left": "opened", "operator": "-", "right": "closed"},
                    "alias": "open",
                    "replaceFields": False,
                },
            ),
        ],
    )
    gateways = rows(
        3,
        "Gateways: online or offline, backlog, failing sources, clock",
        (0, 10, 16, 8),
        [
            InfluxQL(
                "A",
                'SELECT last("state") AS "state", last("backlog") AS "backlog", '
                'last("failing_sources") AS "failing sources", last("alarm") AS "alarm", '
                'last("clock_offset_ms") AS "clock offset ms" FROM "gateway" WHERE '
                '$timeFilter AND "site" =~ /^$site$/ GROUP BY "site", "gateway"',
                result_format="table",
            )
        ],
    )
    freshness = rows(
        4,
        "Data freshness: last batch and its lag",
        (16, 10, 8, 8),
        [
            InfluxQL(
                "A",
                'SELECT last("last_batch_ms") AS "last batch", last("lag_ms") AS "lag ms" '
                'FROM "seen" WHERE $timeFilter AND "site" =~ /^$site$/ GROUP BY "site", '
                '"gateway"',
                result_format="table",
            )
        ],
        units={"last batch": "dateTimeFromNow", "lag ms": "ms"},
    )
    alarms = states(
        5,
        "Edge alarms (local alarm output of each gateway)",
        (0, 18, 24, 6),
        [
            InfluxQL(
                "A",
                'SELECT last("alarm") FROM "gateway" WHERE $timeFilter AND "site" =~ /^$site$/ '
                'GROUP BY time($__interval), "site", "gateway" fill(previous)',
                alias="$tag_site/$tag_gateway",
            )
        ],
        on=("alarm", "red"),
        off=("quiet", "green"),
    )
    return _finish(
        "plant-overview",
        "Plant overview",
        [latest, deviations, gateways, freshness, alarms],
        [
            *_site_asset(),
            variable(
                "channel",
                'SHOW TAG VALUES FROM "reading" WITH KEY = "channel" WHERE "site" =~ /^$site$/ '
                'AND "asset" =~ /^$asset$/',
                label="Channel",
            ),
        ],
        [_deviations_shaded()],
        description="Every site and asset at a glance.",
    )


def farm_tank() -> Model:
    """A farm bulk tank: milk temperature against the cooling and blend limits, volume,
    milkings as annotations, and the milkings that start the storage-age clock."""
    temperature = chart(
        1,
        "Milk temperature, cooling deadlines and blend limit",
        (0, 0, 24, 9),
        [_channel("A", "milk_temp"), _limits("B", "milk_temp")],
        unit="celsius",
        dashed=("limit.*",),
    )
    volume = chart(2, "Volume in the tank", (0, 9, 12, 8), [_channel("A", "volume")], unit="litre")
    milkings = rows(
        3,
        "Milkings and pickups (storage age counts from the oldest milking in the tank)",
        (12, 9, 12, 8),
        [
            InfluxQL(
                "A",
                'SELECT "text" FROM "event" WHERE $timeFilter AND "site" =~ /^$site$/ AND '
                '"kind" =~ /^(milking_start|milking_end)$/',
                result_format="table",
            ),
            InfluxQL(
                "B",
                'SELECT "text" FROM "event" WHERE $timeFilter AND "kind" = \'pickup\' AND '
                '"text" =~ /$site/',
                result_format="table",
            ),
        ],
    )
    return _finish(
        "farm-tank",
        "Farm tank",
        [temperature, volume, milkings],
        _site_asset(
            site_where="\"channel\" = 'milk_temp'", asset_where="\"channel\" = 'milk_temp'"
        ),
        [
            annotation(
                "Milkings",
                'SELECT "text" FROM "event" WHERE $timeFilter AND "site" =~ /^$site$/ AND '
                '"kind" =~ /^milking_/',
                color="blue",
            ),
            _deviations_shaded(),
        ],
        description="Bulk tank cooling after each milking, against the plan's limits.",
    )


def truck_load() -> Model:
    """A truck: compartment temperatures against the limit, exposure, transit (pickups and
    delivery), and its route on a Geomap."""
    temperature = chart(
        1,
        "Compartment temperatures against the limit",
        (0, 0, 14, 9),
        [_channel("A", "temp"), _limits("B", "temp")],
        unit="celsius",
        dashed=("limit.*",),
    )
    where = route(
        2,
        "Route (GPS)",
        (14, 0, 10, 9),
        [
            InfluxQL(
                "A",
                'SELECT "lat", "lon" FROM "position" WHERE $timeFilter AND "site" =~ /^$site$/',
                result_format="table",
            )
        ],
    )
    exposure = rows(
        3,
        "Exposure and transit: deviations of the load",
        (0, 9, 14, 8),
        [
            InfluxQL(
                "A",
                'SELECT "kind", "peak", "degree_minutes", "time_beyond_s", "limit" FROM '
                f'"deviation" WHERE $timeFilter AND {SITE_ASSET} AND "change" = \'closed\'',
                result_format="table",
            )
        ],
    )
    transit = rows(
        4,
        "Pickups and delivery (transit time from the first pickup)",
        (14, 9, 10, 8),
        [
            InfluxQL(
                "A",
                'SELECT "text" FROM "event" WHERE $timeFilter AND "site" =~ /^$site$/ AND '
                '"kind" =~ /^(pickup|delivery)$/',
                result_format="table",
            )
        ],
    )
    return _finish(
        "truck-load",
        "Truck and load",
        [temperature, where, exposure, transit],
        [
            variable("site", 'SHOW TAG VALUES FROM "position" WITH KEY = "site"', label="Truck"),
            variable(
                "asset",
                'SHOW TAG VALUES FROM "reading" WITH KEY = "asset" WHERE "site" =~ /^$site$/ '
                "AND \"channel\" = 'temp'",
                label="Compartment",
            ),
        ],
        [
            annotation(
                "Pickups and delivery",
                'SELECT "text" FROM "event" WHERE $timeFilter AND "site" =~ /^$site$/ AND '
                '"kind" =~ /^(pickup|delivery)$/',
                color="blue",
            ),
            _deviations_shaded(),
        ],
        description="Milk trucks from farm to plant.",
    )


def htst() -> Model:
    """An HTST pasteurizer as the PMO Item 16p recording chart: indicating and recording
    thermometers with the legal limit, the diversion valve's cut-in and cut-out marks, the valve
    as a state timeline, flow and the fastest particle's holding time against the legal time,
    product classes as annotations, time in forward flow per day, deviations shaded."""
    thermometers = chart(
        1,
        "Indicating and recording thermometers, legal limit (PMO Item 16p)",
        (0, 0, 24, 10),
        [
            _channel("A", "hold_temp", "min"),
            _channel("B", "recorder_temp", "min"),
            _limits("C", "hold_temp"),
        ],
        unit="celsius",
        dashed=("limit.*",),
        description=(
            "Lowest reading per interval (a dip shows at any zoom). The recorder must never "
            "read above the indicating thermometer. Cut-in and cut-out marks are the moments "
            "the diversion valve switched: read the indicating temperature there."
        ),
    )
    valve = states(
        2,
        "Flow-diversion valve (1 forward, 0 diverted)",
        (0, 10, 24, 4),
        [
            InfluxQL(
                "A",
                f'SELECT min("value") FROM "reading" WHERE $timeFilter AND {SITE_ASSET} AND '
                '"channel" = \'fdd_forward\' GROUP BY time($__interval), "asset" fill(none)',
                alias="$tag_asset valve",
            )
        ],
        on=("forward", "green"),
        off=("diverted", "red"),
    )
    holding = chart(
        3,
        "Fastest particle's holding time against the legal time",
        (0, 14, 12, 8),
        [
            InfluxQL(
                "A",
                f'SELECT min("value") FROM "derived" WHERE $timeFilter AND {SITE_ASSET} AND '
                '"quantity" = \'holding_time_s\' GROUP BY time($__interval), "asset" fill(none)',
                alias="$tag_asset holding time",
            ),
            _limits("B", "holding_time_s"),
        ],
        unit="s",
        dashed=("limit.*",),
    )
    flow = chart(
        4,
        "Flow rate (timing pump)",
        (12, 14, 12, 8),
        [_channel("A", "flow", "max")],
        unit="flowlph",
    )
    forward = single(
        5,
        "Time in forward flow per day",
        (0, 22, 24, 5),
        [
            InfluxQL(
                "A",
                f'SELECT integral("value", 1s) FROM "reading" WHERE $timeFilter AND {SITE_ASSET} '
                'AND "channel" = \'fdd_forward\' GROUP BY time(1d), "asset" fill(none)',
                alias="$tag_asset in forward flow",
            )
        ],
        unit="s",
    )
    switches = annotation(
        "Cut-in / cut-out (valve switched)",
        'SELECT "switch" AS "text" FROM (SELECT difference("value") AS "switch" FROM "reading" '
        f"WHERE $timeFilter AND {SITE_ASSET} AND \"channel\" = 'fdd_forward') "
        'WHERE "switch" <> 0',
        color="orange",
    )
    products = annotation(
        "Product class",
        'SELECT "text" FROM "event" WHERE $timeFilter AND "site" =~ /^$site$/ AND '
        '"asset" =~ /^$asset$/ AND "kind" = \'product_change\'',
        color="purple",
    )
    return _finish(
        "htst",
        "HTST recording chart",
        [thermometers, valve, holding, flow, forward],
        _site_asset(
            site_where="\"quantity\" = 'holding_time_s'",
            asset_where="\"quantity\" = 'holding_time_s'",
            measurement="derived",
        ),
        [products, switches, _deviations_shaded()],
        description=(
            "The electronic recording chart of PMO Item 16p: date, recorder, indicating "
            "reading, product, time in forward flow, cut-in/cut-out, unusual occurrences."
        ),
    )


def uht() -> Model:
    """A UHT line: outlet temperature against its minimum, F0 per parcel against the minimum."""
    outlet = chart(
        1,
        "Holding-tube outlet temperature against the minimum",
        (0, 0, 24, 9),
        [_channel("A", "outlet_temp", "min"), _limits("B", "outlet_temp")],
        unit="celsius",
        dashed=("limit.*",),
    )
    lethality = chart(
        2,
        "F0 per parcel against the minimum (min at 121.1 degC, z = 10 degC)",
        (0, 9, 24, 9),
        [
            InfluxQL(
                "A",
                f'SELECT min("value") FROM "derived" WHERE $timeFilter AND {SITE_ASSET} AND '
                '"quantity" = \'f0_min\' GROUP BY time($__interval), "asset" fill(none)',
                alias="$tag_asset F0",
            ),
            _limits("B", "f0_min"),
        ],
        unit="m",
        dashed=("limit.*",),
    )
    return _finish(
        "uht",
        "UHT",
        [outlet, lethality],
        _site_asset(
            site_where="\"quantity\" = 'f0_min'",
            asset_where="\"quantity\" = 'f0_min'",
            measurement="derived",
        ),
        [_deviations_shaded()],
        description="Commercial sterility: outlet temperature and lethality per parcel.",
    )


def rooms_cans() -> Model:
    """Rooms and stores (temperature, humidity) and can lines (residual oxygen per can)."""
    temperature = chart(
        1,
        "Room and store temperature",
        (0, 0, 12, 9),
        [_channel("A", "temp"), _limits("B", "temp")],
        unit="celsius",
        dashed=("limit.*",),
    )
    humidity = chart(
        2,
        "Relative humidity",
        (12, 0, 12, 9),
        [_channel("A", "rh"), _limits("B", "rh")],
        unit="humidity",
        dashed=("limit.*",),
    )
    oxygen = chart(
        3,
        "Residual oxygen per can",
        (0, 9, 24, 9),
        [_channel("A", "o2", "max"), _limits("B", "o2")],
        unit="percent",
        dashed=("limit.*",),
    )
    return _finish(
        "rooms-cans",
        "Rooms and cans",
        [temperature, humidity, oxygen],
        _site_asset(
            site_where='"channel" =~ /^(rh|o2)$/',
            asset_where='"channel" =~ /^(temp|rh|o2)$/',
        ),
        [_deviations_shaded()],
        description="Powder rooms, cold stores and can nitrogen flushing.",
    )


def deviations() -> Model:
    """Every deviation in range, with links to its alert on the alert service's page and to
    its signed regulator report."""
    alerts = f"${{{ALERTS_URL_VARIABLE}}}"
    table = rows(
        1,
        "Deviations",
        (0, 0, 24, 10),
        [
            InfluxQL(
                "A",
                'SELECT "id", "peak", "limit", "source", "start_ms", "end_ms", "detected_ms", '
                '"time_beyond_s", "degree_minutes", "late" FROM "deviation" WHERE $timeFilter '
                f'AND {SITE_ASSET} AND "change" = \'closed\' GROUP BY "site", "asset", '
                '"rule", "kind", "severity"',
                result_format="table",
            )
        ],
        links=[
            (
                "rule",
                "Alert",
                f"{alerts}/?view=alert&id=${{__data.fields.site}}%2F${{__data.fields.asset}}"
                "%2F${__data.fields.rule}",
            ),
            ("id", "Signed report", f"{alerts}/api/reports/${{__data.fields.id}}.html"),
        ],
        units={
            "start_ms": "dateTimeAsIso",
            "end_ms": "dateTimeAsIso",
            "detected_ms": "dateTimeAsIso",
        },
    )
    # InfluxQL has no anti-join: an opening merged with its closing (same tags and id) has an
    # end; the ones left without one are still open
    still_open = rows(
        2,
        "Still open (opened, no closing yet)",
        (0, 10, 24, 6),
        [
            InfluxQL(
                "A",
                'SELECT "id", "peak", "limit", "source", "start_ms" FROM "deviation" WHERE '
                f'$timeFilter AND {SITE_ASSET} AND "change" = \'opened\' GROUP BY "site", '
                '"asset", "rule", "kind", "severity"',
                result_format="table",
            ),
            InfluxQL(
                "B",
                'SELECT "id", "end_ms" FROM "deviation" WHERE '
                f'$timeFilter AND {SITE_ASSET} AND "change" = \'closed\' GROUP BY "site", '
                '"asset", "rule", "kind", "severity"',
                result_format="table",
            ),
        ],
        transformations=[
            transform("merge", {}),
            transform(
                "filterByValue",
                {
                    "type": "include",
                    "match": "all",
                    "filters": [{"fieldName": "end_ms", "config": {"id": "isNull", "options": {}}}],
                },
            ),
        ],
        units={"start_ms": "dateTimeAsIso"},
    )
    base = (
        db.ConstantVariable(ALERTS_URL_VARIABLE)
        .label("Alert service")
        .value("http://localhost:8080")
    )
    return _finish(
        "deviations",
        "Deviations",
        [table, still_open],
        [*_site_asset(measurement="deviation"), base],
        [],
        description="Deviations with links to their alert and signed report.",
        time_from="now-7d",
    )


#: Every dashboard, by uid.
DASHBOARDS: dict[str, Callable[[], Model]] = {
    "plant-overview": plant_overview,
    "farm-tank": farm_tank,
    "truck-load": truck_load,
    "htst": htst,
    "uht": uht,
    "rooms-cans": rooms_cans,
    "deviations": deviations,
}


def all_dashboards() -> dict[str, Model]:
    """Every dashboard's JSON model, by uid."""
    return {uid: make() for uid, make in DASHBOARDS.items()}
