"""The gateway's MQTT session: TLS, credentials, a persistent session, a last will, and
reconnects with backoff that say why they failed.

A gateway boots wherever it is, often with no link at all, so the first connection is retried
like every other (unlike the stream's :func:`milkguard.mqtt.connect`, which fails fast). The
session is persistent (``clean_session=False``, a stable client id): batches in flight when the
link drops are resent by paho after the reconnect with their message ids, and the outbox keeps
everything else. Only the agent's sender thread publishes; PUBACKs arrive on the network thread
and are handed over through a queue, so the two never wait on each other's locks.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from edge.config import EdgeConfig
from milkguard.contract.v1 import status_topic
from milkguard.mqtt import PublishRefused, only_the_network_thread_writes, paho_module

log = logging.getLogger(__name__)


def explain_connect_error(exc: BaseException, host: str, port: int) -> str:
    """What a failed connection attempt means for the person fixing the gateway."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker at {where} presented a certificate that mqtt.tls.ca does not "
            f"trust ({exc.verify_message}); check the CA file and the broker's host name"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed ({exc.reason or exc}); check mqtt.tls "
            "(ca, cert, key) and that this port speaks TLS"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {where}; is the broker running, is the port right?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve broker host {host!r} ({exc.strerror}); check mqtt.host and DNS"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from {where} (timed out); the link may be down"
    return f"cannot connect to {where}: {exc}"


class GatewayLink:
    """One persistent MQTT session to the plant's broker, kept up by a thread of its own."""

    def __init__(self, config: EdgeConfig, will: Callable[[], bytes]) -> None:
        paho = paho_module()
        self.paho_module = paho
        self.config = config
        mqtt = config.mqtt
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        # the agent's window bounds what waits in paho; leave room for status messages
        client.max_inflight_messages_set(config.drain.in_flight + 4)
        client.max_queued_messages_set(config.drain.in_flight * 2 + 16)
        self._will = will
        self._status_topic = status_topic(config.site, config.gateway)
        if mqtt.username is not None:
            password = mqtt.password.get_secret_value() if mqtt.password else None
            client.username_pw_set(mqtt.username, password)
        if mqtt.tls is not None:
            client.tls_set(
                ca_certs=str(mqtt.tls.ca),
                certfile=str(mqtt.tls.cert) if mqtt.tls.cert else None,
                keyfile=str(mqtt.tls.key) if mqtt.tls.key else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = lambda _c, _u, mid, _r, _p: self.acks.put(mid)
        only_the_network_thread_writes(client)
        self.client = client
        self.acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.connects = 0
        self.failed_attempts = 0
        self._stopping = threading.Event()
        self._accepted = False
        self._refused = False
        self._thread = threading.Thread(target=self._run, name="edge-mqtt", daemon=True)

    def start(self) -> None:
        """Start connecting (and keep reconnecting) in the background."""
        self._thread.start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 message in paho (sent by the network thread now, or after the
        reconnect); its message id. :class:`PublishRefused` when paho's queue is full."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        # NO_CONN and CONN_LOST leave the message queued for the reconnect: not a refusal
        if info.rc == self.paho_module.MQTT_ERR_QUEUE_SIZE:
            raise PublishRefused(
                f"MQTT client {self.config.client_id!r} could not queue a message for "
                f"{topic!r}: {self.paho_module.error_string(info.rc)}"
            )
        return int(info.mid)

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and end the thread."""
        self._stopping.set()
        self.client.disconnect()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------------------ thread

    def _run(self) -> None:
        mqtt = self.config.mqtt
        delay = mqtt.reconnect_min_s
        first = True
        while not self._stopping.is_set():
            self._accepted = False
            self._refused = False
            # the last will is sent with CONNECT: give it the state of now, not of the start
            self.client.will_set(self._status_topic, self._will(), qos=1, retain=True)
            try:
                if first:
                    first = False  # connect() keeps the address for every reconnect()
                    self.client.connect(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s)
                else:
                    self.client.reconnect()
            except (OSError, ValueError) as exc:
                self._failed(explain_connect_error(exc, mqtt.host, mqtt.port))
            else:
                rc = self.paho_module.MQTT_ERR_SUCCESS
                while rc == self.paho_module.MQTT_ERR_SUCCESS:
                    rc = self.client.loop(timeout=0.5)
                    # only now: the loop that handled CONNACK has also queued paho's resends of
                    # the batches in flight, so no newer batch can be queued ahead of them
                    if self._accepted and not self.connected.is_set() and rc == 0:
                        self.connected.set()
                self.connected.clear()
                if self._accepted:
                    delay = mqtt.reconnect_min_s  # a session that worked: back off afresh
                elif not self._stopping.is_set() and not self._refused:
                    self._failed(
                        f"the broker at {mqtt.host}:{mqtt.port} closed the connection before "
                        "accepting it; check mqtt.tls.cert/key if it requires client certificates"
                    )
            if self._stopping.wait(delay):
                return
            if not self._accepted:
                delay = min(delay * 2, mqtt.reconnect_max_s)

    def _failed(self, why: str) -> None:
        self.failed_attempts += 1
        if why != self.last_error:
            log.error("edge.mqtt_connect_failed", extra={"reason": why})
        else:
            log.debug("edge.mqtt_connect_failed", extra={"reason": why})
        self.last_error = why

    def _on_connect(
        self, client: Any, userdata: object, flags: Any, reason: Any, props: object
    ) -> None:
        if reason.is_failure:
            self._refused = True
            self._failed(
                f"the broker refused client {self.config.client_id!r}: {reason}; check "
                "mqtt.username/mqtt.password and the broker's ACL for this gateway's topics"
            )
            return
        self._accepted = True
        self.connects += 1
        if self.last_error is not None:
            log.info("edge.mqtt_reconnected", extra={"after_failures": self.failed_attempts})
        self.last_error = None
        log.info(
            "edge.mqtt_connected",
            extra={"client_id": self.config.client_id, "session_present": flags.session_present},
        )

    def _on_disconnect(
        self, client: Any, userdata: object, flags: object, reason: Any, props: object
    ) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        if was_up and reason.is_failure and not self._stopping.is_set():
            log.warning("edge.mqtt_link_lost", extra={"reason": str(reason)})
