"""What doctor found: findings, the node's facts, the report and its text form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from nodeagent.model.registry_settings import DOCKER_HUB_ALIASES

SCHEMA_VERSION = 1
Severity = Literal["ok", "info", "warning", "error"]
KUBELET_CACHE_SECONDS = 300
"""The kubelet caches what it read from config.json for 5 minutes (CachingDockerConfigProvider)."""
DOCKER_HUB_KEYS = DOCKER_HUB_ALIASES


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    seen: str
    why: str = ""
    fix: str = ""


@dataclass
class NodeFacts:
    """Where things are on this node, and how we know."""

    kubelet_root_dir: str
    kubelet_cwd: str | None = None
    kubelet_home: str | None = None
    kubelet_pid: int | None = None
    provider_config: str | None = None
    provider_bin_dir: str | None = None
    containerd_pid: int | None = None
    containerd_config: str | None = None
    containerd_started: float | None = None
    kubelet_started: float | None = None
    """When the kubelet process started (epoch seconds): it read its provider config then."""
    kubelet_version: str | None = None
    """``v1.34.1``, from the kubelet binary's ``--version``."""
    kubelet_config: str | None = None
    """The kubelet's ``--config`` file (KubeletConfiguration)."""
    register_with_taints: str | None = None
    """The kubelet's ``--register-with-taints`` flag (``key=value:Effect,...``), when it has one."""
    source: str = "settings"
    """``process`` when read from the running kubelet, ``settings`` when from flags and presets."""


@dataclass
class Report:
    node: NodeFacts
    findings: list[Finding] = field(default_factory=list)
    image: dict[str, Any] | None = None
    probe: list[dict[str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        severities = {f.severity for f in self.findings}
        return "failures" if "error" in severities else "warnings" if "warning" in severities else "healthy"

    @property
    def exit_code(self) -> int:
        return {"healthy": 0, "warnings": 1, "failures": 2}[self.status]

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "status": self.status,
            "node": asdict(self.node),
            "findings": [asdict(f) for f in self.findings],
            "image": self.image,
            "probe": self.probe,
        }


def render_text(report: Report, *, colour: bool) -> str:
    order = {"error": 0, "warning": 1, "info": 2, "ok": 3}
    paint = {"error": "\033[31m", "warning": "\033[33m", "info": "\033[36m", "ok": "\033[32m"} if colour else {}
    reset = "\033[0m" if colour else ""
    lines = [f"nodeagent doctor: {report.status} (kubelet paths from {report.node.source})"]
    for finding in sorted(report.findings, key=lambda f: order[f.severity]):
        lines.append(
            f"{paint.get(finding.severity, '')}[{finding.severity.upper()}]{reset} {finding.id}: {finding.seen}"
        )
        if finding.fix:
            lines.append(f"    fix: {finding.fix}")
        if finding.why:
            lines.append(f"    why: {finding.why}")
    if report.image is not None and "error" in report.image:
        lines.append(f"image {report.image['image']!r}: not looked up ({report.image['error']})")
    elif report.image is not None:
        lines.append(f"image {report.image['image']}: the kubelet tries, in order:")
        for i, cred in enumerate(report.image["credentials"], 1):
            lines.append(f"    {i}. {cred['key']} ({cred['reason']}) from {report.image['configJson']}")
        if not report.image["credentials"]:
            lines.append("    no config.json credential")
        for name in report.image["providers"]:
            lines.append(f"    credential provider {name} is called too")
        lines.append(f"    containerd hosts.toml: {report.image.get('containerdHostsToml') or 'none applies'}")
    for result in report.probe:
        lines.append(f"probe {result['registry']}: {result['result']}")
    return "\n".join(lines) + "\n"
