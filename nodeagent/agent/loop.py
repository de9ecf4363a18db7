"""When the next pass runs: on a change (a source, the node's labels, a watched file), on a retry
after a failure (0.5 s doubling to 60 s), and every ``resync_interval`` as a safety net.

Scheduling only: the loop decides *when*; the agent runs the pass. Thread-safe: sources mark
changes from their own threads, the agent's main thread waits and takes them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Loop", "PassCause", "Pending"]

MAX_WAIT = 5.0
"""The longest single wait: the agent's heartbeat and startup-taint retries tick at least this often."""


PassCause = Literal["change", "drift", "retry", "resync"]


@dataclass(frozen=True)
class Pending:
    """What a pass takes in: since when a change waits (None: none), whether a file drifted, and
    why the pass runs (``change`` wins over ``drift``, then a due ``retry``, else the ``resync``)."""

    since: float | None = None
    drift: bool = False
    cause: PassCause = "resync"


class Loop:
    def __init__(self, *, resync_interval: float, clock: Callable[[], float], stop: threading.Event) -> None:
        self.resync_interval, self.clock, self.stop = resync_interval, clock, stop
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._since: float | None = None
        self._drift = False
        self._failures = 0
        self._retry_at: float | None = None
        self._next_resync = clock() + resync_interval

    def changed(self, since: float | None = None) -> None:
        """Something the node's files depend on changed at ``since`` (default: now): pass soon."""
        with self._lock:
            if self._since is None:
                self._since = self.clock() if since is None else since
        self._wake.set()

    def drifted(self) -> None:
        """A target file was rewritten by someone else: pass soon, and count it as a repair."""
        with self._lock:
            self._drift = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def wait(self, also_due: float | None = None) -> bool:
        """Block until woken or until the next due time (at most :data:`MAX_WAIT`); True when a
        pass is due (``also_due``: another deadline, such as a deferred containerd restart)."""
        due = min(t for t in (self._next_resync, self._retry_at, also_due) if t is not None)
        woke = self._wake.wait(timeout=max(0.0, min(MAX_WAIT, due - self.clock())))
        if self.stop.is_set() or (not woke and self.clock() < due):
            return False
        self._wake.clear()
        return True

    def take(self) -> Pending:
        """The changes a pass is about to apply (cleared; :meth:`passed` gives them back on failure)."""
        with self._lock:
            cause: PassCause = "resync"
            if self._since is not None:
                cause = "change"
            elif self._drift:
                cause = "drift"
            elif self._retry_at is not None:
                cause = "retry"
            pending = Pending(self._since, self._drift, cause)
            self._since, self._drift = None, False
        return pending

    def passed(self, ok: bool, pending: Pending = Pending()) -> None:
        """Schedule after a pass: a failure retries (quick at first, a foreign writer caught
        mid-write, then slower) and keeps its drift and the start of its propagation."""
        if ok:
            self._failures, self._retry_at = 0, None
        else:
            with self._lock:
                self._drift = self._drift or pending.drift
                if pending.since is not None and (self._since is None or pending.since < self._since):
                    self._since = pending.since
            self._failures += 1
            self._retry_at = self.clock() + min(60.0, 0.5 * 2.0 ** (self._failures - 1))
        self._next_resync = self.clock() + self.resync_interval
