"""The base every group of doctor's checks builds on."""

from __future__ import annotations

from typing import Any

from nodeagent.errors import HostFSError, SymlinkRefused
from nodeagent.host.hostfs import HostFS

from .report import Finding, NodeFacts, Severity


class Checks:
    """What every group of checks shares: the host (read only), the node's facts, the findings."""

    def __init__(self, hostfs: HostFS, facts: NodeFacts, state_dir: str, agent_root_dir: str, socket_path: str) -> None:
        self.fs, self.facts, self.state_dir = hostfs, facts, state_dir
        self.agent_root_dir, self.socket_path = agent_root_dir, socket_path
        # The installed nodeagent-credential-provider's matchImages (doctor --image lists it).
        self.static_match_images: list[str] = []
        self.findings: list[Finding] = []
        self.used: tuple[str, dict[str, Any]] | None = None

    def add(self, id_: str, severity: Severity, seen: str, why: str = "", fix: str = "") -> None:
        self.findings.append(Finding(id_, severity, seen, why, fix))

    def _read(self, path: str) -> bytes | None:
        try:
            return self.fs.read(path)
        except SymlinkRefused:
            return self._read_link(path)
        except HostFSError:
            return None

    def _read_link(self, path: str) -> bytes | None:
        try:
            with open(self.fs.real_path(path), "rb") as handle:  # diagnosis only: the kubelet follows links
                return handle.read(1 << 20)
        except OSError:
            return None
