"""Agent settings: flags, ``NODEAGENT_*`` environment variables and their defaults.

Settings are validated when loaded, so a bad value fails at start with a sentence a person can
act on, never on first use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from nodeagent.errors import SettingsError

__all__ = [
    "CONTAINERD_PRESETS",
    "DEFAULT_KUBELET_ROOT_DIR",
    "DEFAULT_STATE_DIR",
    "PROVIDER_PRESETS",
    "ContainerdSettings",
    "ProviderSettings",
    "RunSettings",
    "SourceSpec",
    "SyncSettings",
    "default_host_root",
]

DEFAULT_KUBELET_ROOT_DIR = "/var/lib/kubelet"
"""The kubelet's ``--root-dir`` default: the first place it looks for ``config.json``."""

DEFAULT_STATE_DIR = "/var/lib/nodeagent"
"""Where the ledger and lock live on the node; survives agent restarts and upgrades."""

CONTAINER_HOST_ROOT = "/host"
"""Where the Helm chart mounts the host directories inside the agent container."""


def default_host_root(env: Mapping[str, str] | None = None) -> str:
    """``$NODEAGENT_HOST_ROOT``, else ``/host`` inside the agent container, else ``/`` on a node."""
    env = os.environ if env is None else env
    if env.get("NODEAGENT_HOST_ROOT"):
        return env["NODEAGENT_HOST_ROOT"]
    return CONTAINER_HOST_ROOT if os.path.isdir(CONTAINER_HOST_ROOT) else "/"


def _host_dir(value: str, flag: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise SettingsError(f"{flag} must be an absolute path without '..' (got {value!r})")
    return str(path)


_AUDIENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}")


@dataclass(frozen=True)
class ProviderSettings:
    """Where the kubelet looks for credential-provider plugins and their config, which of our
    providers are installed, and what the plugin is told (it runs on the host: host paths)."""

    bin_dir: str
    config_path: str
    state_dir: str = DEFAULT_STATE_DIR
    socket: str = "/run/nodeagent/agent.sock"
    ecr: bool = True
    """``nodeagent-ecr-credential-provider`` (``--ecr``, ``install-provider``)."""
    credentials: bool = False
    """``nodeagent-credential-provider`` for every registry (``--credential-provider``): the
    kubelet asks it on every pull, so a rotation is used by the next pull, not 5 minutes later."""
    ports: tuple[int, ...] = ()
    """Registry ports the provider is asked for besides those in the sources: the kubelet compares
    ports exactly, and reads the list only at start."""
    audience: str | None = None
    """Ask the kubelet for each pod's ServiceAccount token with this audience (KEP-4412): needed
    to serve namespace-scoped credentials. Off by default: a kubelet older than 1.33 refuses to
    start with ``tokenAttributes`` in its provider config."""
    config_json: bool = True
    """Keep node-wide credentials in config.json too. On by default: a kubelet that has not been
    restarted since the provider was installed reads only config.json. Off avoids one failed
    attempt with a stale config.json credential (cached by the kubelet for 5 minutes) after a
    rotation, once every kubelet runs the provider."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bin_dir", _host_dir(self.bin_dir, "--provider-bin-dir"))
        object.__setattr__(self, "config_path", _host_dir(self.config_path, "--provider-config"))
        object.__setattr__(self, "socket", _host_dir(self.socket, "--socket"))
        object.__setattr__(self, "ports", tuple(sorted(set(self.ports))))
        if any(not 0 < port < 65536 for port in self.ports):
            raise SettingsError("--credential-provider-ports: a port must be 1-65535")
        if self.audience is not None and not _AUDIENCE.fullmatch(self.audience):
            raise SettingsError("--service-account-token-audience: give a plain audience such as 'nodeagent'")
        if not self.credentials and (self.audience or not self.config_json or self.ports):
            raise SettingsError(
                "--service-account-tokens, --credential-provider-ports and --provider-only need --credential-provider"
            )

    @property
    def plugin_path(self) -> str:
        return str(PurePosixPath(self.bin_dir) / "nodeagent-ecr-credential-provider")

    @property
    def static_plugin_path(self) -> str:
        return str(PurePosixPath(self.bin_dir) / "nodeagent-credential-provider")

    @property
    def credentials_file(self) -> str:
        """The file the credential provider answers from (0600, root; a host path)."""
        return str(PurePosixPath(self.state_dir) / "provider-credentials.json")

    @property
    def plugin_args(self) -> list[str]:
        return ["--state-dir", self.state_dir, "--socket", self.socket]


PROVIDER_PRESETS: dict[str, tuple[str, str]] = {
    # EKS AL2023 AMIs run the kubelet with these flags already (amazon-eks-ami nodeadm).
    "eks": ("/etc/eks/image-credential-provider", "/etc/eks/image-credential-provider/config.json"),
    # No kubeadm default exists; this is nodeagent's convention, to set in the kubelet's flags
    # (docs/ecr.md): --image-credential-provider-bin-dir and --image-credential-provider-config.
    "kubeadm": ("/usr/libexec/kubernetes/credential-providers", "/etc/kubernetes/credential-providers"),
}


CONTAINERD_PRESETS: dict[str, str] = {
    "kubeadm": "/etc/containerd/config.toml",
    "eks": "/etc/containerd/config.toml",
    # k3s and RKE2 regenerate config.toml from config.toml.tmpl at every start.
    "k3s": "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
    "rke2": "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
}
_REGENERATED = ("/var/lib/rancher/k3s/", "/var/lib/rancher/rke2/", "/var/snap/microk8s/")
"""Configs their distribution renders from a template at start: in-place credential edits would
be lost (microk8s renders args/containerd.toml from containerd-template.toml)."""
RESTART_POLICIES = ("none", "signal", "systemd")


@dataclass(frozen=True)
class ContainerdSettings:
    """How the agent manages containerd's registry configuration on this node."""

    config: str = CONTAINERD_PRESETS["kubeadm"]
    """containerd's config.toml (host path): where ``config_path``, ``imports`` and auth live."""
    auth: bool = False
    """Write node credentials into config.toml (``--containerd-auth``). Off by default: the
    kubelet sends credentials over CRI on every pod pull, and a config.toml change needs a restart."""
    restart: str = "none"
    """``none`` reports "restart pending"; ``signal`` sends SIGTERM to containerd (its supervisor
    restarts it); ``systemd`` runs ``systemctl restart containerd`` in the host's namespaces."""
    restart_interval: float = 300.0
    """At most one restart per interval: a burst of rotations costs one restart, not one each."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _host_dir(self.config, "--containerd-config"))
        if self.restart not in RESTART_POLICIES:
            raise SettingsError(f"--containerd-restart must be one of {', '.join(RESTART_POLICIES)}")
        if self.restart_interval < 0:
            raise SettingsError("--containerd-restart-interval must not be negative")
        if self.auth and self.config.startswith(_REGENERATED):
            raise SettingsError(
                "--containerd-auth cannot work on k3s/RKE2/microk8s: they regenerate containerd's config at "
                "every start (use their own registry configuration); hosts.toml settings work without it"
            )


@dataclass(frozen=True)
class SyncSettings:
    """Settings shared by ``sync``, ``cleanup`` and ``show``."""

    host_root: str
    kubelet_root_dir: str = DEFAULT_KUBELET_ROOT_DIR
    state_dir: str = DEFAULT_STATE_DIR
    from_files: tuple[str, ...] = field(default_factory=tuple)
    dry_run: bool = False
    lock_timeout: float = 30.0
    """Long enough for the other process's write to finish, short enough to fail a stuck run."""
    provider: ProviderSettings | None = None
    """Install the ECR credential-provider plugin and config (``--ecr``); None removes them."""
    containerd: ContainerdSettings | None = None
    """Manage containerd's hosts.toml (and config.toml auth); None leaves containerd alone."""
    registry_config: str | None = None
    """``--registry-config``: per-registry TLS, mirrors and containerd auth mode (agent path)."""

    def __post_init__(self) -> None:
        if not os.path.isdir(self.host_root):
            raise SettingsError(f"--host-root {self.host_root!r} is not a directory")
        object.__setattr__(self, "kubelet_root_dir", _host_dir(self.kubelet_root_dir, "--kubelet-root-dir"))
        object.__setattr__(self, "state_dir", _host_dir(self.state_dir, "--state-dir"))
        if self.lock_timeout <= 0:
            raise SettingsError("--lock-timeout must be positive")

    @property
    def kubelet_config(self) -> str:
        return str(PurePosixPath(self.kubelet_root_dir) / "config.json")

    @property
    def ledger_path(self) -> str:
        return str(PurePosixPath(self.state_dir) / "state.json")

    @property
    def provider_backup(self) -> str:
        """Where a node's own CredentialProviderConfig is kept before the agent first merges into it."""
        return str(PurePosixPath(self.state_dir) / "provider-config.orig")

    @property
    def containerd_backup(self) -> str:
        """Where the original containerd config is kept before the agent's first in-place edit."""
        return str(PurePosixPath(self.state_dir) / "containerd-config.toml.orig")


