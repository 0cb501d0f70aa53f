"""The dead-letter store keeps whatever arrived, on SQLite and on a real PostgreSQL 15, even
text PostgreSQL cannot hold as is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.deadletters import DeadLetterStore
from tests.servers import start_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "deadletters.db")
        return
    server = start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


def test_a_topic_with_a_nul_character_is_kept_not_raised(where: str) -> None:
    # the embedded broker (amqtt) delivers a topic with U+0000, which PostgreSQL text refuses
    store = DeadLetterStore(where)
    try:
        store.add("milkguard/v1/deviations/a\x00b", "unsigned", "no\x00pe", b"x\x00", now_ms=1)
        (kept,) = store.all()
    finally:
        store.close()
    assert kept.topic == "milkguard/v1/deviations/a\\x00b"
    assert kept.payload == b"x\x00"
