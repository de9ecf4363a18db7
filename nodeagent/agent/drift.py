"""The drift guard: when another writer keeps rewriting a file the agent manages, the agent
repairs it, but a writer that rewrites it more than ``limit`` times a minute is a fight, and
repair pauses for ``backoff`` seconds (the periodic resync still runs). No I/O: the agent
tells it when it repaired, and asks it whether repair is paused."""

from __future__ import annotations

__all__ = ["DriftGuard"]

WINDOW = 60.0
"""Repairs within this many seconds count towards a fight."""


class DriftGuard:
    def __init__(self, *, limit: int, backoff: float) -> None:
        self.limit, self.backoff = limit, backoff
        self._repairs: list[float] = []
        self._paused_until = 0.0

    def paused(self, now: float) -> bool:
        """Whether drift repair is paused (a fight was seen less than ``backoff`` seconds ago)."""
        return now < self._paused_until

    def repaired(self, now: float) -> bool:
        """Count one repair; True when it makes a fight, which pauses repair from now on."""
        self._repairs = [t for t in self._repairs if now - t < WINDOW] + [now]
        if len(self._repairs) <= self.limit:
            return False
        self._paused_until = now + self.backoff
        self._repairs.clear()
        return True
