"""Received topics: a message whose topic bytes are not UTF-8 cannot stop a service."""

from __future__ import annotations

import paho.mqtt.client as paho

from milkguard.mqtt import topic_of


def test_a_topic_that_is_not_utf8_is_escaped_not_raised() -> None:
    message = paho.MQTTMessage(topic=b"milkguard/v1/gw/\xff/gw-1/batch")

    assert topic_of(message) == "milkguard/v1/gw/\\xff/gw-1/batch"


def test_a_utf8_topic_is_read_as_it_is() -> None:
    message = paho.MQTTMessage(topic="milkguard/v1/gw/farm-01/农场/batch".encode())

    assert topic_of(message) == "milkguard/v1/gw/farm-01/农场/batch"
