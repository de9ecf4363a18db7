"""The whole agent in-process: a Secret change from the watch event to config.json, through an
in-memory API (the ``KubeAPI`` protocol), and the path it takes through the code.

docs/architecture.md describes that path; the test below measures it: the nodeagent files on the
call stack when the update enters the agent, when the kubelet target renders the file and when
the host writer writes it. A newcomer follows those files, and only those."""

from __future__ import annotations

import base64
import json
import queue
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import nodeagent
from nodeagent.agent import Agent, RunSettings, SourceSpec
from nodeagent.config import SyncSettings
from nodeagent.observe.logging import Redactor

PACKAGE = Path(nodeagent.__file__).resolve().parent


class MemoryAPI:
    """One Secret, watched: ``put`` sends a MODIFIED event to the running watch."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop, self.rv = stop, 1
        self.secret = self._secret("u1")
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()

    def _secret(self, user: str) -> dict[str, Any]:
        config = {"auths": {"registry.example.com": {"username": user, "password": "p"}}}
        data = base64.b64encode(json.dumps(config).encode()).decode()
        meta = {"name": "pull", "namespace": "ns", "resourceVersion": str(self.rv)}
        return {"metadata": meta, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": data}}

    def put(self, user: str) -> None:
        self.rv += 1
        self.secret = self._secret(user)
        self.events.put({"type": "MODIFIED", "object": self.secret})

    def list_secret(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        return self.secret, str(self.rv)

    def watch(self, path: str, **_: Any) -> Iterator[dict[str, Any]]:
        while not self.stop.is_set():
            try:
                yield self.events.get(timeout=0.05)
            except queue.Empty:
                continue


def _users(config: Path) -> str | None:
    if not config.exists():
        return None
    return str(json.loads(config.read_text())["auths"]["registry.example.com"]["username"])


def _wait_for(predicate: Any) -> None:
    done = threading.Event()
    for _ in range(400):  # polled, never timed: the assertion is on what happens, not how fast
        if predicate():
            return
        done.wait(0.025)
    raise AssertionError("the agent did not get there")


@contextmanager
def running_agent(host_root: Path) -> Iterator[tuple[Agent, MemoryAPI]]:
    """The whole agent in a thread on ``host_root``, one Secret source on a MemoryAPI."""
    from nodeagent.config import ObserveSettings, SourcesSettings

    stop = threading.Event()
    api = MemoryAPI(stop)
    settings = RunSettings(
        sync=SyncSettings(host_root=str(host_root)),
        sources=SourcesSettings((SourceSpec("secret", "ns/pull"),)),
        observe=ObserveSettings(listen_host="127.0.0.1", listen_port=0, events=False, annotations=False),
    )
    agent = Agent(settings, api=api, redactor=Redactor(), stop=stop)  # type: ignore[arg-type]
    thread = threading.Thread(target=agent.run, name="agent")
    thread.start()
    try:
        yield agent, api
    finally:
        agent.shutdown()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def running(host_root: Path) -> Iterator[tuple[Agent, MemoryAPI]]:
    with running_agent(host_root) as started:
        yield started


def test_a_secret_change_reaches_config_json(running: tuple[Agent, MemoryAPI], host_root: Path) -> None:
    agent, api = running
    config = host_root / "var/lib/kubelet/config.json"
    _wait_for(lambda: _users(config) == "u1")
    _wait_for(lambda: agent.ready() == (True, "ok"))
    api.put("u2")
    _wait_for(lambda: _users(config) == "u2")
    assert agent.alive()


def test_the_path_of_a_change_crosses_five_files(
    host_root: Path, monkeypatch: pytest.MonkeyPatch, running: tuple[Agent, MemoryAPI]
) -> None:
    """The files on the stack where the change is handed on: into the agent (from the watch),
    into the kubelet target's renderer, into the host writer."""
    from nodeagent.host import hostfs
    from nodeagent.targets import kubelet

    agent, api = running
    config = host_root / "var/lib/kubelet/config.json"
    _wait_for(lambda: _users(config) == "u1")
    stacks: dict[str, list[str]] = {}

    def files_here() -> list[str]:
        frames = traceback.extract_stack()[:-2]
        return [
            str(Path(f.filename).resolve().relative_to(PACKAGE)) for f in frames if f.filename.startswith(str(PACKAGE))
        ]

    on_update, render, write = agent.on_update, kubelet.render_kubelet_config, hostfs.HostFS.write

    def spy_update(update: Any) -> None:
        stacks.setdefault("update", [*files_here(), "agent/agent.py"])
        on_update(update)

    def spy_render(**kwargs: Any) -> Any:
        stacks.setdefault("render", [*files_here(), "targets/kubelet.py"])
        return render(**kwargs)

    def spy_write(self: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        if path.endswith("/config.json"):
            stacks.setdefault("write", [*files_here(), "host/hostfs.py"])
        return write(self, path, *args, **kwargs)

    monkeypatch.setattr(agent, "on_update", spy_update)
    for watcher in agent._watchers:
        if hasattr(watcher, "_sink"):
            monkeypatch.setattr(watcher, "_sink", spy_update)
    monkeypatch.setattr(kubelet, "render_kubelet_config", spy_render)
    monkeypatch.setattr(hostfs.HostFS, "write", spy_write)
    api.put("u2")
    _wait_for(lambda: _users(config) == "u2" and len(stacks) == 3)
    crossed = sorted({name for files in stacks.values() for name in files})
    assert ["agent/agent.py", "host/hostfs.py", "reconcile.py", "sources/kube.py", "targets/kubelet.py"] == crossed


class _TaintedNodeAPI(MemoryAPI):
    """The Secret, and the agent's own Node registered with the startup taint."""

    def __init__(self, stop: threading.Event, steps: list[str]) -> None:
        super().__init__(stop)
        self.steps = steps

    def list_node(self, name: str) -> tuple[dict[str, Any] | None, str]:
        return {"metadata": {"name": name, "resourceVersion": "1", "labels": {}, "uid": "u"}}, "1"

    def watch(self, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        if path == "nodes":
            while not self.stop.wait(0.05):
                pass
            return iter(())
        return super().watch(path, **kwargs)

    def remove_node_taint(self, name: str, key: str) -> bool:
        self.steps.append("taint removed")
        return True

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        pass


def test_the_startup_taint_goes_in_the_pass_that_makes_the_node_ready(host_root: Path) -> None:
    """The taint is removed right after the first pass, before the loop waits again (it waited
    for the loop's next tick, up to 5 s, while pods could have been scheduled)."""
    from nodeagent.config import ObserveSettings, SourcesSettings

    steps: list[str] = []
    stop = threading.Event()
    api = _TaintedNodeAPI(stop, steps)
    settings = RunSettings(
        sync=SyncSettings(host_root=str(host_root)),
        sources=SourcesSettings((SourceSpec("secret", "ns/pull"),)),
        observe=ObserveSettings(listen_host="127.0.0.1", listen_port=0, events=False, annotations=False),
        node_name="node-a",
        startup_taint=True,
    )
    agent = Agent(settings, api=api, redactor=Redactor(), stop=stop)  # type: ignore[arg-type]
    wait, run_pass = agent.loop.wait, agent._pass
    agent.loop.wait = lambda *a: steps.append("wait") or wait(*a)  # type: ignore[method-assign]
    agent._pass = lambda: steps.append("pass") or run_pass()  # type: ignore[method-assign]
    thread = threading.Thread(target=agent.run, name="agent")
    thread.start()
    try:
        _wait_for(lambda: "taint removed" in steps)
    finally:
        agent.shutdown()
        thread.join(timeout=30)
    first = steps.index("pass")
    assert ["pass", "taint removed"] == steps[first : first + 2]
