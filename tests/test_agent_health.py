"""The agent's liveness: the loop's heartbeat and every watcher thread (in-process, injected clock)."""

from __future__ import annotations

import threading
from pathlib import Path

from nodeagent.agent import Agent, RunSettings, SourceSpec
from nodeagent.config import SourcesSettings, SyncSettings
from nodeagent.observe.logging import Redactor


class _Thread:
    def __init__(self, label: str, alive: bool) -> None:
        self.label, self._alive = label, alive

    def is_alive(self) -> bool:
        return self._alive


def _agent(host_root: Path, now: list[float]) -> Agent:
    settings = RunSettings(
        sync=SyncSettings(host_root=str(host_root)), sources=SourcesSettings((SourceSpec("secret", "ns/name"),))
    )
    return Agent(settings, api=None, redactor=Redactor(), stop=threading.Event(), clock=lambda: now[0])


def test_a_dead_watcher_fails_liveness(host_root: Path) -> None:
    """A watcher thread that has ended makes /healthz fail and is named; a running one does not."""
    now = [1000.0]
    agent = _agent(host_root, now)
    agent.status.health.heartbeat = now[0]
    agent._watchers = [_Thread("secret:ns/name", alive=True)]
    assert (True, []) == (agent.alive(), agent.dead_watchers())
    agent._watchers.append(_Thread("node:n1", alive=False))
    assert (False, ["node:n1"]) == (agent.alive(), agent.dead_watchers())


def test_a_stalled_loop_fails_liveness(host_root: Path) -> None:
    """No heartbeat for 60 s fails liveness, with every watcher running."""
    now = [1000.0]
    agent = _agent(host_root, now)
    agent.status.health.heartbeat = now[0]
    now[0] += 61
    assert agent.alive() is False


def test_a_dead_token_refresher_fails_liveness(host_root: Path) -> None:
    """The ECR token refresher ending (ECR tokens would silently expire) fails liveness too."""
    now = [1000.0]
    agent = _agent(host_root, now)
    agent.status.health.heartbeat = now[0]
    finished = threading.Thread(target=lambda: None, name="ecr-tokens")
    finished.start()
    finished.join()
    agent.ecr.refresher = finished
    assert (False, ["ecr-tokens"]) == (agent.alive(), agent.dead_watchers())
