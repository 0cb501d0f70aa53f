"""InfluxQL targets for Grafana panels, and Grafana's macros expanded the way Grafana does.

The Grafana foundation SDK has builders for panels and dashboards but no InfluxDB query type:
a target is the plain dict Grafana's InfluxDB datasource stores for a raw InfluxQL query,
wrapped as the SDK's ``UnknownDataquery`` so the panel builders take it.

:func:`expand` turns a panel's query into the text Grafana sends to InfluxDB (``$timeFilter``,
``$__interval``, ``$__interval_ms`` and template variables); the InfluxDB tests and the PNG
previews run exactly that text, so what they check is what an operator's Grafana would ask.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as dm

from milkguard.errors import MilkGuardError

#: The uid every dashboard's datasource reference and the provisioned datasource share.
DATASOURCE_UID = "milkguard-influxdb"
DATASOURCE = dm.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)

ResultFormat = Literal["time_series", "table"]


class InfluxQLError(MilkGuardError):
    """InfluxDB refused a panel's query or could not be reached (names the query and why)."""


class InfluxQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """A raw InfluxQL target, as Grafana's InfluxDB datasource stores it.

    ``alias`` names the series in the legend (``$tag_asset`` style); ``table`` results keep
    tags as columns, which tables, geomaps and merges need.
    """

    def __init__(
        self,
        ref_id: str,
        query: str,
        *,
        result_format: ResultFormat = "time_series",
        alias: str | None = None,
        hide: bool = False,
    ) -> None:
        self.data: dict[str, Any] = {
            "refId": ref_id,
            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
            "query": query,
            "rawQuery": True,
            "resultFormat": result_format,
        }
        if alias is not None:
            self.data["alias"] = alias
        if hide:
            self.data["hide"] = True

    def build(self) -> cogvariants.Dataquery:
        """The SDK's query bag holding the dict unchanged."""
        return cogruntime.UnknownDataquery(dict(self.data))


def annotation(name: str, query: str, *, color: str, text_column: str = "text") -> dict[str, Any]:
    """A dashboard annotation from InfluxQL, in the form Grafana 10/11 stores for InfluxDB.

    A plain dict: the SDK's ``AnnotationQuery`` carries only the built-in Grafana
    datasource's target fields (limit, tags, ...), so an InfluxDB query would be dropped.
    """
    return {
        "name": name,
        "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
        "enable": True,
        "hide": False,
        "iconColor": color,
        "target": {
            "refId": "Anno",
            "query": query,
            "rawQuery": True,
            "resultFormat": "table",
            "fromAnnotations": True,
            "textColumn": text_column,
        },
    }


@dataclass(frozen=True)
class Window:
    """A dashboard's time range and its panels' interval, as Grafana computes them."""

    start_ms: int
    end_ms: int
    max_data_points: int = 1000
    min_interval_ms: int = 1000

    @property
    def interval_ms(self) -> int:
        """``$__interval_ms``: the range over the panel's data points, rounded as Grafana
        rounds it (to 1, 2, 5 steps of s/min/h), never below the minimum interval."""
        raw = (self.end_ms - self.start_ms) / max(1, self.max_data_points)
        return max(self.min_interval_ms, _round_interval(raw))


_NICE_MS = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 30_000, 60_000,
    120_000, 300_000, 600_000, 900_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
    10_800_000, 21_600_000, 43_200_000, 86_400_000,
]  # fmt: skip


def _round_interval(raw_ms: float) -> int:
    for nice in _NICE_MS:
        if raw_ms <= nice:
            return nice
    return math.ceil(raw_ms / 86_400_000) * 86_400_000


