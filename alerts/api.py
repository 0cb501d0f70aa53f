"""The alert HTTP API (FastAPI) and the operators' page.

Every request carries ``Authorization: Bearer TOKEN``; tokens, roles and sites come from
``alerts.users``. The token is checked, failed logins are rate limited and the body size is
limited before any body is read, by :class:`alerts.gate.Gate` in front of the app.
Operators and QA see the alerts of their sites, acknowledge them and record
corrective actions; regulators read every site and write nothing. A missing or unknown token is
401, a write by a regulator or on another site's alert is 403.

    GET  /api/whoami                       who the token belongs to, and the Grafana links
    GET  /api/alerts                       alerts visible to the caller, open first
                                           (?site=&severity=&state=&q= narrow them)
    GET  /api/alerts/detail?id=ID          one alert: its deviation, corrective actions, trail,
                                           who was told and when, reports, dashboards
    GET  /api/events                       the alert changes, live (server-sent events,
                                           Last-Event-ID; see alerts.live)
    GET  /api/devices                      the gateways of the caller's sites
    GET  /api/devices/detail?site=&gateway= one gateway, its channels' latest values and series
    POST /api/acknowledge                  {"alert_id", "note"}
    POST /api/corrective-actions           {"alert_id", cause, action_taken, disposition, ...}
    GET  /api/reports/{deviation_id}.json  a signed regulator report (also .html)
    GET  /                                 the operators' page (and its files under /static/)

(No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
among them the ``User`` dependency.)
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from alerts.audit import AuditTrail
from alerts.corrective import CorrectiveActionInput
from alerts.delivery import Outbox
from alerts.devices import DeviceWindow
from alerts.gate import STATIC_FILES, FailedLogins, Gate
from alerts.grafana import alert_links, site_links
from alerts.lifecycle import Alert, AlertBook
from alerts.live import LiveHub, alert_json
from alerts.reports import causes_of, clock_of, report_paths, report_stem
from alerts.settings import ApiUser
from milkguard.errors import ConfigError

PAGE = Path(__file__).with_name("page.html")
STATIC = Path(__file__).with_name("static")
_MEDIA = {".js": "text/javascript", ".css": "text/css"}


class Acknowledgement(BaseModel):
    """What acknowledging says."""

    alert_id: str
    note: str = Field(default="", max_length=2000)


class ActionRequest(CorrectiveActionInput):
    """A corrective action for an alert."""

    alert_id: str


def create_app(
    users: list[ApiUser],
    book: AlertBook,
    trail: AuditTrail,
    reports: Path,
    *,
    max_body_bytes: int = 64 * 1024,
    logins: FailedLogins | None = None,
    outbox: Outbox | None = None,
    devices: DeviceWindow | None = None,
    grafana_url: str | None = None,
    hub: LiveHub | None = None,
) -> Gate:
    """The API over a running service's alert book and audit trail, behind its gate.

    ``outbox``: who was told of an alert and when; ``devices``: the gateways' recent window
    (the device page); ``grafana_url``: links into the dashboards; ``hub``: the live updates
    (one over ``book`` and ``devices`` if not given); close it before stopping the server, so
    open event streams end.
    """

    def visible(user: ApiUser, alert: Alert) -> bool:
        return user.sees(alert.site)

    live = hub or LiveHub(
        book, devices_version=(lambda: devices.version) if devices is not None else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        poll = asyncio.create_task(live.run(), name="alerts-live-poll")
        try:
            yield
        finally:
            live.close()
            await poll

    app = FastAPI(title="MilkGuard alerts", docs_url=None, redoc_url=None, lifespan=lifespan)
    _page_live_and_device_routes(app, live, devices, grafana_url)

    def writable(user: ApiUser, alert_id: str) -> Alert:
        if user.role == "regulator":
            raise HTTPException(403, "regulators read; they do not write")
        alert = book.get(alert_id)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id!r}")
        if not visible(user, alert):
            raise HTTPException(403, f"{user.name} does not work at {alert.site}")
        return alert

    @app.get("/api/whoami")
    def whoami(user: User) -> dict[str, Any]:
        return {
            "name": user.name,
            "role": user.role,
            "sites": user.sites,
            "grafana": site_links(grafana_url),
            "devices": devices is not None,
        }

    @app.get("/api/alerts")
    def alerts(
        user: User,
        site: str | None = None,
        severity: str | None = None,
        state: str | None = None,
        q: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            alert_json(a)
            for a in book.all()
            if visible(user, a) and _matches(a, site, severity, state, q)
        ]

    @app.get("/api/alerts/detail")
    def detail(id: str, user: User) -> dict[str, Any]:
        alert = book.get(id)
        if alert is None or not visible(user, alert):
            raise HTTPException(404, f"no alert {id!r}")
        deviation = alert.deviation
        channels = deviation.get("channels") or []
        now = (
            devices.latest(alert.site, alert.asset, channels[0])
            if devices is not None and channels
            else None
        )
        return {
            "alert": alert_json(alert),
            "actions": [a.model_dump(mode="json") for a in book.actions(id)],
            "trail": [asdict(e) for e in trail.entries(subject=id)],
            "deliveries": [asdict(d) for d in outbox.deliveries(id)] if outbox else [],
            "reports": _reports_of(reports, alert),
            "grafana": alert_links(grafana_url, deviation, _now_ms()),
            "value_now": now,
            "clock": clock_of(deviation),
            "cause": causes_of(deviation),
        }

    @app.post("/api/acknowledge")
    def acknowledge(given: Acknowledgement, user: User) -> dict[str, Any]:
        writable(user, given.alert_id)
        alert = book.acknowledge(given.alert_id, user.name, _now_ms(), given.note)
        return alert_json(alert)

    @app.post("/api/corrective-actions")
    def corrective_action(given: ActionRequest, user: User) -> dict[str, Any]:
        writable(user, given.alert_id)
        fields = given.model_dump(exclude={"alert_id"})
        action = book.record_action(
            given.alert_id, CorrectiveActionInput(**fields), user.name, user.role, _now_ms()
        )
        return action.model_dump(mode="json")

    @app.get("/api/reports/{name}")
    def report(name: str, user: User) -> FileResponse:
        found = report_paths(reports, name)  # named by a deviation id only, never a path
        if found is None:
            raise HTTPException(404, "reports are <deviation id>.json or .html")
        path, record = found
        if not path.exists() or not record.exists():
            raise HTTPException(404, f"no report {name}")
        site = json.loads(record.read_text(encoding="utf-8"))["report"]["deviation"]["site"]
        if not user.sees(site):
            raise HTTPException(404, f"no report {name}")  # another site's: not even its name
        return FileResponse(path)

    return Gate(app, users, max_body_bytes=max_body_bytes, logins=logins)


def _caller(request: Request) -> ApiUser:
    user = request.scope.get("user")  # put there by the gate, which checked the token
    if not isinstance(user, ApiUser):
        raise HTTPException(401, "send Authorization: Bearer <token>")
    return user


#: The caller, as the gate identified them by their token.
User = Annotated[ApiUser, Depends(_caller)]


def _page_live_and_device_routes(
    app: FastAPI, live: LiveHub, devices: DeviceWindow | None, grafana_url: str | None
) -> None:
    """The page and its files, ``/api/events`` and the device page's ``/api/devices``."""

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:  # the gate lets only these through without a token
            raise HTTPException(404, f"no file {name!r}")
        path = STATIC / name
        return FileResponse(path, media_type=_MEDIA[path.suffix])

    @app.get("/api/events")
    async def events(
        user: User, last_event_id: Annotated[str | None, Header()] = None
    ) -> StreamingResponse:
        after = None
        if last_event_id is not None and last_event_id.strip().isdigit():
            after = int(last_event_id.strip())
        client = live.admit(user)
        if client is None:
            raise HTTPException(503, "too many live pages open: try again later")
        return StreamingResponse(
            live.stream(client, after),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},  # a proxy must not hold events back
        )

    @app.get("/api/devices")
    def device_list(user: User) -> list[dict[str, Any]]:
        if devices is None:
            return []
        return devices.gateways(user.sees)

    @app.get("/api/devices/detail")
    def device_detail(site: str, gateway: str, user: User) -> dict[str, Any]:
        found = devices.gateway(site, gateway) if devices is not None else None
        if found is None or not user.sees(site):
            raise HTTPException(404, f"no gateway {site}/{gateway}")
        return {**found, "grafana": site_links(grafana_url, site)}


