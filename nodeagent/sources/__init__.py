"""Credential sources: a Secret watched through the API, or a mounted file watched on disk.

Each source runs in its own thread and reports :class:`SourceUpdate` objects to a callback;
the agent keeps the last good state of every source and reconciles from all of them in order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from nodeagent.model.credentials import NODE_SELECTOR_ANNOTATION, ParseResult

__all__ = ["NODE_SELECTOR_ANNOTATION", "STARTUP_TAINT", "Backoff", "SourceUpdate", "UpdateKind", "UpdateSink"]


STARTUP_TAINT = "nodeagent.io/agent-not-ready"
"""The taint a node registers with (its kubelet's ``registerWithTaints``) until the agent's first
sync; the agent removes it, doctor looks for it in the kubelet's configuration."""

UpdateKind = Literal["data", "invalid", "deleted", "absent", "unreadable"]
"""``unreadable``: the API refused the agent (401/403); the source's state is unknown, not empty."""


@dataclass(frozen=True)
class SourceUpdate:
    """What a source saw. ``result`` is set for ``data``; ``error`` names the problem otherwise."""

    source: str
    kind: UpdateKind
    received: float
    """``time.monotonic()`` when the change reached the agent (for propagation latency)."""
    result: ParseResult | None = None
    error: str | None = None
    node_selector: str | None = None
    resource_version: str | None = None


UpdateSink = Callable[[SourceUpdate], None]


class Backoff:
    """Capped exponential backoff with jitter (a delay drawn from the upper half of the step).

    With ``reset_after``, the delay goes back to ``base`` only when no failure was seen for that
    long (client-go's reflector: 800 ms doubling to 30 s, reset after 2 minutes without one), so
    a loop whose every round half-succeeds (a list that works, then a watch that fails) still
    slows down. :meth:`reset` starts over at once (for loops whose success is a whole round).
    """

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        rng: random.Random | None = None,
        reset_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap, self.reset_after, self.clock = base, cap, reset_after, clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0
        self._last: float | None = None

    def next(self) -> float:
        now = self.clock()
        if self.reset_after is not None and self._last is not None and now - self._last >= self.reset_after:
            self._attempt = 0
        self._last = now
        delay = min(self.cap, self.base * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0