def interval_text(ms: int) -> str:
    """``$__interval`` as InfluxQL takes it: ``500ms``, ``30s``, ``5m``, ``2h``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


#: A variable's value when "All" is chosen (:func:`resolve_variables` turns it into every
#: option, as Grafana does for a variable without ``allValue``).
ALL = "$__all"


def regex_value(values: Sequence[str]) -> str:
    """A variable's value inside ``/^$var$/``: one value escaped, several as ``(a|b)``, as
    Grafana formats a multi-value variable for an InfluxDB regex; an unresolved All is ``.*``."""
    if ALL in values:
        return ".*"
    escaped = [re.sub(r"([\\/^$.|?*+()\[\]{}-])", r"\\\1", value) for value in values]
    if len(escaped) == 1:
        return escaped[0]
    return "(" + "|".join(escaped) + ")"


def expand(query: str, window: Window, variables: Mapping[str, Sequence[str]]) -> str:
    """The query as Grafana sends it: time filter, interval and template variables filled in.

    A variable not given makes the query unusable: it fails here, naming it, rather than
    reach InfluxDB as ``$name``.
    """
    text = query.replace(
        "$timeFilter", f"time >= {window.start_ms}ms and time <= {window.end_ms}ms"
    )
    text = text.replace("$__interval_ms", str(window.interval_ms))
    text = text.replace("$__interval", interval_text(window.interval_ms))
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(f"${{{name}}}", regex_value(variables[name]))
        text = text.replace(f"${name}", regex_value(variables[name]))
    left = re.findall(r"\$\{?(\w+)", text)
    if left:
        raise InfluxQLError(
            f"query still holds variable(s) {', '.join(sorted(set(left)))} after expansion; "
            f"give a value for each (query: {query})"
        )
    return text


@dataclass(frozen=True)
class Series:
    """One series of an InfluxQL result: its tags, columns and rows (times in epoch ms)."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]

    def column(self, name: str) -> list[Any]:
        """Every row's value of one column."""
        index = self.columns.index(name)
        return [row[index] for row in self.values]


class InfluxDB:
    """A small InfluxQL client over InfluxDB's v1 HTTP API (``/query``, ``/write``), which
    InfluxDB 1.x serves natively, 2.x through its DBRP mapping and 3.x as well."""

    def __init__(self, url: str, database: str, *, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self._headers = {"Authorization": f"Token {token}"} if token else {}

    def _open(self, request: urllib.request.Request, what: str) -> bytes:
        for key, value in self._headers.items():
            request.add_header(key, value)
        try:
            # the URL is the operator's InfluxDB (a setting or an option), http(s) only
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return bytes(response.read())
        except OSError as exc:
            detail = exc.read().decode(errors="replace") if hasattr(exc, "read") else str(exc)
            raise InfluxQLError(f"InfluxDB at {self.url} refused {what}: {detail}") from exc

    def execute(self, statement: str) -> list[Series]:
        """Run one InfluxQL statement (epoch ms times); the series of its one result."""
        body = urllib.parse.urlencode({"db": self.database, "q": statement, "epoch": "ms"}).encode()
        raw = self._open(self._request("/query", body), statement)
        answer = json.loads(raw)
        results = answer.get("results") or [{}]
        if "error" in answer or "error" in results[0]:
            message = answer.get("error") or results[0]["error"]
            raise InfluxQLError(f"InfluxDB refused the query: {message}\n  query: {statement}")
        return [
            Series(
                name=str(item.get("name", "")),
                tags=dict(item.get("tags") or {}),
                columns=list(item["columns"]),
                values=[list(row) for row in item["values"]],
            )
            for item in results[0].get("series", [])
        ]

    def write(self, lines: Sequence[str], *, chunk: int = 20_000) -> None:
        """Write line protocol (nanosecond timestamps) in chunks."""
        for start in range(0, len(lines), chunk):
            body = "\n".join(lines[start : start + chunk]).encode()
            target = f"/write?{urllib.parse.urlencode({'db': self.database})}"
            self._open(self._request(target, body), "a write")

    def _request(self, path: str, body: bytes) -> urllib.request.Request:
        if not self.url.startswith(("http://", "https://")):
            raise InfluxQLError(f"InfluxDB URL {self.url!r} is not http(s)://host:port")
        return urllib.request.Request(self.url + path, data=body)  # noqa: S310 - http(s) only


def resolve_variables(
    model: Mapping[str, Any],
    influx: InfluxDB,
    window: Window,
    chosen: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """Each template variable's values as Grafana resolves them when the dashboard opens:
    query variables in order (a later one's query sees the earlier ones' values), All or
    nothing chosen meaning every option; constants as set. ``chosen`` overrides by name."""
    chosen = chosen or {}
    values: dict[str, list[str]] = {}
    for item in model.get("templating", {}).get("list", []):
        name = item["name"]
        if item.get("type") == "constant":
            values[name] = list(chosen.get(name, [str(item.get("query", ""))]))
            continue
        options = [
            str(row[-1])
            for series in influx.execute(expand(item["query"], window, values))
            for row in series.values
        ]
        picked = list(chosen.get(name, [ALL]))
        values[name] = options if ALL in picked else [v for v in picked if v in options]
        if not values[name]:
            raise InfluxQLError(
                f"dashboard {model.get('uid')}: variable {name} has no value "
                f"(options {options}, chosen {picked}); is there data for it in the range?"
            )
    return values
