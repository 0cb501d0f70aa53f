"""uvicorn's HTTP/1.1 protocol with a deadline on the request head (slowloris).

uvicorn (h11) waits as long as a client likes for the end of a request's headers: a client
sending one header line a minute holds its connection, and a few thousand such clients hold
every file descriptor, so nobody reaches the API. Here a connection must complete each
request head within :data:`HEAD_DEADLINE_S` of opening (or of its previous response), else it
is closed; a request whose head has arrived is never cut.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: Seconds a client has to send a whole request head (a real client needs milliseconds).
HEAD_DEADLINE_S: Final = 10.0


class HeadDeadlineProtocol(H11Protocol):
    """h11 as uvicorn speaks it, closing a connection whose request head is too slow."""

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request head."""
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        """A new request (a new cycle) stops the clock."""
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:
            self._disarm()

    def on_response_complete(self) -> None:
        """The next request head on a kept-alive connection gets its own deadline."""
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """No clock for a closed connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(HEAD_DEADLINE_S, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        self._head_deadline = None
        in_progress = self.cycle is not None and not self.cycle.response_complete
        if not in_progress and not self.transport.is_closing():
            client = f"{self.client[0]}" if self.client else "unknown"
            log.warning("alerts.api.slow_request_head", extra={"client": client})
            self.transport.close()
