"""The bounded hand-off between paho's thread and the engine thread (stream.mqtt_io.Handoff)."""

from __future__ import annotations

import threading

from stream.mqtt_io import Handoff, Message


def _message(n: int) -> Message:
    return Message(f"t/{n}", b"", n, n + 1)


def test_take_returns_everything_waiting_in_arrival_order_up_to_the_limit() -> None:
    handoff = Handoff(10)
    for n in range(5):
        handoff.put(_message(n))
    assert [m.received_ms for m in handoff.take(3, 0)] == [0, 1, 2]
    assert [m.received_ms for m in handoff.take(10, 0)] == [3, 4]
    assert len(handoff) == 0


def test_take_from_an_empty_queue_waits_then_returns_nothing() -> None:
    assert Handoff(10).take(10, 0.01) == []


def test_a_waiting_taker_wakes_when_a_message_arrives() -> None:
    handoff = Handoff(10)
    taken: list[Message] = []
    taker = threading.Thread(target=lambda: taken.extend(handoff.take(10, 5.0)))
    taker.start()
    handoff.put(_message(7))
    taker.join(5.0)
    assert [m.received_ms for m in taken] == [7]


def test_a_full_queue_holds_the_producer_until_the_taker_makes_room() -> None:
    handoff = Handoff(3)
    produced = threading.Event()

    def produce() -> None:
        for n in range(6):
            handoff.put(_message(n))
        produced.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not produced.wait(0.1)  # blocked at the fourth: nothing is dropped, nothing grows
    assert len(handoff) == 3
    taken: list[Message] = []
    while len(taken) < 6:
        taken.extend(handoff.take(2, 1.0))
    producer.join(5.0)
    assert produced.is_set()
    assert [m.received_ms for m in taken] == list(range(6))
