"""Small helpers for integration tests: waiting for a condition, collecting MQTT messages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

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
