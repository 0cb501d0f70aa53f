"""The embedded broker's gatekeeper, as pure logic (amqtt calls it with a session): what it
keeps per client stays bounded whatever client ids a gateway makes up."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from milkguard.amqtt_guard import AmqttGuard, GuardConfig
from milkguard.broker_security import BrokerSecurity, MqttUser, amqtt_config, hash_password


def guard_of(*users: MqttUser) -> AmqttGuard:
    config = amqtt_config(BrokerSecurity(users=list(users)), "127.0.0.1", 1883)
    plugin = config["plugins"]["milkguard.amqtt_guard.AmqttGuard"]
    return AmqttGuard(SimpleNamespace(config=GuardConfig(users=plugin["users"])))


def test_a_gateway_making_up_client_ids_does_not_grow_the_guard() -> None:
    gateway = MqttUser(
        name="gw-farm-01",
        role="gateway",
        site="farm-01",
        gateway="tank-1",
        password_hash=hash_password("pw", iterations=1_000),  # type: ignore[arg-type]
    )
    guard = guard_of(gateway)

    async def connect_many() -> list[bool]:
        return [
            await guard.authenticate(
                session=SimpleNamespace(
                    username="gw-farm-01",
                    password="pw",
                    client_id=f"made-up-{n}",
                    will_flag=False,
                    will_topic=None,
                )
            )
            for n in range(500)
        ]

    assert all(asyncio.run(connect_many()))
    assert len(guard._owners) == 0  # its ids live in its own namespace: nobody to bind them to
