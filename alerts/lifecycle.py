"""The alert lifecycle: raised, acknowledged, escalated, resolved, reopened; kept in SQLite.

One alert per (site, asset, rule): the deviation changes of the stream drive it.

- A deviation opening raises an alert and tells the first audience of its severity. The same
  change again (Kafka and MQTT deliver at least once) changes nothing: no repeat. A change older
  than one applied for its deviation (an ``opened`` after the ``closed``) changes nothing either.
- A deviation closing resolves its alert and tells everyone who was told of it.
- A new deviation of the same rule on the same asset within ``reopen_within_s`` of the
  resolution reopens the alert (a flapping probe is one alert, not a flood); later, it is a new
  alert.
- An alert not acknowledged within its severity's ``ack_within_s`` is escalated to the next
  audience (operator, then QA manager, then regulator, as the policy lists them), and again
  after as long, until the list ends. Acknowledging stops the escalation; it does not resolve.

Time is given (``now``, epoch milliseconds), never read, so the book is a pure function of its
inputs and the database; the database is the state, so a restart changes nothing: what was due
before it is due after it. Each transition is written to the audit trail when one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec

from alerts.audit import AuditTrail
from alerts.corrective import CorrectiveAction, CorrectiveActionInput
from alerts.store import Database, new_lock, serialized, transactional
from milkguard.errors import ConfigError


class State(StrEnum):
    """Where an alert is in its life."""

    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Taken(StrEnum):
    """What a deviation change did to the book."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # applied before: delivered again
    STALE = "stale"  # older than what was applied for its deviation (opened after closed)


class Audience(StrEnum):
    """Who is told."""

    OPERATOR = "operator"
    QA = "qa"
    REGULATOR = "regulator"


@dataclass(frozen=True)
class Escalation:
    """A severity's policy: who is told first, and then, unacknowledged, who next."""

    audiences: tuple[Audience, ...]
    ack_within_s: float
    action_within_s: float | None = None  # a corrective action is due this long after raising


DEFAULT_POLICY: dict[str, Escalation] = {
    "critical": Escalation((Audience.OPERATOR, Audience.QA, Audience.REGULATOR), 5 * 60, 24 * 3600),
    "major": Escalation((Audience.OPERATOR, Audience.QA), 15 * 60, 72 * 3600),
    "minor": Escalation((Audience.OPERATOR,), 60 * 60),
}


@dataclass(frozen=True)
class Notice:
    """Something to tell an audience about an alert (the channels deliver it)."""

    event: str  # raised, escalated, reopened, resolved
    audience: Audience
    alert: Alert


