"""The running agent with containerd management: Secret rotations and --registry-config edits
reach hosts.toml and config.toml without restarting the agent; restart policy "none" reports."""

from __future__ import annotations

import base64
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fake_kube import FakeKube
from tests.integration.conftest import SENTINEL, AgentProcess, dockerconfig, wait_for

NS, NAME = "registry-creds", "central"
Start = Callable[..., AgentProcess]
CONFIG = """# the node's own
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"""


def _prepare(host_root: Path) -> None:
    (host_root / "etc/containerd").mkdir(parents=True)
    (host_root / "etc/containerd/config.toml").write_text(CONFIG)


def _toml(path: Path) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _header(agent: AgentProcess) -> str | None:
    document = _toml(agent.host_root / "etc/containerd/certs.d/basic.example/hosts.toml")
    if document is None:
        return None
    return str(document["header"]["Authorization"])  # the registry is the top level of hosts.toml


def _put(kube: FakeKube, basic_password: str, other_password: str) -> None:
    entries = {"basic.example": basic_password, "c.example": other_password}
    kube.put_secret(NS, NAME, data={".dockerconfigjson": dockerconfig(entries)})


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"user:{password}".encode()).decode()


def test_rotation_and_settings_edits_reach_containerd(kube: FakeKube, start_agent: Start, tmp_path: Path) -> None:
    """A Secret rotation rewrites the header-mode hosts.toml and config.toml auth; editing the
    settings file adds a registry's hosts.toml; a broken edit keeps the last good settings;
    policy "none" logs and exports "restart pending" until containerd is seen restarted."""
    settings = tmp_path / "settings" / "registries.toml"
    settings.parent.mkdir()
    settings.write_text('[registries."basic.example"]\ncontainerd_auth = "header"\n')
    kube.put_secret(
        NS, NAME, data={".dockerconfigjson": dockerconfig({"basic.example": f"{SENTINEL}-1", "c.example": "x"})}
    )
    agent = start_agent(
        "--secret", f"{NS}/{NAME}", "--registry-config", str(settings), "--containerd-auth", "--resync-interval", "1",
        prepare=_prepare,
    )  # fmt: skip
    wait_for(lambda: _header(agent) == _basic(f"{SENTINEL}-1"), "header-mode hosts.toml")
    config = agent.host_root / "etc/containerd/config.toml"
    wait_for(lambda: "c.example" in str(_toml(config)), "config.toml auth")
    wait_for(lambda: agent.events("containerd_restart_pending"), "restart pending reported")
    assert 1 == agent.metric("nodeagent_containerd_restart_pending")

    kube.put_secret(
        NS, NAME, data={".dockerconfigjson": dockerconfig({"basic.example": f"{SENTINEL}-2", "c.example": "y"})}
    )
    wait_for(lambda: _header(agent) == _basic(f"{SENTINEL}-2"), "rotated header")

    settings.write_text(settings.read_text() + '[registries."mirrored.example"]\nmirrors = ["https://m.example"]\n')
    mirrored = agent.host_root / "etc/containerd/certs.d/mirrored.example/hosts.toml"
    wait_for(lambda: _toml(mirrored) is not None, "hosts.toml for the added registry")

    settings.write_text("[registries\n")
    wait_for(lambda: agent.events("registry_settings_invalid"), "broken settings reported")
    kube.put_secret(
        NS, NAME, data={".dockerconfigjson": dockerconfig({"basic.example": f"{SENTINEL}-3", "c.example": "y"})}
    )
    wait_for(lambda: _header(agent) == _basic(f"{SENTINEL}-3"), "sync with the last good settings")
    assert mirrored.exists()

    # Policy none: someone else restarts containerd; the agent notices it is no longer pending.
    wait_for(lambda: agent.metric("nodeagent_containerd_restart_pending") == 1, "still pending")
    binary = tmp_path / "bin" / "containerd"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nsleep 300\n")
    binary.chmod(0o755)
    time.sleep(1.1)  # process start times have a resolution of one clock tick
    fake = subprocess.Popen([str(binary), "--config", "/etc/containerd/config.toml"])
    try:
        wait_for(lambda: agent.metric("nodeagent_containerd_restart_pending") == 0, "restart observed")
        wait_for(lambda: agent.events("containerd_restart_observed"), "logged")  # logged after the metric
    finally:
        fake.kill()
        fake.wait()


def test_bad_registry_config_fails_at_start(start_agent: Start, tmp_path: Path) -> None:
    """An unparseable --registry-config stops the agent at start with the usage exit code."""
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("[registries\n")
    host = tmp_path / "h"
    host.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "nodeagent", "run", "--from-file", str(bad), "--registry-config", str(bad),
         "--host-root", str(host), "--log-format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 2 == result.returncode
    assert '"event": "settings_invalid"' in result.stdout + result.stderr
