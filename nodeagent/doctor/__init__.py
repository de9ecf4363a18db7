"""``nodeagent doctor``: why can't this node pull my image?

Discovers the kubelet (and containerd) with psutil when the host's processes are visible, falls
back to the configured paths and says so, and produces findings: each with an id, a severity, what
was seen, why it matters and the fix. Reads only; never writes. Never prints a credential.

The checks are grouped by concern (kubelet, containerd, provider), each reading files through
the parsers its target uses; this module runs them and, on request, the image lookup and probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import safe_key
from nodeagent.model.registries import InvalidRegistry, normalise_key
from nodeagent.targets.kubelet import entry_credential, kubelet_entries
from nodeagent.targets.provider import PLUGIN_NAME, STATIC_PLUGIN_NAME

from .containerd import ContainerdChecks, containerd_hosts_for, registry_tls
from .facts import discover
from .kubelet import KubeletChecks, check_image
from .kubelet_config import KubeletConfigChecks
from .provider import ProviderChecks
from .report import SCHEMA_VERSION, Finding, NodeFacts, Report, render_text

__all__ = [
    "SCHEMA_VERSION", "Finding", "NodeFacts", "Report", "discover", "probe", "registry_tls", "render_text",
    "run_doctor",
]  # fmt: skip


class _Doctor(KubeletChecks, KubeletConfigChecks, ContainerdChecks, ProviderChecks):
    """Every check, over one set of findings."""


def probe(
    entries: dict[str, dict[str, Any]],
    *,
    ca_file: str | None = None,
    timeout: float = 10.0,
    tls: Callable[[str], dict[str, Any]] | None = None,
) -> list[dict[str, str]]:
    """Contact /v2/ of every registry at once with its credential (Basic, or the Bearer-token
    flow), each with the node's TLS settings for it (``tls(host)``)."""
    from nodeagent.probe import FIXES, ProbeTarget, probe_all  # httpx: loaded only to probe

    results: list[dict[str, str]] = []
    targets: list[tuple[int, ProbeTarget]] = []
    for key, entry in entries.items():
        try:
            host = normalise_key(key).split("/", 1)[0]
        except InvalidRegistry:
            continue
        if "*" in host:
            continue
        try:
            user, password = entry_credential(entry)
        except ValueError:
            results.append({"registry": key, "result": "invalid-credential"})
            continue
        targets.append((len(results), ProbeTarget(key, host, user, password, **(tls(host) if tls else {}))))
        results.append({"registry": key, "result": ""})
    for (index, _), result in zip(
        targets, probe_all([t for _, t in targets], ca_file=ca_file, timeout=timeout), strict=True
    ):
        results[index]["result"] = result
    for item in results:
        item["fix"] = FIXES.get(item["result"], FIXES["unreachable"])
    return results


def run_doctor(
    *,
    hostfs: HostFS,
    facts: NodeFacts,
    state_dir: str,
    agent_root_dir: str,
    socket_path: str,
    image: str | None = None,
    do_probe: bool = False,
    ca_file: str | None = None,
    probe_timeout: float = 10.0,
) -> Report:
    doctor = _Doctor(hostfs, facts, state_dir, agent_root_dir, socket_path)
    doctor.check_kubelet()
    doctor.check_startup_taint(managed=doctor.check_state())
    doctor.check_provider()
    doctor.check_image_pull_policy()
    roots = doctor.check_containerd()
    report = Report(node=facts, findings=doctor.findings)
    if image:
        patterns: list[tuple[str, str]] = []
        if facts.provider_config:
            from nodeagent.targets.provider import match_images

            patterns = [(PLUGIN_NAME, p) for p in match_images()]
            patterns += [(STATIC_PLUGIN_NAME, p) for p in doctor.static_match_images]
        check_image(report, doctor.used, image, patterns)
        assert report.image is not None
        if "error" not in report.image:
            report.image["containerdHostsToml"] = containerd_hosts_for(hostfs, roots, image)
    if do_probe and doctor.used is not None:
        auths = {k: v for k, v in kubelet_entries(doctor.used[1]).items() if isinstance(v, dict)}
        report.probe = probe(
            auths, ca_file=ca_file, timeout=probe_timeout, tls=lambda host: registry_tls(hostfs, roots, host)
        )
        for result in report.probe:
            if result["result"] not in ("valid", "anonymous-ok"):
                report.findings.append(
                    Finding(
                        "probe.failed",
                        "error" if result["result"] in ("rejected", "forbidden", "invalid-credential") else "warning",
                        f"{safe_key(result['registry'])}: {result['result']}",
                        "pulls from this registry fail with this credential",
                        result["fix"],
                    )
                )
    if not report.findings or all(f.severity in ("ok", "info") for f in report.findings):
        report.findings.append(Finding("node.healthy", "ok", "no problem found"))
    return report
