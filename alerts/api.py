"""The alert HTTP API (FastAPI) and the operators' page.

Every request carries ``Authorization: Bearer TOKEN``; tokens, roles and sites come from
``alerts.users``. The token is checked, failed logins are rate limited and the body size is
limited before any body is read, by :class:`alerts.gate.Gate` in front of the app.
Operators and QA see the alerts of their sites, acknowledge them and record
corrective actions; regulators read every site and write nothing. A missing or unknown token is
401, a write by a regulator or on another site's alert is 403.

    GET  /api/whoami                       who the token belongs to
    GET  /api/alerts                       alerts visible to the caller, open first
    GET  /api/alerts/detail?id=ID          one alert, its corrective actions and its trail
    POST /api/acknowledge                  {"alert_id", "note"}
    POST /api/corrective-actions           {"alert_id", cause, action_taken, disposition, ...}
    GET  /api/reports/{deviation_id}.json  a signed regulator report (also .html)
    GET  /                                 the operators' page

(No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations, and
the ``User`` dependency is an alias local to :func:`create_app`.)
"""

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from alerts.audit import AuditTrail
from alerts.corrective import CorrectiveActionInput
from alerts.gate import FailedLogins, Gate
from alerts.lifecycle import Alert, AlertBook
from alerts.reports import report_paths
from alerts.settings import ApiUser

PAGE = Path(__file__).with_name("page.html")


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
) -> Gate:
    """The API over a running service's alert book and audit trail, behind its gate."""
    app = FastAPI(title="MilkGuard alerts", docs_url=None, redoc_url=None)

    def caller(request: Request) -> ApiUser:
        user = request.scope.get("user")  # put there by the gate, which checked the token
        if not isinstance(user, ApiUser):
            raise HTTPException(401, "send Authorization: Bearer <token>")
        return user

    User = Annotated[ApiUser, Depends(caller)]  # noqa: N806 - a type, named as one

    def visible(user: ApiUser, alert: Alert) -> bool:
        return user.role == "regulator" or "*" in user.sites or alert.site in user.sites

    def writable(user: ApiUser, alert_id: str) -> Alert:
        if user.role == "regulator":
            raise HTTPException(403, "regulators read; they do not write")
        alert = book.get(alert_id)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id!r}")
        if not visible(user, alert):
            raise HTTPException(403, f"{user.name} does not work at {alert.site}")
        return alert

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/whoami")
    def whoami(user: User) -> dict[str, Any]:
        return {"name": user.name, "role": user.role, "sites": user.sites}

    @app.get("/api/alerts")
    def alerts(user: User) -> list[dict[str, Any]]:
        return [_alert_json(a) for a in book.all() if visible(user, a)]

    @app.get("/api/alerts/detail")
    def detail(id: str, user: User) -> dict[str, Any]:
        alert = book.get(id)
        if alert is None or not visible(user, alert):
            raise HTTPException(404, f"no alert {id!r}")
        return {
            "alert": _alert_json(alert),
            "actions": [a.model_dump(mode="json") for a in book.actions(id)],
            "trail": [asdict(e) for e in trail.entries(subject=id)],
        }

    @app.post("/api/acknowledge")
    def acknowledge(given: Acknowledgement, user: User) -> dict[str, Any]:
        writable(user, given.alert_id)
        alert = book.acknowledge(given.alert_id, user.name, _now_ms(), given.note)
        return _alert_json(alert)

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
        if not (user.role == "regulator" or "*" in user.sites or site in user.sites):
            raise HTTPException(404, f"no report {name}")  # another site's: not even its name
        return FileResponse(path)

    return Gate(app, users, max_body_bytes=max_body_bytes, logins=logins)


def _alert_json(alert: Alert) -> dict[str, Any]:
    data = asdict(alert)
    data["state"] = str(alert.state)
    return data


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
