"""The door of the alert API: who may come in, and how much they may bring.

:class:`Gate` is a pure ASGI middleware in front of the FastAPI app. It decides on the request
line and headers alone, before a byte of the body is received:

- a caller locked out for failing to log in is refused (429, ``Retry-After``);
- a request without a known bearer token is refused (401) and counted as a failed login;
- a body announced larger than the limit (``Content-Length``) is refused (413);
- a body sent without a length (chunked) is counted as it streams in and cut at the limit (413).

Only the operators' page (``GET /``, which asks for the token itself) and its own script, style
and uPlot files (:data:`STATIC_FILES`) are served without one; the live event stream
(``/api/events``) is an API call like any other.
The caller's :class:`~alerts.settings.ApiUser` is handed to the app in ``scope["user"]``.

:class:`FailedLogins` is the lockout: per client address, a few wrong tokens are free, then
each one locks the address out for twice as long as the last (2 s, 4 s, ... up to a cap). A
right token from another address is not affected; a right token from the locked address waits
like a wrong one (else guessing would go on). The table of addresses is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from alerts.settings import ApiUser

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the page's own files under /static/ (its script, its styles, the vendored uPlot): no data
STATIC_FILES = ("app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css")

#: paths served without a token (the page asks for it and sends it with every API call)
PUBLIC = frozenset(
    {("GET", "/"), ("HEAD", "/")} | {("GET", f"/static/{name}") for name in STATIC_FILES}
)


@dataclass
class _Address:
    """What one client address has done wrong lately."""

    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class FailedLogins:
    """Failed logins per client address, and the lockouts they earn."""

    def __init__(
        self,
        allowed: int = 5,
        first_lockout_s: float = 2.0,
        max_lockout_s: float = 900.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self.first_lockout_s = first_lockout_s
        self.max_lockout_s = max_lockout_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._seen: OrderedDict[str, _Address] = OrderedDict()
        #: counters: wrong or missing tokens, requests refused while locked, lockouts begun,
        #: addresses forgotten because the table was full
        self.failed = self.refused = self.lockouts = self.forgotten = 0

    def wait_s(self, address: str) -> float:
        """Seconds ``address`` is still locked out for (0: it may try)."""
        seen = self._seen.get(address)
        if seen is None:
            return 0.0
        return max(0.0, seen.locked_until - self._clock())

    def refuse(self) -> None:
        """Count a request refused because its address is locked out."""
        self.refused += 1

    def failure(self, address: str) -> float:
        """Record a failed login; the lockout it earns, in seconds (0: none yet)."""
        now = self._clock()
        self.failed += 1
        seen = self._seen.pop(address, None) or _Address()
        if seen.failures and now - seen.last_failure > self.max_lockout_s:
            seen = _Address()  # quiet for a long while: start afresh
        seen.failures += 1
        seen.last_failure = now
        over = seen.failures - self.allowed
        lockout = 0.0
        if over > 0:
            lockout = min(self.max_lockout_s, self.first_lockout_s * 2 ** min(over - 1, 60))
            seen.locked_until = now + lockout
            self.lockouts += 1
        self._seen[address] = seen  # most recent last: the oldest is forgotten first
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
            self.forgotten += 1
        return lockout

    def success(self, address: str) -> None:
        """A right token: the address's failures are forgiven."""
        self._seen.pop(address, None)


class Gate:
    """Authentication and the body limit, before the app reads anything."""

    def __init__(
        self,
        app: Asgi,
        users: list[ApiUser],
        *,
        max_body_bytes: int = 64 * 1024,
        logins: FailedLogins | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.logins = logins or FailedLogins()
        self._by_digest = {_digest(u.token.get_secret_value()): u for u in users}
        self.too_large = 0  # bodies refused (413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the request through to the app, or answer it here without reading its body."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            await send({"type": "websocket.close", "code": 1008})
            return
        send = _with_safety_headers(send)
        address = (scope.get("client") or ("unknown", 0))[0]
        public = (scope["method"], scope["path"]) in PUBLIC
        if not public:
            wait = self.logins.wait_s(address)
            if wait > 0:
                self.logins.refuse()
                await _answer(
                    send,
                    429,
                    "too many failed logins from this address: try again later",
                    [(b"retry-after", str(math.ceil(wait)).encode())],
                )
                return
        headers = _headers(scope)
        if not public:
            user = self._user(headers.get(b"authorization", b""))
            if user is None:
                await self._failed_login(send, address, scope["path"])
                return
            self.logins.success(address)
            scope["user"] = user
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large(send)
            return
        await self._pass(scope, receive, send)

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app, counting the body as it comes and cutting it at the limit."""
        received = 0
        answered = False

        async def counted() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if not answered:
                        answered = True
                        await self._too_large(send)
                    return {"type": "http.disconnect"}  # the app stops reading; we answered
            return message

        async def unless_answered(message: Message) -> None:
            if not answered:  # else it is the app's reply to a body we cut off: ours went out
                await send(message)

        await self.app(scope, counted, unless_answered)

    def _user(self, header: bytes) -> ApiUser | None:
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _digest(token.strip())
        found = None
        for known, user in self._by_digest.items():  # every one compared: no early exit timing
            if hmac.compare_digest(known, digest):
                found = user
        return found

    async def _failed_login(self, send: Send, address: str, path: str) -> None:
        lockout = self.logins.failure(address)
        context = {"client": address, "path": path, "failed_logins": self.logins.failed}
        if lockout:
            log.warning("alerts.api.locked_out", extra={**context, "lockout_s": lockout})
        else:
            log.warning("alerts.api.login_failed", extra=context)
        await _answer(
            send,
            401,
            "send Authorization: Bearer <token> with a valid token",
            [(b"www-authenticate", b"Bearer")],
        )

    async def _too_large(self, send: Send) -> None:
        self.too_large += 1
        await _answer(send, 413, f"the body is larger than {self.max_body_bytes} bytes", [])


#: On every answer: no framing by another site (a click on Acknowledge in a hidden frame), no
#: content sniffing, no caching of alerts and reports, no Referer with them; and a content
#: security policy under which the page runs only its own script files (no inline script, no
#: other origin), so text that slipped into the page unescaped still could not run.
SAFETY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
)


def _with_safety_headers(send: Send) -> Send:
    """``send``, adding :data:`SAFETY_HEADERS` the app did not set to the response's start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [header for header in SAFETY_HEADERS if header[0] not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (a repeated one: its last value)."""
    return {name.lower(): value for name, value in scope.get("headers", [])}


async def _answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    """A JSON error like FastAPI's, and the connection closed: whatever body the caller is
    still sending is never read."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