def _matches(
    alert: Alert, site: str | None, severity: str | None, state: str | None, q: str | None
) -> bool:
    """The list's filters: exact site, severity and state; ``q`` anywhere in the alert's
    ids, rule, kind, channels or who acknowledged it, ignoring case."""
    if (site and alert.site != site) or (severity and alert.severity != severity):
        return False
    if state and str(alert.state) != state:
        return False
    if not q:
        return True
    d = alert.deviation
    text = " ".join(
        str(part)
        for part in (
            alert.id,
            alert.rule_id,
            d.get("kind"),
            d.get("ccp"),
            d.get("device"),
            *(d.get("channels") or []),
            *alert.deviations,
            alert.acknowledged_by,
        )
        if part
    )
    return q.casefold() in text.casefold()


def _reports_of(reports: Path, alert: Alert) -> list[dict[str, Any]]:
    """The signed reports issued for the alert's deviations: name, when, deadline, key."""
    found = []
    for deviation_id in alert.deviations:
        try:
            path = reports / f"{report_stem(deviation_id)}.json"
        except ConfigError:
            continue
        if not path.exists():
            continue
        try:
            signed = json.loads(path.read_text(encoding="utf-8"))
            report, signature = signed["report"], signed["signature"]
            found.append(
                {
                    "deviation": deviation_id,
                    "json": f"{deviation_id}.json",
                    "html": f"{deviation_id}.html",
                    "issued_at": report.get("issued_at"),
                    "due_by": report.get("due_by"),
                    "within_deadline": report.get("within_deadline"),
                    "key_id": signature.get("key_id"),
                }
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # a report being written, or not one: the file list is not the record
    return found


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
