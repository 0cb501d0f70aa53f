"""Live updates of the operators' page: the alert store's changes as server-sent events.

``GET /api/events`` (behind the same bearer-token gate as every API call) streams
``text/event-stream``. Each alert change is one ``alert`` event whose ``id`` is the change's
number in the store's change log (:meth:`alerts.lifecycle.AlertBook.changes_after`), written in
the same transaction as the alert; the data is the alert after the change, only for callers
who may see its site. A client that reconnects sends ``Last-Event-ID`` and gets what it missed
from the log; one that sends none, or one further behind than the log keeps, or ahead of it (a
store restored from a copy), first gets a ``resync`` event and reloads the list. ``devices``
events (no id) say the gateways changed, at most once per :data:`DEVICES_EVERY_S`.

The hub polls the change log (one query per :data:`POLL_S` whatever the number of clients), so
changes made by another node on a shared PostgreSQL reach this node's clients too. Each client
has a bounded queue: a client too slow to take its events is dropped and counted, and
reconnects from its last event id; nothing waits on it. At most ``max_clients`` streams are
open at once, ``max_per_user`` of one user (503 beyond). A comment line every
``heartbeat_s`` keeps proxies from closing an idle stream and finds dead clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from alerts.lifecycle import Alert, AlertBook, Change
from alerts.settings import ApiUser

log = logging.getLogger(__name__)

POLL_S: Final = 0.5
DEVICES_EVERY_S: Final = 2.0
#: a client more than this many changes behind reloads the list instead of replaying them
REPLAY_MAX: Final = 1000


def alert_json(alert: Alert) -> dict[str, Any]:
    """An alert as the API and the events show it."""
    data = asdict(alert)
    data["state"] = str(alert.state)
    return data


def sse(event: str, data: object, event_id: int | None = None) -> bytes:
    """One server-sent event (JSON data on one line: it holds no line breaks)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class _Client:
    """One open event stream: its user and its bounded queue."""

    user: ApiUser
    queue: asyncio.Queue[tuple[int | None, bytes]]
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class LiveHub:
    """The change log polled once, fanned out to every open stream."""

    def __init__(
        self,
        book: AlertBook,
        *,
        devices_version: Callable[[], int] | None = None,
        queue_size: int = 256,
        max_clients: int = 100,
        max_per_user: int = 10,
        heartbeat_s: float = 15.0,
        poll_s: float = POLL_S,
    ) -> None:
        self.book = book
        self.devices_version = devices_version
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.max_per_user = max_per_user
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self._clients: set[_Client] = set()
        self._seen = 0
        self._closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: counters: streams opened, refused (too many), dropped (too slow); events sent
        self.opened = self.refused = self.dropped_slow = self.sent = 0

    @property
    def clients(self) -> int:
        """Streams open now."""
        return len(self._clients)

    async def run(self) -> None:
        """Poll the change log and fan out, until :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        self._seen = (await asyncio.to_thread(self.book.change_span))[1]
        devices_seen = self.devices_version() if self.devices_version else 0
        devices_told = 0.0
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.poll_s)
            if self._closed.is_set():
                break
            try:
                changes = await asyncio.to_thread(self.book.changes_after, self._seen)
            except Exception:  # the store is shared with the service loop; try again next poll
                log.exception("alerts.live.poll_failed")
                continue
            for change in changes:
                self._seen = change.seq
                self._fan_out(change)
            now = self._loop.time()
            if self.devices_version is not None and now - devices_told >= DEVICES_EVERY_S:
                version = self.devices_version()
                if version != devices_seen:
                    devices_seen, devices_told = version, now
                    for client in list(self._clients):
                        self._offer(client, None, sse("devices", {"version": version}))

    def close(self) -> None:
        """End every stream and the poll (from any thread): the server can then stop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._closed.set)
        else:
            self._closed.set()

    def _fan_out(self, change: Change) -> None:
        event = sse("alert", alert_json(change.alert), change.seq)
        for client in list(self._clients):
            if client.user.sees(change.alert.site):
                self._offer(client, change.seq, event)

    def _offer(self, client: _Client, seq: int | None, event: bytes) -> None:
        try:
            client.queue.put_nowait((seq, event))
        except asyncio.QueueFull:
            self._clients.discard(client)
            client.dropped.set()
            self.dropped_slow += 1
            log.warning(
                "alerts.live.slow_client_dropped",
                extra={"user": client.user.name, "dropped_slow": self.dropped_slow},
            )

    def admit(self, user: ApiUser) -> _Client | None:
        """A new stream's place, or None when ``max_clients`` are open, or ``max_per_user`` of
        this user's (one user's tabs cannot take every place); counted."""
        mine = sum(1 for client in self._clients if client.user.name == user.name)
        if len(self._clients) >= self.max_clients or mine >= self.max_per_user:
            self.refused += 1
            log.warning("alerts.live.too_many_clients", extra={"user": user.name})
            return None
        client = _Client(user, asyncio.Queue(self.queue_size))
        self._clients.add(client)  # before the backlog is read: no change falls between
        self.opened += 1
        return client

    async def stream(self, client: _Client, last_event_id: int | None) -> AsyncIterator[bytes]:
        """The events of one admitted client: what it missed, then live ones."""
        try:
            missed, sent_upto = await self._catch_up(client, last_event_id)
            for chunk in missed:
                self.sent += 1
                yield chunk
            while not (self._closed.is_set() or client.dropped.is_set()):
                try:
                    seq, event = await asyncio.wait_for(client.queue.get(), self.heartbeat_s)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if seq is not None and seq <= sent_upto:
                    continue  # read from the log already
                self.sent += 1
                yield event
        finally:
            self._clients.discard(client)

    async def _catch_up(
        self, client: _Client, last_event_id: int | None
    ) -> tuple[list[bytes], int]:
        """The events a (re)connecting client missed, and the last change number they cover."""
        first, last = await asyncio.to_thread(self.book.change_span)
        chunks: list[bytes] = []
        behind = last_event_id is not None and last - last_event_id > REPLAY_MAX
        pruned = last_event_id is not None and first > 0 and last_event_id < first - 1
        if last_event_id is None or last_event_id > last or behind or pruned:
            chunks.append(sse("resync", {"head": last}, last))
        else:
            after = last_event_id
            while after < last:
                changes = await asyncio.to_thread(self.book.changes_after, after)
                if not changes:
                    break
                for change in changes:
                    if change.seq > last:
                        break
                    if client.user.sees(change.alert.site):
                        chunks.append(sse("alert", alert_json(change.alert), change.seq))
                after = changes[-1].seq
        return chunks, last
