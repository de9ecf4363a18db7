"""Harness: the real ``nodeagent run`` process against the fake API server, on a sandbox host root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import b64
from tests.fake_kube import FakeKube

SENTINEL = "SENTINEL-agent-9c2e"
NODE = "node-a"


def dockerconfig(entries: dict[str, str]) -> bytes:
    """A .dockerconfigjson with ``user:<password>`` per registry."""
    return json.dumps({"auths": {k: {"auth": b64(f"user:{p}")} for k, p in entries.items()}}).encode()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll until ``condition()`` is truthy; fail naming ``what`` (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def start_real_agent(server: Any, token: str, tmp_path: Path, *args: str) -> AgentProcess:
    """``nodeagent run`` as node-a's agent against a real kube-apiserver (tests/real_parsers.py),
    authenticated with ``token``, on a fresh host root under ``tmp_path``."""
    host_root = tmp_path / "host"
    (host_root / "var/lib/kubelet").mkdir(parents=True)
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig.json", token)
    log_path = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEAGENT_", "KUBERNETES_"))}
    cmd = [sys.executable, "-m", "nodeagent", "run", "--host-root", str(host_root), "--listen", "127.0.0.1:0"]
    cmd += ["--log-format", "json", "--node-name", "node-a", "--kubeconfig", str(kubeconfig), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return AgentProcess(host_root, log_path, proc)


class AgentProcess:
    def __init__(self, host_root: Path, log_path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.host_root, self.log_path, self.proc = host_root, log_path, proc
        self.port = 0

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("event") == name]

    def config(self) -> dict[str, Any] | None:
        path = self.host_root / "var/lib/kubelet/config.json"
        try:
            return dict(json.loads(path.read_bytes()))
        except (FileNotFoundError, ValueError):
            return None

    def passwords(self) -> dict[str, str]:
        """registry key -> password, as the kubelet would decode config.json."""
        from tests.real_parsers import kubelet_read_config

        path = self.host_root / "var/lib/kubelet/config.json"
        if not path.exists():
            return {}
        return {c.key: c.password for c in kubelet_read_config(path.read_bytes())}

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str) -> float:
        _, text = self.http("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube(bookmark_interval=0.5)
    fake.url = fake.start()  # type: ignore[attr-defined]
    fake.put_node(NODE, {"pool": "general"})
    yield fake
    fake.stop()


@pytest.fixture
def start_agent(tmp_path: Path, kube: FakeKube) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(
        *args: str,
        kubeconfig: bool = True,
        env: dict[str, str] | None = None,
        prepare: Callable[[Path], None] | None = None,
        host_root: Path | None = None,
    ) -> AgentProcess:
        if host_root is None:
            host_root = tmp_path / f"host{len(started)}"
            (host_root / "var/lib/kubelet").mkdir(parents=True)
        if prepare is not None:
            prepare(host_root)
        log_path = tmp_path / f"agent{len(started)}.log"
        cmd = [sys.executable, "-m", "nodeagent", "run", "--host-root", str(host_root), "--listen", "127.0.0.1:0"]
        cmd += ["--log-format", "json", "--node-name", NODE]
        if kubeconfig:
            path = tmp_path / "kubeconfig.json"
            path.write_text(json.dumps(kube.kubeconfig(kube.url)))  # type: ignore[attr-defined]
            cmd += ["--kubeconfig", str(path)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEAGENT_", "KUBERNETES_"))}
        full_env.update(env or {})
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT, env=full_env)
        agent = AgentProcess(host_root, log_path, proc)
        started.append(agent)
        line = wait_for(lambda: agent.events("agent_started") or proc.poll() is not None, "agent start")
        if proc.poll() is not None:
            pytest.fail(f"agent exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        agent.port = int(line[0]["port"])
        return agent

    yield start
    for agent in started:
        code = agent.stop()
        text = agent.log_path.read_text(errors="replace")
        assert SENTINEL not in text, "a secret reached the agent's log"
        assert b64(f"user:{SENTINEL}") not in text
        assert 0 == code, text[-3000:]
        leftovers = [p.name for p in agent.host_root.rglob("*") if ".nodeagent-tmp-" in p.name]
        assert [] == leftovers
