"""Small helpers for integration tests: waiting for a condition, collecting MQTT messages."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from milkguard import mqtt as mqtt_connect


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll until ``condition()`` holds; fail with ``what`` if it does not in time.

    A wait for an outcome, not a timing assertion: the timeout only bounds a broken run.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")


class TopicRecorder:
    """Subscribes to a topic filter and keeps every JSON message that arrives."""

    def __init__(self, address: mqtt_connect.BrokerAddress, topic_filter: str) -> None:
        self.messages: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()

        def subscribe(client: Any) -> None:
            client.on_subscribe = lambda *args: subscribed.set()
            client.subscribe(topic_filter, qos=1)

        self.connection = mqtt_connect.connect(
            address,
            f"recorder-{id(self)}",
            on_message=self._on_message,
            on_connect_extra=subscribe,
        )
        assert subscribed.wait(5), f"no SUBACK for {topic_filter}"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def payloads(self) -> list[Any]:
        """The JSON bodies received so far."""
        with self._lock:
            return [body for _, body in self.messages]

    def close(self) -> None:
        """Disconnect."""
        self.connection.close()


class LinkCutter:
    """A TCP relay on 127.0.0.1 between a client and a server, whose link can be cut.

    ``cut()`` drops every connection through it and refuses new ones (as a cellular link that
    dies does, seen from the gateway: resets and failed connects) until ``restore()``.
    """

    def __init__(self, target_port: int) -> None:
        import socket  # noqa: PLC0415 - only the relay needs it

        self._socket_module = socket
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._closed = False
        self._black = False
        threading.Thread(target=self._accept, name="link-cutter", daemon=True).start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._up.clear()
        with self._lock:
            for sock in self._open:
                self._shut(sock)
            self._open.clear()

    def blackhole(self) -> None:
        """Keep connections open but deliver nothing, either way (a link that silently dies:
        the client goes on publishing until its keepalive notices)."""
        self._black = True

    def restore(self) -> None:
        """Accept and relay connections again."""
        self._black = False
        self._up.set()

    def close(self) -> None:
        """Stop relaying for good."""
        self._closed = True
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._up.is_set():
                self._shut(client)
                continue
            try:
                server = self._socket_module.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                self._shut(client)
                continue
            with self._lock:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                if not self._black:
                    sink.sendall(data)
        except OSError:
            pass
        self._shut(source)
        self._shut(sink)

    def _shut(self, sock: Any) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(self._socket_module.SHUT_RDWR)
        sock.close()


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics by name and labels, e.g. ``milkguard_deviations{change=opened}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
