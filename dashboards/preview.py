"""PNG previews of the dashboards, drawn with matplotlib from the panels' own queries.

No Grafana server can be installed here, so a reader sees what an operator sees this way:
each panel's targets, expanded as Grafana expands them (:func:`dashboards.influxql.expand`),
run on an InfluxDB, and drawn where the panel sits on Grafana's 24-column grid: time series
(limit lines dashed, deviations shaded, annotations marked), state timelines, stats, tables
(with the merge and calculateField transformations the panels use) and the Geomap's route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dashboards.influxql import InfluxDB, Series, Window, expand, resolve_variables

_ROW_PX = 30  # one grid row of Grafana is 30 px high
_COLUMNS = 24


@dataclass
class PanelData:
    """What one panel's targets returned, by refId."""

    panel: dict[str, Any]
    results: dict[str, list[Series]] = field(default_factory=dict)


def run_panel(
    influx: InfluxDB, panel: dict[str, Any], window: Window, variables: Mapping[str, Sequence[str]]
) -> PanelData:
    """Run every target of a panel, expanded; its series by refId."""
    data = PanelData(panel)
    for target in panel.get("targets", []):
        data.results[target["refId"]] = influx.execute(expand(target["query"], window, variables))
    return data


def table_rows(data: PanelData) -> tuple[list[str], list[list[Any]]]:
    """A table panel's columns and rows: each series' tags as columns, then its transformations
    (``merge`` joins rows whose shared columns agree; ``filterByValue`` keeps the rows whose
    column is empty; ``calculateField`` binary adds one)."""
    frames: list[tuple[list[str], list[list[Any]]]] = []
    for series_list in data.results.values():
        for series in series_list:
            tags = sorted(series.tags)
            columns = tags + [c for c in series.columns if c != "time" or not series.tags]
            picked = [i for i, c in enumerate(series.columns) if c != "time" or not series.tags]
            values = [
                [series.tags[t] for t in tags] + [row[i] for i in picked] for row in series.values
            ]
            frames.append((columns, values))
    ids = [t["id"] for t in data.panel.get("transformations", [])]
    if "merge" in ids and frames:
        frames = [_merge(frames)]
    columns, values = frames[0] if len(frames) == 1 else _concat(frames)
    for transformation in data.panel.get("transformations", []):
        if transformation["id"] == "filterByValue":
            for rule in transformation["options"]["filters"]:
                if rule["config"]["id"] == "isNull":  # the one filter the panels use
                    index = columns.index(rule["fieldName"]) if rule["fieldName"] in columns else -1
                    values = [row for row in values if index < 0 or row[index] is None]
        if transformation["id"] == "calculateField":
            binary = transformation["options"]["binary"]
            left, right = columns.index(binary["left"]), columns.index(binary["right"])
            columns = [*columns, transformation["options"]["alias"]]
            values = [[*row, (row[left] or 0) - (row[right] or 0)] for row in values]
    return columns, values


def _merge(frames: list[tuple[list[str], list[list[Any]]]]) -> tuple[list[str], list[list[Any]]]:
    columns: list[str] = []
    for frame_columns, _ in frames:
        columns += [c for c in frame_columns if c not in columns]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for frame_columns, values in frames:
        keys = [c for c in frame_columns if c in _key_columns(frames)]
        for row in values:
            record = dict(zip(frame_columns, row, strict=True))
            merged.setdefault(tuple(record[k] for k in keys), {}).update(record)
    return columns, [[record.get(c) for c in columns] for record in merged.values()]


def _key_columns(frames: list[tuple[list[str], list[list[Any]]]]) -> set[str]:
    shared = set(frames[0][0])
    for frame_columns, _ in frames[1:]:
        shared &= set(frame_columns)
    return shared - {"time"}


def _concat(frames: list[tuple[list[str], list[list[Any]]]]) -> tuple[list[str], list[list[Any]]]:
    columns: list[str] = []
    for frame_columns, _ in frames:
        columns += [c for c in frame_columns if c not in columns]
    values = [
        [dict(zip(fc, row, strict=True)).get(c) for c in columns]
        for fc, rows in frames
        for row in rows
    ]
    return columns, values


def _legend(series: Series, alias: str | None) -> str:
    if not alias:
        return " ".join([series.name, *series.tags.values()])
    text = alias
    for key, value in series.tags.items():
        text = text.replace(f"$tag_{key}", value)
    return text


def _num(ms: float) -> float:
    """A time as matplotlib's date number: days since its default epoch, 1970-01-01."""
    return ms / 86_400_000


