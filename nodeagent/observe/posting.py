"""Slow side effects off the critical path: Events and Node annotations are posted by one
thread fed by a bounded queue (kopf's ``engines/posting.py`` does the same), so an API server
that answers slowly, or not at all, never delays a write to the node.

A full queue drops the new post and counts it (``dropped``): the node's files matter more than
the report about them, and the next pass reports again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from nodeagent.kube import KubeError
from nodeagent.observe.logging import get_logger

__all__ = ["Poster"]

QUEUE_SIZE = 100
"""Far more than a pass produces (a handful of Events and one annotation)."""


class Poster(threading.Thread):
    """Runs queued API calls one after another on its own thread."""

    def __init__(self, *, size: int = QUEUE_SIZE) -> None:
        super().__init__(daemon=True, name="poster")
        self._queue: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue(maxsize=size)
        self.dropped = 0
        self.log = get_logger()

    def post(self, what: str, call: Callable[[], None]) -> bool:
        """Queue ``call`` (named ``what`` in logs); False when the queue is full and it is dropped."""
        try:
            self._queue.put_nowait((what, call))
        except queue.Full:
            self.dropped += 1
            self.log.warning("post_dropped", what=what, dropped=self.dropped)
            return False
        return True

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, call = item
            try:
                call()
            except KubeError as exc:
                self.log.warning("post_failed", what=what, error=str(exc))
            except Exception as exc:  # a bug in a call must not end the poster
                self.log.error("post_crashed", what=what, error_type=type(exc).__name__)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then end."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.join(timeout=timeout)
