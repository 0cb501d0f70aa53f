"""Fixtures shared by the whole suite: real servers on 127.0.0.1, the demo plan, sample batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.plan import LoadedPlan, load_plan
from stream.settings import demo_plan_path
from tests.servers import (
    Mosquitto,
    Tansu,
    VictoriaMetrics,
    start_mosquitto,
    start_tansu,
    start_victoria_metrics,
    stop,
)

#: 2026-11-22T10:00:00Z, the event time most scenarios start at
T0 = 1_795_341_600_000


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker for one test."""
    broker = start_mosquitto(tmp_path)
    try:
        yield broker
    finally:
        stop(broker.process)


@pytest.fixture
def tansu() -> Iterator[Tansu]:
    """A real Kafka-protocol broker (tansu, in memory) for one test."""
    server = start_tansu()
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A real server speaking the InfluxDB v2 write API, for one test."""
    server = start_victoria_metrics(tmp_path)
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture(scope="session")
def demo_plan() -> LoadedPlan:
    """The demo HACCP plan shipped with the package."""
    return load_plan(demo_plan_path())
