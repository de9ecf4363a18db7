"""Shared fixtures: a sandbox host root and helpers to build docker config input."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from nodeagent.config import SyncSettings
from nodeagent.host.hostfs import HostFS


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def docker_config(entries: dict[str, tuple[str, str]]) -> bytes:
    """A .dockerconfigjson with one ``auth`` per registry key."""
    return json.dumps({"auths": {k: {"auth": b64(f"{u}:{p}")} for k, (u, p) in entries.items()}}).encode()


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "var/lib/kubelet").mkdir(parents=True)
    return root


@pytest.fixture
def settings(host_root: Path) -> SyncSettings:
    return SyncSettings(host_root=str(host_root))


@pytest.fixture
def hostfs(host_root: Path) -> HostFS:
    return HostFS(host_root)


FIGURES: dict[str, str] = {}
"""Figures the reliability tests measure (kills survived, inputs tried, ...), printed at the end."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value}")
