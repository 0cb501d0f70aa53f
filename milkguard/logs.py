"""Structured logs: one event per line, with its context as key=value pairs or as JSON.

Code logs an event name and its context: ``log.warning("payload.rejected", extra={"topic": t})``.

Secrets never reach a log line: :func:`register_secrets` is handed the settings once they are
loaded and remembers every secret value in them (passwords, tokens, database and webhook URLs,
and the parts of those URLs that carry credentials); :class:`SecretFilter`, on the handler
:func:`configure` installs, replaces each of them with ``***`` anywhere in a record: its
message, its context, its exception. :func:`mask_url` shows a URL without its credentials.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is context.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``2026-11-22T10:00:00.123Z WARNING stream.ingest payload.rejected topic=... reason=...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record on one line."""
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        for key, value in _context(record).items():
            text = str(value)
            # quoted (escaped) too when it holds a line break or a control character: user
            # names, topics and paths come from the network and must not forge a log line
            if not text or any(c in text for c in ' "=') or not text.isprintable():
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:  # formatted (and masked) by SecretFilter
            line += "\n" + record.exc_text
        return mask(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON object."""
        data: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(_context(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted (and masked) by SecretFilter
            data["exception"] = record.exc_text
        return mask(json.dumps(data, default=str, ensure_ascii=False))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, so a live terminal view that redirects
    it (rich's Live) prints log lines above the view instead of through it."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always the current sys.stderr


def configure(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send MilkGuard's logs to stderr, one event per line."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # amqtt and paho narrate every packet at INFO; keep their warnings only
    for noisy in ("amqtt", "transitions", "paho"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- secrets ---------------------------------------------------------------------------------

MASK = "***"
#: shorter values are not masked: masking "a" or "db" everywhere would garble every line, and
#: no credential worth the name is that short
_MIN_SECRET = 4
#: a URL path shorter than this ("/hook", "/alerts") says where, not who: it is not masked
_MIN_SECRET_PATH = 8
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
#: longest first, so that a secret containing another is masked whole
_ordered: list[str] = []


def mask_url(url: str, *, hide_path: bool = False) -> str:
    """``url`` as it may be shown: no user or password, no query or fragment, and with
    ``hide_path`` no path (a webhook's path is often its credential, as in Slack's)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK  # not a URL we can take apart: show none of it
    if not parts.scheme or not host:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{MASK}@" if parts.username or parts.password else ""
    netloc += host + (f":{port}" if port is not None else "")
    path = parts.path
    if hide_path and path not in ("", "/"):
        path = f"/{MASK}"
    query = MASK if parts.query else ""
    return SplitResult(parts.scheme, netloc, path, query, MASK if parts.fragment else "").geturl()


def register_secrets(*sources: object) -> None:
    """Remember every secret in ``sources`` (settings objects, or plain strings) so that no log
    line shows it. Pydantic models are walked: every ``SecretStr`` (and ``Secret``) value counts,
    and when one is a URL, so do its password and query (an error may quote only those), and
    its path when the secret says its path is one (``path_is_secret``, as webhook URLs do)."""
    found: list[str] = []
    for source in sources:
        found.extend(_secret_values(source, depth=0))
    with _secrets_lock:
        _secrets.update(value for value in found if len(value) >= _MIN_SECRET)
        _ordered[:] = sorted(_secrets, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in tuple(_ordered):  # a copy: another thread may be registering
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """Masks the registered secrets anywhere in a record: message, arguments, context (nested
    too), exception and stack. Installed on the handler, so it sees every logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        if not _ordered:
            return True
        record.msg, record.args = mask(record.getMessage()), ()
        for key, value in _context(record).items():
            record.__dict__[key] = _masked(value, depth=0)
        if record.exc_info:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def _masked(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return mask(value)
    if depth > 10:  # a pathological nesting is shown as masked text, not walked forever
        return mask(str(value))
    if isinstance(value, dict):
        return {_masked(k, depth + 1): _masked(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_masked(item, depth + 1) for item in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = str(value)
    shown = mask(text)
    return shown if shown != text else value


def _secret_values(source: object, depth: int) -> Iterable[str]:
    if depth > 20 or source is None:
        return
    if isinstance(source, str):
        if depth == 0:  # a string handed in is a secret; a model's plain string fields are not
            yield from _with_url_parts(source)
        return
    get_secret = getattr(source, "get_secret_value", None)
    if callable(get_secret):
        value = get_secret()
        if isinstance(value, str):
            yield from _with_url_parts(value, getattr(source, "path_is_secret", False))
        return
    if isinstance(source, dict):
        for item in source.values():
            yield from _secret_values(item, depth + 1)
        return
    if isinstance(source, (list, tuple)):
        for item in source:
            yield from _secret_values(item, depth + 1)
        return
    fields = getattr(type(source), "model_fields", None)  # a pydantic model: walk its fields
    if isinstance(fields, dict):
        for name in fields:
            yield from _secret_values(getattr(source, name, None), depth + 1)


def _with_url_parts(value: str, path_is_secret: bool = False) -> Iterable[str]:
    yield value
    if "://" not in value:
        return
    userinfo, at, _ = value.split("://", 1)[1].partition("@")
    if at and ":" in userinfo:  # even when the URL is too malformed to parse, as errors quote it
        yield userinfo.split(":", 1)[1]
    try:
        parts = urlsplit(value)
        password, username = parts.password, parts.username
    except ValueError:
        return
    for part in (password, parts.query, parts.fragment):
        if part:
            yield part
            yield unquote(part)  # a driver's error may quote the password decoded
    if username and password:  # as an HTTP Basic header, quoted in a client's exception
        basic = f"{unquote(username)}:{unquote(password)}".encode()
        yield base64.b64encode(basic).decode()
    for _, given in parse_qsl(parts.query):  # ?token=VALUE: an error may quote VALUE alone
        yield given
    if username and password is None:
        yield username  # a token passed as the user part (https://TOKEN@host/)
    if path_is_secret and len(parts.path) > _MIN_SECRET_PATH:
        yield parts.path
        yield parts.path.lstrip("/")
