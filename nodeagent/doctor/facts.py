"""Where the kubelet and its files are on this node: found with psutil when the host's processes
are visible, else the configured paths (and doctor says so)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from nodeagent.host.containerd_restart import process_start_time

from .report import NodeFacts


def _flag(cmdline: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == name and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _kubelet_version(exe: str) -> str | None:
    """``v1.34.1`` from ``kubelet --version`` ("Kubernetes v1.34.1"), or None."""
    import subprocess

    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.split()
    return words[-1] if len(words) == 2 and words[-1].startswith("v") else None


def _minor(version: str | None) -> int | None:
    """The minor of a ``v1.MINOR...`` version, or None."""
    parts = (version or "").lstrip("v").split(".")
    return int(parts[1]) if len(parts) >= 2 and parts[0] == "1" and parts[1].isdigit() else None


def discover(*, kubelet_root_dir: str, provider_config: str | None, provider_bin_dir: str | None) -> NodeFacts:
    """Read the running kubelet's and containerd's flags, when their processes are visible."""
    import psutil

    facts = NodeFacts(kubelet_root_dir, provider_config=provider_config, provider_bin_dir=provider_bin_dir)
    for proc in psutil.process_iter(["name", "cmdline", "pid"]):
        try:
            name = proc.info["name"] or ""
            cmdline = proc.info["cmdline"] or []
            exe = os.path.basename(cmdline[0]) if cmdline else ""
            if "kubelet" in (name, exe) and facts.kubelet_pid is None:
                facts.kubelet_pid = proc.pid
                facts.source = "process"
                facts.kubelet_root_dir = _flag(cmdline, "--root-dir") or "/var/lib/kubelet"
                facts.provider_config = _flag(cmdline, "--image-credential-provider-config")
                facts.provider_bin_dir = _flag(cmdline, "--image-credential-provider-bin-dir")
                facts.kubelet_cwd = proc.cwd()
                facts.kubelet_home = proc.environ().get("HOME")
                facts.kubelet_config = _flag(cmdline, "--config")
                facts.register_with_taints = _flag(cmdline, "--register-with-taints")
                facts.kubelet_started = process_start_time(proc.pid, proc.create_time())
                facts.kubelet_version = _kubelet_version(f"/proc/{proc.pid}/exe")
            elif "containerd" in (name, exe) and facts.containerd_pid is None:
                facts.containerd_pid = proc.pid
                facts.containerd_config = _flag(cmdline, "--config") or _flag(cmdline, "-c")
                facts.containerd_started = process_start_time(proc.pid, proc.create_time())
        except (psutil.Error, OSError):
            continue
    return facts