@dataclass(frozen=True)
class Alert:
    """One alert as stored."""

    id: str  # site/asset/rule
    site: str
    asset: str
    rule_id: str
    severity: str
    state: State
    level: int  # index of the last audience told
    raised_ms: int
    due_ms: int | None  # when it escalates unless acknowledged
    acknowledged_by: str | None
    resolved_ms: int | None
    reopened: int
    deviations: list[str]  # ids, newest last
    deviation: dict[str, Any]  # the latest change record
    action_due_ms: int | None = None  # a corrective action is due by then (none recorded yet)
    actions: int = 0  # corrective actions recorded


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS corrective_actions (
    id {serial},
    alert_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deviations_seen (
    deviation_id TEXT NOT NULL,
    change TEXT NOT NULL,
    PRIMARY KEY (deviation_id, change)
);
CREATE TABLE IF NOT EXISTS alert_changes (
    seq {serial},
    alert_id TEXT NOT NULL,
    record TEXT NOT NULL
);
"""

#: Changes kept for clients that reconnect (``Last-Event-ID``); one further behind resyncs.
CHANGES_KEPT = 2000


@dataclass(frozen=True)
class Change:
    """One stored change of an alert: its number in the change log and the alert after it."""

    seq: int
    alert: Alert


class AlertBook:
    """The alerts and their lifecycle, persisted."""

    def __init__(
        self,
        path: Path | str,
        *,
        policy: dict[str, Escalation] | None = None,
        reopen_within_s: float = 3600.0,
        trail: AuditTrail | None = None,
    ) -> None:
        self.policy = policy or DEFAULT_POLICY
        self.reopen_within_ms = round(reopen_within_s * 1000)
        self._trail = trail
        self._lock = new_lock()
        self._db = Database(path, _SCHEMA, "the alert store")

    @serialized
    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # ----------------------------------------------------------------- reading

    @serialized
    def get(self, alert_id: str) -> Alert | None:
        """One alert by id (site/asset/rule)."""
        row = self._db.execute("SELECT record FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return _decode(row[0]) if row else None

    @serialized
    def all(self) -> list[Alert]:
        """Every alert, open ones first, newest first."""
        alerts = [_decode(r[0]) for r in self._db.execute("SELECT record FROM alerts")]
        return sorted(alerts, key=lambda a: (a.state == State.RESOLVED, -a.raised_ms))

    @serialized
    def changes_after(self, seq: int, limit: int = 500) -> list[Change]:
        """The changes numbered after ``seq``, oldest first, at most ``limit`` of them."""
        rows = self._db.execute(
            "SELECT seq, record FROM alert_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [Change(row[0], _decode(row[1])) for row in rows]

    @serialized
    def change_span(self) -> tuple[int, int]:
        """(first, last) number of the changes kept; (0, 0) before the first change.

        Every writer numbers its changes under the store's write lock (one transaction across
        nodes), so the numbers a reader sees only grow: a client that read up to ``n`` misses
        nothing by asking for what follows ``n``, unless ``n`` fell out of the kept window.
        """
        row = self._db.execute("SELECT MIN(seq), MAX(seq) FROM alert_changes").fetchone()
        return (row[0] or 0, row[1] or 0) if row else (0, 0)

    # ----------------------------------------------------------------- transitions

    def on_deviation(self, change: dict[str, Any], now_ms: int) -> list[Notice]:
        """A deviation change record (the JSON of deviations.jsonl) in; what to tell out."""
        return self.take(change, now_ms)[1]

    @transactional
    def take(self, change: dict[str, Any], now_ms: int) -> tuple[Taken, list[Notice]]:
        """Apply a deviation change once, in its order; how it was taken, and what to tell.

        A change applied before is a ``duplicate`` (the stream delivers at least once); an
        ``opened`` after its deviation's ``closed`` is ``stale``: neither changes anything.
        """
        deviation_id, kind = str(change["id"]), str(change["change"])
        seen = {
            row[0]
            for row in self._db.execute(
                "SELECT change FROM deviations_seen WHERE deviation_id = ?", (deviation_id,)
            )
        }
        if kind in seen:
            return Taken.DUPLICATE, []
        if kind == "opened" and "closed" in seen:
            return Taken.STALE, []
        self._db.execute("INSERT INTO deviations_seen VALUES (?, ?)", (deviation_id, kind))
        return Taken.APPLIED, self._apply(change, kind, now_ms)

    def _apply(self, change: dict[str, Any], kind: str, now_ms: int) -> list[Notice]:
        alert_id = f"{change['site']}/{change['asset']}/{change['rule_id']}"
        alert = self.get(alert_id)
        escalation = self._escalation(str(change["severity"]))
        if kind == "opened":
            if alert is None or (
                alert.state == State.RESOLVED
                and alert.resolved_ms is not None
                and now_ms - alert.resolved_ms > self.reopen_within_ms
            ):
                fresh = Alert(
                    id=alert_id,
                    site=change["site"],
                    asset=change["asset"],
                    rule_id=change["rule_id"],
                    severity=change["severity"],
                    state=State.RAISED,
                    level=0,
                    raised_ms=now_ms,
                    due_ms=self._due(escalation, 0, now_ms),
                    acknowledged_by=None,
                    resolved_ms=None,
                    reopened=alert.reopened if alert else 0,
                    deviations=[*(alert.deviations if alert else []), change["id"]][-50:],
                    deviation=change,
                    action_due_ms=self._action_due(escalation, now_ms),
                )
                return self._save(fresh, "raised", [escalation.audiences[0]], "stream")
            if alert.state == State.RESOLVED:
                again = replace(
                    alert,
                    state=State.RAISED,
                    level=0,
                    due_ms=self._due(escalation, 0, now_ms),
                    acknowledged_by=None,
                    resolved_ms=None,
                    reopened=alert.reopened + 1,
                    deviations=[*alert.deviations, change["id"]][-50:],
                    deviation=change,
                    action_due_ms=self._action_due(escalation, now_ms),
                )
                return self._save(again, "reopened", [escalation.audiences[0]], "stream")
            # a second deviation while the alert is open: the same alert, nobody told twice
            merged = replace(alert, deviations=[*alert.deviations, change["id"]][-50:])
            self._store(merged)
            return []
        if alert is None or alert.state == State.RESOLVED:
            return []  # a close for an alert already resolved (or never raised here)
        resolved = replace(alert, state=State.RESOLVED, due_ms=None, resolved_ms=now_ms)
        resolved = replace(resolved, deviation=change)
        told = escalation.audiences[: alert.level + 1]
        return self._save(resolved, "resolved", list(told), "stream")

    @transactional
    def acknowledge(self, alert_id: str, who: str, now_ms: int, note: str = "") -> Alert:
        """Someone has seen the alert and is acting: escalation stops."""
        alert = self.get(alert_id)
        if alert is None:
            raise ConfigError(f"no alert {alert_id!r}")
        if alert.state != State.RAISED:
            return alert  # acknowledged or resolved already: nothing changes
        acked = replace(alert, state=State.ACKNOWLEDGED, due_ms=None, acknowledged_by=who)
        self._store(acked)
        self._audit("alert.acknowledged", acked, who, {"note": note, "at_ms": now_ms})
        return acked

    @transactional
    def record_action(
        self, alert_id: str, given: CorrectiveActionInput, who: str, role: str, now_ms: int
    ) -> CorrectiveAction:
        """Record a signed corrective action; its record goes to the audit trail whole."""
        alert = self.get(alert_id)
        if alert is None:
            raise ConfigError(f"no alert {alert_id!r}")
        action = CorrectiveAction(
            **given.model_dump(),
            alert_id=alert_id,
            deviation_id=str(alert.deviation.get("id")),
            signed_by=who,
            role=role,
            signed_at=_iso(now_ms),
        )
        self._db.execute(
            "INSERT INTO corrective_actions (alert_id, record) VALUES (?, ?)",
            (alert_id, action.model_dump_json()),
        )
        self._store(replace(alert, actions=alert.actions + 1, action_due_ms=None))
        if self._trail is not None:
            self._trail.append(
                "corrective_action.recorded", alert_id, who, action.model_dump(mode="json")
            )
        return action

    @serialized
    def actions(self, alert_id: str) -> list[CorrectiveAction]:
        """The corrective actions recorded on an alert, oldest first."""
        rows = self._db.execute(
            "SELECT record FROM corrective_actions WHERE alert_id = ? ORDER BY id", (alert_id,)
        )
        return [CorrectiveAction.model_validate_json(row[0]) for row in rows]

    @transactional
    def due(self, now_ms: int) -> list[Notice]:
        """Escalate every raised alert whose acknowledgement is overdue, and every alert whose
        corrective action is overdue; what to tell."""
        notices: list[Notice] = []
        for stored in self.all():
            alert = stored
            if stored.action_due_ms is not None and stored.action_due_ms <= now_ms:
                escalation = self._escalation(stored.severity)
                alert = replace(stored, action_due_ms=None)  # told once; recording clears it
                audience = Audience.QA if Audience.QA in escalation.audiences else Audience.OPERATOR
                notices += self._save(alert, "action_overdue", [audience], "policy")
            if alert.state != State.RAISED or alert.due_ms is None or alert.due_ms > now_ms:
                continue
            escalation = self._escalation(alert.severity)
            level = min(alert.level + 1, len(escalation.audiences) - 1)
            if level == alert.level:  # told everyone on the list: keep reminding the last
                next_due = self._due(escalation, level, alert.due_ms)
                bumped = replace(alert, due_ms=next_due)
            else:
                bumped = replace(
                    alert, level=level, due_ms=self._due(escalation, level, alert.due_ms)
                )
            notices += self._save(bumped, "escalated", [escalation.audiences[level]], "policy")
        return notices

    # ----------------------------------------------------------------- helpers

    def _escalation(self, severity: str) -> Escalation:
        return self.policy.get(severity) or self.policy["minor"]

    @staticmethod
    def _action_due(escalation: Escalation, now_ms: int) -> int | None:
        if escalation.action_within_s is None:
            return None
        return now_ms + round(escalation.action_within_s * 1000)

    @staticmethod
    def _due(escalation: Escalation, level: int, since_ms: int) -> int:
        del level  # every step of a severity waits as long
        return since_ms + round(escalation.ack_within_s * 1000)

    def _save(
        self, alert: Alert, event: str, audiences: Sequence[Audience], actor: str
    ) -> list[Notice]:
        self._store(alert)
        self._audit(
            f"alert.{event}",
            alert,
            actor,
            {"deviation": alert.deviation.get("id"), "audiences": [str(a) for a in audiences]},
        )
        return [Notice(event, audience, alert) for audience in audiences]

    def _store(self, alert: Alert) -> None:
        record = msgspec.json.encode(alert).decode()
        self._db.execute(
            "INSERT INTO alerts VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            (alert.id, record),
        )
        # the change log the live page follows: written in the same transaction as the alert,
        # so a change is logged if and only if it was stored
        seq = self._db.execute(
            "INSERT INTO alert_changes (alert_id, record) VALUES (?, ?) RETURNING seq",
            (alert.id, record),
        ).fetchone()[0]
        if seq > CHANGES_KEPT:
            self._db.execute("DELETE FROM alert_changes WHERE seq <= ?", (seq - CHANGES_KEPT,))

    def _audit(self, kind: str, alert: Alert, actor: str, body: dict[str, Any]) -> None:
        if self._trail is not None:
            self._trail.append(kind, alert.id, actor, {"state": str(alert.state), **body})


def _decode(text: str) -> Alert:
    return msgspec.json.decode(text, type=Alert)


def _iso(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
