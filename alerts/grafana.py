"""Links from the operators' page into the plant's Grafana dashboards.

The dashboards (``dashboards/``, provisioned with these uids) take the variables ``site``,
``asset`` and ``channel``; a link opens one at the deviation's time, an hour either side.
Grafana's base URL is a setting (``alerts.grafana_url``, validated as http(s) without user,
query or fragment), so no alert field can choose where a link points: fields only fill query
values, encoded.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from alerts.reports import parse_iso

#: uid -> title of every dashboard the page links to.
DASHBOARDS: Final = {
    "plant-overview": "Plant overview",
    "farm-tank": "Farm tank",
    "truck-load": "Truck and load",
    "htst": "HTST recording chart",
    "uht": "UHT",
    "rooms-cans": "Rooms and cans",
    "deviations": "Deviations",
}

#: The dashboard that charts a deviation of each kind (others: by the limit's unit, else the
#: plant overview).
_BY_KIND: Final = {
    "htst_temperature": "htst",
    "htst_holding_time": "htst",
    "htst_recorder": "htst",
    "uht_lethality": "uht",
    "cooling_deadline": "farm-tank",
    "blend_temperature": "farm-tank",
    "storage_age": "farm-tank",
    "transit_time": "truck-load",
    "temperature_exposure": "truck-load",
}
_BY_UNIT: Final = {"%RH": "rooms-cans", "%O2": "rooms-cans"}

_HOUR_MS: Final = 3_600_000


def dashboard_url(base: str, uid: str, **variables: str | int | None) -> str:
    """``base/d/uid?var-...&from=&to=``: ``from`` and ``to`` are epoch ms, others variables."""
    query: list[tuple[str, str | int]] = []
    for name, value in variables.items():
        if value is None:
            continue
        query.append((name if name in ("from", "to") else f"var-{name}", value))
    return f"{base.rstrip('/')}/d/{uid}" + (f"?{urlencode(query)}" if query else "")


def alert_links(base: str | None, deviation: dict[str, Any], now_ms: int) -> list[dict[str, str]]:
    """The dashboards of an alert's deviation, as ``{"uid", "title", "url"}``; none unset."""
    if base is None:
        return []
    kind = str(deviation.get("kind", ""))
    unit = str((deviation.get("limit") or {}).get("unit", ""))
    main = _BY_KIND.get(kind) or _BY_UNIT.get(unit) or "plant-overview"
    try:
        start = round(parse_iso(str(deviation["start"])).timestamp() * 1000)
        end_text = deviation.get("end")
        end = round(parse_iso(str(end_text)).timestamp() * 1000) if end_text else now_ms
    except (KeyError, ValueError):
        start, end = now_ms - _HOUR_MS, now_ms
    channels = deviation.get("channels") or []
    variables: dict[str, str | int | None] = {
        "site": deviation.get("site"),
        "asset": deviation.get("asset"),
        "channel": channels[0] if channels else None,
        "from": start - _HOUR_MS,
        "to": end + _HOUR_MS,
    }
    uids = dict.fromkeys([main, "deviations", "plant-overview"])
    return [
        {"uid": uid, "title": DASHBOARDS[uid], "url": dashboard_url(base, uid, **variables)}
        for uid in uids
    ]


def site_links(base: str | None, site: str | None = None) -> list[dict[str, str]]:
    """The plant overview and the deviations table (of one site, if given)."""
    if base is None:
        return []
    return [
        {"uid": uid, "title": DASHBOARDS[uid], "url": dashboard_url(base, uid, site=site)}
        for uid in ("plant-overview", "deviations")
    ]