def _when(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def render(
    model: dict[str, Any],
    influx: InfluxDB,
    window: Window,
    out: Path,
    variables: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Draw one dashboard into ``out/<uid>.png``."""
    import matplotlib  # noqa: PLC0415 - heavy; only this command draws

    matplotlib.use("Agg")
    import matplotlib.dates as mdates  # noqa: PLC0415
    import matplotlib.pyplot as plt  # noqa: PLC0415

    chosen = resolve_variables(model, influx, window, variables)
    panels = model["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    scale = 0.42  # inches per grid row
    figure = plt.figure(figsize=(18, max(6.0, height * scale + 0.8)), dpi=80)
    figure.suptitle(
        f"{model['title']}  ({_when(window.start_ms):%Y-%m-%d %H:%M} to "
        f"{_when(window.end_ms):%H:%M} UTC; "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in chosen.items())
        + ")",
        fontsize=11,
    )
    marks = _annotations(model, influx, window, chosen)
    top = 1 - 0.6 / (height * scale + 0.8)
    for panel in panels:
        grid = panel["gridPos"]
        left = grid["x"] / _COLUMNS + 0.035
        width = grid["w"] / _COLUMNS - 0.05
        bottom = top - (grid["y"] + grid["h"]) / height * top + 0.04
        tall = grid["h"] / height * top - 0.08
        axes = figure.add_axes((left, bottom, width, tall))
        axes.set_title(panel["title"], fontsize=10, loc="left")
        data = run_panel(influx, panel, window, chosen)
        kind = panel["type"]
        if kind in ("timeseries", "state-timeline"):
            _draw_series(axes, data, step=kind == "state-timeline")
            for start, end, label in marks:
                if end is not None:
                    axes.axvspan(_num(start), _num(end), color="red", alpha=0.15)
                else:
                    axes.axvline(_num(start), color="purple", linewidth=0.8, alpha=0.6)
                    axes.annotate(
                        label,
                        (_when(start), 1),
                        xycoords=("data", "axes fraction"),
                        fontsize=6,
                        rotation=90,
                        va="top",
                        color="purple",
                    )
            axes.set_xlim(_num(window.start_ms), _num(window.end_ms))
            axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
        elif kind == "geomap":
            _draw_route(axes, data)
        elif kind == "stat":
            _draw_stat(axes, data)
        else:
            _draw_table(axes, data)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model['uid']}.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def _annotations(
    model: dict[str, Any], influx: InfluxDB, window: Window, chosen: Mapping[str, Sequence[str]]
) -> list[tuple[int, int | None, str]]:
    marks: list[tuple[int, int | None, str]] = []
    for item in model.get("annotations", {}).get("list", []):
        target = item["target"]
        for series in influx.execute(expand(target["query"], window, chosen)):
            end_column = target.get("timeEndColumn")
            for row in series.values:
                record = dict(zip(series.columns, row, strict=True))
                end = record.get(end_column) if end_column else None
                marks.append((record["time"], end, str(record.get(target["textColumn"], ""))))
    return marks


def _draw_series(axes: Any, data: PanelData, *, step: bool) -> None:
    aliases = {t["refId"]: t.get("alias") for t in data.panel.get("targets", [])}
    for ref_id, series_list in data.results.items():
        for series in series_list:
            points = [(row[0], row[1]) for row in series.values if row[1] is not None]
            if not points:
                continue
            label = _legend(series, aliases[ref_id])
            times = [_when(t) for t, _ in points]
            values = [float(v) for _, v in points]
            dashed = label.startswith("limit")
            axes.plot(
                times,
                values,
                label=label,
                linewidth=0.9,
                linestyle="--" if dashed else "-",
                drawstyle="steps-post" if step or dashed else "default",
            )
    if axes.lines:
        axes.legend(fontsize=7, loc="best")
    axes.tick_params(labelsize=7)


def _draw_route(axes: Any, data: PanelData) -> None:
    for series_list in data.results.values():
        for series in series_list:
            lats, lons = series.column("lat"), series.column("lon")
            axes.plot(lons, lats, "-", color="tab:blue", linewidth=1.5)
            axes.plot(lons[:1], lats[:1], "o", color="green", label="start")
            axes.plot(lons[-1:], lats[-1:], "s", color="red", label="last position")
    axes.set_xlabel("longitude", fontsize=7)
    axes.set_ylabel("latitude", fontsize=7)
    axes.tick_params(labelsize=7)
    axes.legend(fontsize=7)


def _draw_stat(axes: Any, data: PanelData) -> None:
    aliases = {t["refId"]: t.get("alias") for t in data.panel.get("targets", [])}
    unit = data.panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    texts = []
    for ref_id, series_list in data.results.items():
        for series in series_list:
            for row in series.values:
                if row[1] is not None:
                    texts.append(
                        f"{_legend(series, aliases[ref_id])} {_when(row[0]):%Y-%m-%d}: "
                        f"{_duration(float(row[1])) if unit == 's' else row[1]}"
                    )
    axes.axis("off")
    axes.text(0.01, 0.5, "\n".join(texts) or "no data", fontsize=12, va="center")


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def _draw_table(axes: Any, data: PanelData) -> None:
    axes.axis("off")
    columns, values = table_rows(data)
    if not values:
        axes.text(0.01, 0.5, "no data", fontsize=10)
        return
    shown = [
        [_cell(column, cell) for column, cell in zip(columns, row, strict=True)]
        for row in values[:12]
    ]
    table = axes.table(cellText=shown, colLabels=columns, loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)


def _cell(column: str, cell: Any) -> str:
    if cell is None:
        return ""
    is_time = column == "time" or column.endswith("_ms") or column == "last batch"
    if is_time and isinstance(cell, int) and cell > 10**12:
        return f"{_when(cell):%H:%M:%S}"
    if isinstance(cell, float):
        return f"{cell:.2f}"
    text = str(cell)
    return text if len(text) <= 40 else text[:37] + "..."
