"""Kubernetes Events on the agent's Node, deduplicated and rate-limited.

The same (reason, message) is not repeated within ``dedupe_window`` seconds, and at most
``burst`` events go out per ``per`` seconds, so a flapping Secret cannot flood the API server.
Messages name sources and registry keys, never a credential. With a ``poster`` the API call is
made on the poster's thread, never on the caller's.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from nodeagent.kube import KubeAPI, KubeError
from nodeagent.observe.logging import get_logger
from nodeagent.observe.posting import Poster

__all__ = ["EventRecorder"]


class EventRecorder:
    def __init__(
        self,
        *,
        api: KubeAPI,
        node_name: str,
        namespace: str = "default",
        dedupe_window: float = 300.0,
        burst: int = 10,
        per: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        poster: Poster | None = None,
    ) -> None:
        self.api, self.node_name, self.namespace, self.poster = api, node_name, namespace, poster
        self.node_uid = ""
        self._dedupe_window, self._burst, self._per, self._clock = dedupe_window, burst, per, clock
        self._last: dict[tuple[str, str], float] = {}
        self._sent: list[float] = []
        self._lock = threading.Lock()
        self.log = get_logger()

    def emit(self, reason: str, message: str, *, warning: bool = False) -> bool:
        """Send an event unless it is a recent duplicate or over the rate limit; True if sent (or,
        with a poster, queued)."""
        now = self._clock()
        key = (reason, message)
        with self._lock:  # source threads and the reconcile loop both emit
            if now - self._last.get(key, -1e18) < self._dedupe_window:
                return False
            self._sent = [t for t in self._sent if now - t < self._per]
            if len(self._sent) >= self._burst:
                return False
            self._last[key] = now
            self._sent.append(now)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.node_name}.nodeagent.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_uid},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "nodeagent", "host": self.node_name},
            "reportingComponent": "nodeagent",
            "reportingInstance": self.node_name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        if self.poster is not None:
            return self.poster.post(f"event {reason}", lambda: self.api.create_event(self.namespace, body))
        try:
            self.api.create_event(self.namespace, body)
        except KubeError as exc:
            self.log.warning("event_not_sent", reason=reason, error=str(exc))
            return False
        return True