@dataclass(frozen=True)
class SourceSpec:
    kind: Literal["secret", "file"]
    ref: str  # "namespace/name" or a path

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.ref}"


@dataclass(frozen=True)
class RunSettings:
    """Settings of ``nodeagent run`` (the shared host settings live in ``sync``)."""

    sync: SyncSettings
    sources: tuple[SourceSpec, ...]
    node_name: str | None = None
    kubeconfig: str | None = None
    listen_host: str = "0.0.0.0"  # noqa: S104 - the kubelet's probes and Prometheus reach the pod IP
    listen_port: int = 9808
    on_secret_deleted: Literal["keep", "remove"] = "keep"
    """Keep by default: one accidental ``kubectl delete secret`` must not break pulls on every node."""
    resync_interval: float = 600.0
    """A full pass every 10 min catches anything the watches missed, at negligible cost."""
    events: bool = True
    annotations: bool = True
    event_namespace: str = "default"
    """Events about cluster-scoped Nodes live in ``default``, where ``kubectl describe node`` finds them."""
    drift_limit: int = 5
    """More external rewrites than this per minute is a fight with another writer: back off."""
    drift_backoff: float = 300.0
    forbidden_retry: float = 60.0
    """401/403 need a person to fix RBAC; retrying faster only floods the API server's audit log."""
    startup_taint: bool = False
    """Remove ``nodeagent.io/agent-not-ready`` from the Node once every source is read and applied,
    so that pods scheduled to a fresh node never race its first sync (``--remove-startup-taint``)."""
    ecr: bool = False
    """Serve ECR tokens to the credential-provider plugin (installed per ``sync.provider``)."""
    ecr_regions: tuple[str, ...] = ()
    ecr_registries: tuple[str, ...] = ()
    """ECR hosts whose tokens also go into config.json, for kubelets not wired to plugins."""
    ecr_credentials_secret: str | None = None
