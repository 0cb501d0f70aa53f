"""One backoff for every retry in MilkGuard: exponential, capped, and jittered.

When a broker restarts, every gateway and service loses its connection in the same instant. If
each then waits 1, 2, 4 ... seconds, the whole fleet knocks at the same instants and the broker
takes every reconnect, every resent batch and every subscription at once, again and again. Each
client draws its own delay instead, as in "Exponential Backoff And Jitter" (Marc Brooker, AWS
Architecture Blog, 2015, https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/),
with one difference: a delay is never shorter than ``first_s``, the minimum the settings promise.

With ``e(n) = min(cap_s, first_s * 2 ** (n - 1))``, the plain exponential schedule, the n-th
delay is

- ``full`` (the default): uniform in ``[first_s, e(n + 1)]``, the article's "full jitter" with a
  floor. The spread is widest, and the first retry is already jittered (``[first_s, 2 first_s]``).
- ``equal``: uniform in ``[e(n), e(n + 1)]``, the article's "equal jitter" over a doubled ceiling.
  Never earlier than the plain schedule, and a function of the attempt count alone: for retries
  whose count is stored (the alert outbox keeps it in SQLite, not a ``Backoff``).
- ``decorrelated``: ``min(cap_s, uniform(first_s, 3 * previous))``, the article's "decorrelated
  jitter"; each delay depends on the one before, so it needs the object's state.

Tests inject a seeded :class:`random.Random`; services leave ``rng`` out, so every client (and
every process) draws from its own generator.
"""

from __future__ import annotations

import random
from typing import Literal

Jitter = Literal["full", "equal", "decorrelated"]

# 2 ** 64 seconds is beyond any cap; a larger exponent would overflow the float conversion
_MAX_DOUBLINGS = 64


class Backoff:
    """The delays between attempts of one retried operation; :meth:`next` after each failure,
    :meth:`reset` after a success."""

    __slots__ = ("_previous", "_rng", "attempts", "cap_s", "first_s", "jitter")

    def __init__(
        self,
        first_s: float,
        cap_s: float,
        *,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        if not first_s > 0:
            raise ValueError(f"a backoff's first delay must be above 0 s, not {first_s!r}")
        if cap_s < first_s:
            raise ValueError(f"a backoff's cap ({cap_s} s) must not be below its first delay")
        self.first_s = first_s
        self.cap_s = cap_s
        self.jitter: Jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        #: failures since the last :meth:`reset`
        self.attempts = 0
        self._previous = first_s

    def __repr__(self) -> str:
        return (
            f"Backoff({self.first_s:g} s .. {self.cap_s:g} s, {self.jitter} jitter, "
            f"attempts={self.attempts})"
        )

    def ceiling(self, attempt: int) -> float:
        """The plain exponential delay of the ``attempt``-th failure (1-based), capped."""
        doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
        return min(self.cap_s, self.first_s * 2.0**doublings)

    def delay(self, attempt: int) -> float:
        """A delay for the ``attempt``-th failure (1-based) computed from the count alone;
        ``decorrelated`` jitter has no such form (use :meth:`next`)."""
        if self.jitter == "full":
            return self._rng.uniform(self.first_s, self.ceiling(attempt + 1))
        if self.jitter == "equal":
            return self._rng.uniform(self.ceiling(attempt), self.ceiling(attempt + 1))
        raise ValueError("decorrelated jitter depends on the previous delay: call next()")

    def next(self) -> float:
        """Count one more failure; the delay to wait before the next attempt."""
        self.attempts += 1
        if self.jitter == "decorrelated":
            drawn = self._rng.uniform(self.first_s, 3 * self._previous)
            self._previous = min(self.cap_s, drawn)
            return self._previous
        return self.delay(self.attempts)

    def reset(self) -> None:
        """The operation succeeded: the next failure starts again from ``first_s``."""
        self.attempts = 0
        self._previous = self.first_s
