"""A gateway publishes v1 batches whose sequence numbers grow, and never exceeds its window of
unacknowledged batches."""

from __future__ import annotations

import json

import pytest

from edge.publisher import GatewayPublisher
from milkguard import mqtt as mqtt_connect
from milkguard.contract.v1 import Reading, decode_batch
from tests.conftest import T0
from tests.helpers import TopicRecorder, wait_until
from tests.servers import Mosquitto

pytestmark = pytest.mark.integration


def test_batches_arrive_decodable_with_growing_sequence_numbers(mosquitto: Mosquitto) -> None:
    address = mqtt_connect.BrokerAddress(mosquitto.host, mosquitto.port)
    listener = TopicRecorder(address, "milkguard/v1/gw/#")
    publisher = GatewayPublisher(
        mqtt_connect.connect(address, "gw"), "farm-01", "farm-01-gw", max_in_flight=5
    )
    most_in_flight = 0
    for i in range(200):
        publisher.publish([Reading("tank-1", "milk_temp", 3.5, "degC", T0 + i)])
        most_in_flight = max(most_in_flight, len(publisher.connection.acks))
    assert publisher.drain()

    wait_until(lambda: len(listener.payloads()) == 200, what="200 batches")
    batches = [decode_batch(json.dumps(body)) for body in listener.payloads()]
    seqs = [batch.seq for batch in batches]
    assert seqs == list(range(seqs[0], seqs[0] + 200))
    assert most_in_flight <= 5
    publisher.connection.close()
    listener.close()
