"""The gateway's MQTT session: TLS, credentials, a persistent session, a last will, and
reconnects with a jittered backoff that say why they failed.

A gateway boots wherever it is, often with no link at all, so the first connection is retried
like every other (unlike :func:`milkguard.mqtt.connect`, which services use to fail fast). The
session is persistent (``clean_session=False``, a stable client id): batches in flight when the
link drops are resent by paho after the reconnect with their message ids, and the outbox keeps
everything else. Only the agent's sender thread publishes; PUBACKs arrive on the network thread
and are handed over through a queue, so the two never wait on each other's locks. The
connection itself (TLS, errors, reconnects) is :class:`milkguard.mqtt.Connection`, as for every
other service.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from edge.config import EdgeConfig, EdgeMqtt
from milkguard.backoff import Backoff
from milkguard.contract.v1 import status_topic
from milkguard.mqtt import BrokerAddress, Connection, SettingNames, Will

#: the gateway's file nests TLS under mqtt.tls; errors name its settings as written there
EDGE_SETTING_NAMES = SettingNames(
    ca="mqtt.tls.ca",
    tls="mqtt.tls (ca, cert, key)",
    client_cert="mqtt.tls.cert/key",
)


def edge_broker_address(mqtt: EdgeMqtt) -> BrokerAddress:
    """The broker address of the gateway's ``mqtt`` section (the secret unwrapped only here)."""
    tls = mqtt.tls
    return BrokerAddress(
        host=mqtt.host,
        port=mqtt.port,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        tls_ca=tls.ca if tls else None,
        tls_cert=tls.cert if tls else None,
        tls_key=tls.key if tls else None,
        keepalive_s=mqtt.keepalive_s,
        names=EDGE_SETTING_NAMES,
    )


class GatewayLink:
    """One persistent MQTT session to the plant's broker, kept up by a thread of its own."""

    def __init__(self, config: EdgeConfig, will: Callable[[], bytes]) -> None:
        self.config = config
        mqtt = config.mqtt
        self.acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.connection = Connection(
            edge_broker_address(mqtt),
            config.client_id,
            clean_session=False,
            on_acknowledged=self.acks.put,
            # the last will is sent with CONNECT: the connection asks for the state of now
            will=Will(status_topic(config.site, config.gateway), will),
            # the agent's window bounds what waits in paho; leave room for status messages
            max_inflight=config.drain.in_flight + 4,
            max_queued=config.drain.in_flight * 2 + 16,
            reconnect=Backoff(mqtt.reconnect_min_s, mqtt.reconnect_max_s),
        )

    @property
    def connected(self) -> threading.Event:
        """Set while the session is up (and paho's resends are queued ahead of anything new)."""
        return self.connection.connected

    @property
    def connects(self) -> int:
        """Accepted connects so far."""
        return self.connection.connects

    @property
    def failed_attempts(self) -> int:
        """Attempts that failed so far."""
        return self.connection.failed_attempts

    @property
    def last_error(self) -> str | None:
        """Why the latest attempt failed, for the person fixing the gateway; None once up."""
        error = self.connection.last_error
        return None if error is None else str(error)

    def start(self) -> None:
        """Start connecting (and keep reconnecting) in the background."""
        self.connection.start(retry_first=True)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a QoS 1 message in paho (sent by the network thread now, or after the
        reconnect); its message id. :class:`PublishRefused` when paho's queue is full."""
        return self.connection.publish(topic, payload, retain=retain)

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and end the thread."""
        self.connection.disconnect()
        self.connection.join(timeout_s=10)
