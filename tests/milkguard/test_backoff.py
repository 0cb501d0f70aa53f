"""The one backoff: exponential, capped, jittered, never below its minimum, repeatable with a
seeded generator, and different from one client to the next."""

from __future__ import annotations

import random

import pytest

from milkguard.backoff import Backoff, Jitter


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next() for _ in range(count)]


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_every_delay_is_between_the_minimum_and_the_cap(jitter: Jitter) -> None:
    backoff = Backoff(0.5, 30.0, jitter=jitter, rng=random.Random(7))

    drawn = delays(backoff, 2_000)

    assert min(drawn) >= 0.5
    assert max(drawn) <= 30.0
    assert max(drawn) > 25.0  # the cap is reached, not just respected


def test_full_jitter_draws_up_to_the_doubled_exponential_ceiling() -> None:
    for attempt in range(1, 8):
        drawn = [Backoff(1.0, 60.0, rng=random.Random(seed)).delay(attempt) for seed in range(400)]
        assert min(drawn) >= 1.0
        assert max(drawn) <= min(60.0, 2.0**attempt)
        assert max(drawn) > 0.9 * min(60.0, 2.0**attempt)  # the whole range is used


def test_equal_jitter_is_never_earlier_than_the_plain_schedule() -> None:
    backoff = Backoff(2.0, 300.0, jitter="equal", rng=random.Random(3))
    for attempt in range(1, 12):
        plain = min(300.0, 2.0 * 2 ** (attempt - 1))
        drawn = [backoff.delay(attempt) for _ in range(200)]
        assert min(drawn) >= plain
        assert max(drawn) <= min(300.0, 2 * plain)


def test_the_first_retry_is_already_spread() -> None:
    # a fleet disconnected at one instant must not come back at one instant
    firsts = {round(Backoff(1.0, 30.0).next(), 6) for _ in range(50)}

    assert len(firsts) > 40
    assert all(1.0 <= first <= 2.0 for first in firsts)


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_the_same_seed_gives_the_same_delays(jitter: Jitter) -> None:
    one = delays(Backoff(1.0, 60.0, jitter=jitter, rng=random.Random(42)), 20)
    two = delays(Backoff(1.0, 60.0, jitter=jitter, rng=random.Random(42)), 20)
    other = delays(Backoff(1.0, 60.0, jitter=jitter, rng=random.Random(43)), 20)

    assert one == two
    assert one != other


def test_reset_starts_again_from_the_minimum() -> None:
    backoff = Backoff(1.0, 60.0, jitter="equal", rng=random.Random(1))
    delays(backoff, 10)
    assert backoff.attempts == 10

    backoff.reset()

    assert backoff.attempts == 0
    assert 1.0 <= backoff.next() <= 2.0


def test_reset_forgets_the_previous_decorrelated_delay() -> None:
    backoff = Backoff(1.0, 60.0, jitter="decorrelated", rng=random.Random(5))
    delays(backoff, 30)

    backoff.reset()

    assert 1.0 <= backoff.next() <= 3.0


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    backoff = Backoff(1.0, 60.0, jitter="equal", rng=random.Random(0))

    assert backoff.delay(10_000) == 60.0


def test_decorrelated_jitter_has_no_delay_by_count() -> None:
    with pytest.raises(ValueError, match="next"):
        Backoff(1.0, 60.0, jitter="decorrelated").delay(3)


@pytest.mark.parametrize(("first", "cap"), [(0.0, 10.0), (-1.0, 10.0), (5.0, 1.0)])
def test_an_unusable_range_is_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first, cap)
