"""config.json's drift, as the running agent sees it: a change to the file that is not a version
a pass wrote or read wakes the loop as drift, and a pass that then writes counts a repair; the
:class:`~nodeagent.agent.drift.DriftGuard` decides when repairs are a fight and pause."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nodeagent.host.hostfs import HostFS
from nodeagent.observe.metrics import Metrics

from .drift import DriftGuard
from .loop import Loop

__all__ = ["DriftWatch"]


class DriftWatch:
    def __init__(
        self,
        *,
        hostfs: HostFS,
        path: str,
        guard: DriftGuard,
        loop: Loop,
        metrics: Metrics,
        log: Any,
        emit: Callable[..., None],
        clock: Callable[[], float],
    ) -> None:
        self.hostfs, self.path, self.guard, self.loop = hostfs, path, guard, loop
        self.metrics, self.log, self.emit, self.clock = metrics, log, emit, clock

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.lstat(self.hostfs.real_path(self.path))
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self, received: float) -> None:
        """The file watcher saw a change in config.json's directory (called from its thread)."""
        if self.guard.paused(self.clock()):
            return
        # The version the agent last wrote or read (a restart on a current node only reads): the
        # event was the agent's own.
        if self._stamp() != self.hostfs.known.get(self.path):
            self.loop.drifted()

    def repaired(self, now: float) -> None:
        """A pass rewrote the file after someone else changed it."""
        self.metrics.drift_repairs.inc()
        self.log.warning("drift_repaired", path=self.path)
        if self.guard.repaired(now):
            message = (
                f"{self.path} was rewritten by another writer more than {self.guard.limit} times in a "
                f"minute; pausing drift repair for {self.guard.backoff:g}s (the periodic resync still runs)"
            )
            self.log.error("drift_fight", message=message)
            self.emit("DriftFight", message, warning=True)
