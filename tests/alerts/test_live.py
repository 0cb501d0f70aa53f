"""Live updates (``GET /api/events``): the bearer token as for every call, each change to the
users of its site only, a reconnect with ``Last-Event-ID`` given what it missed, a resync when
that cannot be, and a client too slow to take its events dropped and counted."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.api import create_app
from alerts.audit import AuditTrail
from alerts.lifecycle import AlertBook
from alerts.live import LiveHub
from alerts.settings import ApiUser
from alerts.signing import Signer
from tests.alerts.records import change, dev
from tests.alerts.webapp import TOKENS, serving
from tests.helpers import wait_until

T = 1_795_341_600_000
USERS = [
    ApiUser(name="li", role="operator", token=TOKENS["li"], sites=["plant-01"]),
    ApiUser(name="zhao", role="operator", token=TOKENS["zhao"], sites=["plant-02"]),
]


@dataclass
class Api:
    url: str
    book: AlertBook
    hub: LiveHub


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    trail = AuditTrail(tmp_path / "audit.db", Signer.load_or_create(tmp_path / "key.pem"))
    book = AlertBook(tmp_path / "alerts.db", trail=trail)
    hub = LiveHub(book, poll_s=0.05, heartbeat_s=0.3)
    try:
        with serving(create_app(USERS, book, trail, tmp_path, hub=hub), hub) as url:
            yield Api(url, book, hub)
    finally:
        book.close()
        trail.close()


def opened_at(site: str, n: int) -> dict[str, Any]:
    """Deviation ``n`` opening at ``site`` (its own asset, so its own alert)."""
    return {**change("opened", dev(n)), "site": site, "asset": f"tank-{n}"}


class Stream:
    """An event stream read in a thread: every event as (id, type, data)."""

    def __init__(self, url: str, token: str, last_event_id: int | None = None) -> None:
        self.events: list[tuple[int | None, str, Any]] = []
        self.status: int | None = None
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()
        wait_until(lambda: self.status is not None, 10, "the stream's answer")

    def _read(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", f"{url}/api/events", headers=headers, timeout=10) as response:
            self.status = response.status_code
            event_id, kind, data = None, "message", ""
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    self.events.append((event_id, kind, json.loads(data)))
                    event_id, kind, data = None, "message", ""

    def alerts(self) -> list[str]:
        return [data["id"] for _, kind, data in self.events if kind == "alert"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, ""),
        ({"Authorization": "Bearer guess-0123456789abcdefghij"}, ""),
        ({}, f"?token={TOKENS['li']}"),  # never in the URL: URLs end up in logs
        ({}, f"?access_token={TOKENS['li']}"),
    ],
)
def test_the_event_stream_needs_the_bearer_token_like_every_call(
    api: Api, headers: dict[str, str], query: str
) -> None:
    answer = httpx.get(f"{api.url}/api/events{query}", headers=headers, timeout=5)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert api.hub.opened == 0


def test_a_change_reaches_only_the_users_of_its_site(api: Api) -> None:
    li, zhao = Stream(api.url, TOKENS["li"]), Stream(api.url, TOKENS["zhao"])
    try:
        api.book.on_deviation(opened_at("plant-01", 1), T)
        api.book.on_deviation(opened_at("plant-02", 2), T)
        wait_until(lambda: li.alerts() == ["plant-01/tank-1/pmo-htst.temperature"], 10, "li's")
        wait_until(lambda: zhao.alerts() == ["plant-02/tank-2/pmo-htst.temperature"], 10, "zhao's")
    finally:
        li.close()
        zhao.close()
    # a fresh stream begins with a resync (load the list), then the changes with their numbers
    assert li.events[0][1] == "resync"
    assert [e[0] for e in li.events if e[1] == "alert"] == [1]
    assert [e[0] for e in zhao.events if e[1] == "alert"] == [2]


def test_a_client_reconnecting_with_its_last_event_id_gets_what_it_missed(api: Api) -> None:
    for n in range(1, 5):  # changes 1..4 (while the client was away)
        api.book.on_deviation(opened_at("plant-01", n), T)
    api.book.acknowledge("plant-01/tank-2/pmo-htst.temperature", "li", T + 1)  # change 5
    again = Stream(api.url, TOKENS["li"], last_event_id=2)
    try:
        wait_until(lambda: len(again.alerts()) == 3, 10, "the missed changes")
        api.book.on_deviation(opened_at("plant-01", 6), T)  # change 6, live
        wait_until(lambda: len(again.alerts()) == 4, 10, "the live change")
    finally:
        again.close()
    assert [(e[0], e[2]["id"].split("/")[1], e[2]["state"]) for e in again.events] == [
        (3, "tank-3", "raised"),
        (4, "tank-4", "raised"),
        (5, "tank-2", "acknowledged"),
        (6, "tank-6", "raised"),
    ]


def test_a_client_ahead_of_the_log_resyncs(api: Api) -> None:
    api.book.on_deviation(opened_at("plant-01", 1), T)
    ahead = Stream(api.url, TOKENS["li"], last_event_id=999)  # a store restored from a copy
    try:
        wait_until(lambda: bool(ahead.events), 10, "the first event")
    finally:
        ahead.close()
    assert ahead.events[0] == (1, "resync", {"head": 1})


def test_the_change_log_keeps_a_bounded_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("alerts.lifecycle.CHANGES_KEPT", 10)
    book = AlertBook(tmp_path / "alerts.db")
    try:
        for n in range(25):  # each a new deviation of the same open alert: a change each
            book.on_deviation({**opened_at("plant-01", n), "asset": "tank-1"}, T + n)
        span = book.change_span()
        kept = [c.seq for c in book.changes_after(0)]
    finally:
        book.close()
    assert span == (16, 25)
    assert kept == list(range(16, 26))


def test_a_client_too_slow_for_its_events_is_dropped_and_counted(tmp_path: Path) -> None:
    book = AlertBook(tmp_path / "alerts.db")
    hub = LiveHub(book, queue_size=2, poll_s=0.02)

    async def scenario() -> tuple[bool, int, list[bytes]]:
        poll = asyncio.create_task(hub.run())
        await asyncio.sleep(0.1)
        slow = hub.admit(USERS[0])
        assert slow is not None
        for n in range(1, 6):  # five changes for a queue of two, nobody reading
            await asyncio.to_thread(book.on_deviation, opened_at("plant-01", n), T)
        deadline = time.monotonic() + 10
        while not slow.dropped.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # its stream ends (after what it had queued and the log's catch-up) instead of waiting
        chunks = [chunk async for chunk in hub.stream(slow, 0)]
        hub.close()
        await poll
        return slow.dropped.is_set(), hub.clients, chunks

    try:
        dropped, clients, chunks = asyncio.run(scenario())
    finally:
        book.close()
    assert dropped
    assert hub.dropped_slow == 1
    assert clients == 0
    assert len(chunks) == 5  # reconnecting from 0, it got every change from the log


def test_changes_made_by_another_node_reach_this_nodes_streams(tmp_path: Path) -> None:
    other_node, this_node = AlertBook(tmp_path / "alerts.db"), AlertBook(tmp_path / "alerts.db")
    hub = LiveHub(this_node, poll_s=0.02)

    async def scenario() -> bytes:
        poll = asyncio.create_task(hub.run())
        await asyncio.sleep(0.1)
        client = hub.admit(USERS[0])
        assert client is not None
        await asyncio.to_thread(other_node.on_deviation, opened_at("plant-01", 1), T)
        _, event = await asyncio.wait_for(client.queue.get(), 10)
        hub.close()
        await poll
        return event

    try:
        event = asyncio.run(scenario())
    finally:
        other_node.close()
        this_node.close()
    assert event.startswith(b"id: 1\nevent: alert\ndata: ")
    assert b'"site":"plant-01"' in event


def test_more_streams_than_allowed_are_refused(tmp_path: Path) -> None:
    book = AlertBook(tmp_path / "alerts.db")
    hub = LiveHub(book, max_clients=3, max_per_user=2)
    try:
        assert hub.admit(USERS[0]) is not None
        assert hub.admit(USERS[0]) is not None
        assert hub.admit(USERS[0]) is None  # li's third tab
        assert hub.admit(USERS[1]) is not None
        assert hub.admit(USERS[1]) is None  # the hub is full
    finally:
        book.close()
    assert hub.refused == 2
