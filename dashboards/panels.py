"""Panel helpers over the Grafana foundation SDK's builders: every panel on the one InfluxDB
datasource, placed on the 24-column grid by the caller, with InfluxQL targets."""

from __future__ import annotations

from typing import Any, cast

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE, InfluxQL

#: What a variable filter of site and asset reads like in every query.
SITE_ASSET = '"site" =~ /^$site$/ AND "asset" =~ /^$asset$/'


def _place(
    panel: Any, panel_id: int, title: str, grid: tuple[int, int, int, int], targets: list[InfluxQL]
) -> Any:
    x, y, w, h = grid
    panel.id(panel_id).title(title).datasource(DATASOURCE).grid_pos(dm.GridPos(h=h, w=w, x=x, y=y))
    for target in targets:
        panel.with_target(target)
    return cast(cogbuilder.Builder[dm.Panel], panel)


def chart(
    panel_id: int,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[InfluxQL],
    *,
    unit: str = "",
    dashed: tuple[str, ...] = (),
    description: str = "",
) -> cogbuilder.Builder[dm.Panel]:
    """A time series; the series whose name matches one of ``dashed`` (limits, cut lines) are
    drawn as dashed lines without fill, as a paper chart's printed lines."""
    panel = _place(timeseries.Panel(), panel_id, title, grid, targets)
    panel.unit(unit).line_width(1).fill_opacity(0).show_points(cm.VisibilityMode.NEVER)
    if description:
        panel.description(description)
    for name in dashed:
        panel.override_by_regexp(
            name,
            [
                dm.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                ),
                dm.DynamicConfigValue(id_val="custom.lineInterpolation", value="stepAfter"),
            ],
        )
    return cast(cogbuilder.Builder[dm.Panel], panel)


def states(
    panel_id: int,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[InfluxQL],
    *,
    on: tuple[str, str],
    off: tuple[str, str],
) -> cogbuilder.Builder[dm.Panel]:
    """A state timeline of a two-state channel or flag: ``on`` and ``off`` are (text, colour)
    for 1/true and 0/false (a valve's forward is green, a gateway's alarm red)."""
    panel = _place(statetimeline.Panel(), panel_id, title, grid, targets)
    options: dict[str, dm.ValueMappingResult] = {}
    for keys, (text, color) in ((("1", "true"), on), (("0", "false"), off)):
        for key in keys:
            options[key] = dm.ValueMappingResult(text=text, color=color)
    panel.mappings([dm.ValueMap(options=options)])
    return cast(cogbuilder.Builder[dm.Panel], panel)


def single(
    panel_id: int,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[InfluxQL],
    *,
    unit: str = "",
) -> cogbuilder.Builder[dm.Panel]:
    """A stat: one number per series (its last value)."""
    panel = _place(stat.Panel(), panel_id, title, grid, targets)
    panel.unit(unit).reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    return cast(cogbuilder.Builder[dm.Panel], panel)


def rows(
    panel_id: int,
    title: str,
    grid: tuple[int, int, int, int],
    targets: list[InfluxQL],
    *,
    transformations: list[dm.DataTransformerConfig] | None = None,
    links: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    units: dict[str, str] | None = None,
) -> cogbuilder.Builder[dm.Panel]:
    """A table; ``links`` are (column, title, url) data links on a column's cells, ``units``
    a column's Grafana unit (``dateTimeFromNow`` for an epoch-ms column)."""
    panel = _place(table.Panel(), panel_id, title, grid, targets)
    for column, unit in (units or {}).items():
        panel.override_by_name(column, [dm.DynamicConfigValue(id_val="unit", value=unit)])
    for transformation in transformations or []:
        panel.with_transformation(transformation)
    for column, link_title, url in links:
        panel.with_override(
            dm.MatcherConfig(id_val="byName", options=column),
            [dm.DynamicConfigValue(id_val="links", value=[{"title": link_title, "url": url}])],
        )
    return cast(cogbuilder.Builder[dm.Panel], panel)


def route(
    panel_id: int, title: str, grid: tuple[int, int, int, int], targets: list[InfluxQL]
) -> cogbuilder.Builder[dm.Panel]:
    """A Geomap of positions (``lat``, ``lon`` columns) drawn as a route and markers."""
    panel = _place(geomap.Panel(), panel_id, title, grid, targets)
    location = cb.FrameGeometrySource().mode(cm.FrameGeometrySourceMode.COORDS)
    location.latitude("lat").longitude("lon")
    panel.layers(
        [
            cb.MapLayerOptions().type("route").name("route").location(location),
            cb.MapLayerOptions().type("markers").name("positions").location(location),
        ]
    )
    return cast(cogbuilder.Builder[dm.Panel], panel)


def variable(name: str, query: str, *, label: str) -> cogbuilder.Builder[dm.VariableModel]:
    """A query variable over InfluxDB tag values, multi-valued with All, opened on All.

    No ``allValue``: Grafana then sends All as every option of the variable, so an HTST
    dashboard's All is every HTST line, not every asset of the plant."""
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .multi(True)
        .include_all(True)
        .current(dm.VariableOption(text="All", value="$__all", selected=True))
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def transform(id_val: str, options: dict[str, Any]) -> dm.DataTransformerConfig:
    """A Grafana transformation (merge, calculateField, organize...)."""
    return dm.DataTransformerConfig(id_val=id_val, options=options)
