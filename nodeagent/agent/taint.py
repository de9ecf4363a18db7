"""The startup taint: node bootstrap puts ``nodeagent.io/agent-not-ready:NoSchedule`` on a new
node, and the agent takes it off once every source is read and applied, so pods scheduled to a
fresh node never race its first sync (``--remove-startup-taint``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nodeagent.kube import KubeAPI, KubeError
from nodeagent.sources import STARTUP_TAINT

__all__ = ["STARTUP_TAINT", "StartupTaint"]


class StartupTaint:
    """Removes the taint once, retried with backoff (5 s doubling to 60 s) on failure."""

    def __init__(
        self,
        *,
        enabled: bool,
        api: KubeAPI | None,
        node_name: str | None,
        clock: Callable[[], float],
        log: Any,
        emit: Callable[..., None],
    ) -> None:
        self.done = not enabled
        self.api, self.node_name, self.clock, self.log, self.emit = api, node_name, clock, log, emit
        self._next_try = 0.0
        self._failures = 0

    def tick(self, *, synced: bool, fully_read: Callable[[], bool]) -> None:
        """Called on every loop tick: acts once the first pass is done and every source is read."""
        if self.done or not synced or self.clock() < self._next_try:
            return
        if not fully_read():
            return  # a source not read yet: the node may still lack credentials
        if self.api is None or not self.node_name:
            self.log.warning("startup_taint_skipped", reason="no API access or node name")
            self.done = True
            return
        try:
            removed = self.api.remove_node_taint(self.node_name, STARTUP_TAINT)
        except KubeError as exc:
            self._failures += 1
            delay = min(60.0, 5.0 * 2 ** (self._failures - 1))
            self._next_try = self.clock() + delay
            self.log.warning("startup_taint_failed", status=exc.status, error=str(exc), retry_in_s=delay)
            return
        self.done = True
        if removed:
            self.log.info("startup_taint_removed", taint=STARTUP_TAINT)
            self.emit("StartupTaintRemoved", f"{STARTUP_TAINT} removed: the node has its registry credentials")
