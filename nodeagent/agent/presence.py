"""The agent's presence on its node: a shared ``flock`` on ``<state dir>/running`` held while it
runs, which ``nodeagent cleanup`` takes exclusively. While a cleanup holds it (an uninstall in
progress) the agent writes nothing, so its drift repair never undoes a cleanup; several agents
(a rollout) share it."""

from __future__ import annotations

import threading
from typing import Any

from nodeagent.host.hostfs import HostFS

__all__ = ["stand_by_for_cleanup"]


def stand_by_for_cleanup(hostfs: HostFS, state_dir: str, *, stop: threading.Event, log: Any) -> int | None:
    """Take the presence lock, waiting while a cleanup holds it. The descriptor (the lock is held
    until it is closed), or None when asked to stop while waiting."""
    waited = False
    while not stop.is_set():
        fd = hostfs.presence(state_dir, exclusive=False)
        if fd is not None:
            if waited:
                log.info("cleanup_finished_starting")
            return fd
        if not waited:
            log.warning(
                "standing_down_for_cleanup",
                why=f"nodeagent cleanup holds {state_dir}/running: the agent writes nothing until it is done",
            )
            waited = True
        stop.wait(1.0)
    return None
