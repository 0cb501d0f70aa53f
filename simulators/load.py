"""Load generation: many gateways' batches, prepared ahead, published at a paced rate.

The generator must not be the bottleneck: payloads are encoded before the clock starts, one MQTT
connection publishes them (QoS 1, a bounded window of unacknowledged messages, as paho stalls
without one), and a pacer sends each second's share on time. If publishing cannot keep up, the
run says by how much it fell behind rather than quietly running slower.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Batch, Reading, batch_topic, encode_batch
from milkguard.errors import ConfigError

T_START = 1_795_341_600_000

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One prepared publish."""

    topic: str
    payload: bytes
    readings: int
    due_s: float  # seconds after the start it is due


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a paced run achieved."""

    messages: int
    readings: int
    elapsed_s: float
    target_per_s: float
    behind_s: float  # the most any message went out after it was due
    unacknowledged: int = 0  # messages the broker never acknowledged

    @property
    def achieved_per_s(self) -> float:
        """Readings per second actually published and acknowledged."""
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def kept_up(self) -> bool:
        """True when the last message went out (and was acknowledged) no later than 5 % of the
        schedule's length, plus 0.1 s, after it was due."""
        scheduled_s = self.readings / self.target_per_s if self.target_per_s > 0 else 0.0
        return not self.unacknowledged and self.behind_s <= 0.05 * scheduled_s + 0.1

    def lines(self) -> list[str]:
        """The figures as printed."""
        if self.unacknowledged:
            verdict = f"FAILED: {self.unacknowledged:,} batches never acknowledged"
        elif self.kept_up:
            verdict = "kept up"
        else:
            verdict = f"FELL BEHIND, by up to {self.behind_s:.1f} s"
        return [
            f"published: {self.messages:,} batches, {self.readings:,} readings "
            f"in {self.elapsed_s:.2f} s",
            f"target: {self.target_per_s:,.0f} readings/s",
            f"achieved: {self.achieved_per_s:,.0f} readings/s ({verdict})",
        ]


def prepare(
    gateways: int,
    channels: int,
    rate_hz: float,
    seconds: float,
    batch_s: float = 1.0,
    *,
    per_site: int = 50,
    start_s: float = 0.0,
    first_seq: int = 1,
) -> list[Message]:
    """``gateways`` gateways of ``channels`` channels sampled at ``rate_hz`` for ``seconds``,
    each sending one batch per ``batch_s``; in the order they are due.

    Gateway ``g`` is at site ``load-{g // per_site}`` and reads asset ``asset-{g}``. Readings
    start ``start_s`` after ``T_START`` and batches are numbered from ``first_seq``, so a second
    run carries on where the first ended; ``due_s`` counts from this run's start."""
    per_batch = round(rate_hz * batch_s)
    if per_batch < 1 or per_batch != rate_hz * batch_s:
        raise ConfigError(
            f"--rate-hz {rate_hz:g} does not give a whole number of samples per {batch_s:g} s "
            "batch; use a rate that does (e.g. 1, 2, 10, 20)"
        )
    if seconds < batch_s:
        raise ConfigError(f"--seconds {seconds:g} is shorter than one {batch_s:g} s batch")
    rng = random.Random(7)
    messages: list[Message] = []
    seq = first_seq
    windows = int(seconds / batch_s)
    for window in range(windows):
        for gateway in range(gateways):
            site, name = f"load-{gateway // per_site}", f"load-gw-{gateway}"
            readings = [
                Reading(
                    f"asset-{gateway}",
                    f"ch-{channel}",
                    round(4.0 + rng.random(), 3),
                    "degC",
                    T_START + round((start_s + window * batch_s + sample / rate_hz) * 1000),
                )
                for sample in range(per_batch)
                for channel in range(channels)
            ]
            batch = Batch(
                v=1,
                site=site,
                gateway=name,
                seq=seq,
                sent_at=T_START + round((start_s + (window + 1) * batch_s) * 1000),
                readings=readings,
            )
            seq += 1
            messages.append(
                Message(
                    batch_topic(site, name),
                    encode_batch(batch),
                    len(readings),
                    (window + 1) * batch_s,
                )
            )
    return messages


def publish_paced(
    connection: mqtt_connect.Connection,
    messages: Sequence[Message],
    *,
    speed: float = 1.0,
    window: int = 100,
    progress: Callable[[int], None] = lambda readings: None,
    published: Callable[[Message, float], None] = lambda message, at: None,
) -> LoadResult:
    """Publish each message when it is due (``speed`` times faster than its schedule); wait for
    every acknowledgement before the clock stops. ``published(message, wall time)`` is told of
    each publish as it is handed to the client."""
    started = time.perf_counter()
    sent = readings = 0
    behind = 0.0
    last_due = 0.0
    warned = False
    for message in messages:
        due = message.due_s / speed
        last_due = due
        wait = due - (time.perf_counter() - started)
        if wait > 0:
            time.sleep(wait)
        behind = max(behind, -wait)
        if wait < -1.0 and not warned:
            warned = True
            log.warning("load.behind", extra={"behind_s": round(-wait, 2), "sent": sent})
        if not connection.acks.wait_below(window, timeout_s=30.0):
            break  # the broker stopped acknowledging: reported below, not waited on forever
        connection.publish(message.topic, message.payload)
        published(message, time.time())
        sent += 1
        readings += message.readings
        progress(message.readings)
    acknowledged = connection.wait_acknowledged(30.0)
    elapsed = time.perf_counter() - started
    behind = max(behind, elapsed - last_due)
    target = readings / last_due if last_due > 0 else 0.0
    unacked = 0 if acknowledged else max(1, len(connection.acks))
    unacked += len(messages) - sent
    return LoadResult(sent, readings, elapsed, target, behind, unacked)
