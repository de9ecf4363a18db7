"""Agent settings: flags, ``NODEAGENT_*`` environment variables and their defaults.

Settings are validated when loaded, so a bad value fails at start with a sentence a person can
act on, never on first use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath
from typing import Any, Literal

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


def default_host_root() -> str:
    """When neither ``--host-root`` nor ``NODEAGENT_HOST_ROOT`` is given: ``/host`` inside the
    agent container, else ``/`` on a node."""
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
    def scoped_plugin_path(self) -> str:
        return str(PurePosixPath(self.bin_dir) / "nodeagent-scoped-credential-provider")

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
    namespaces: tuple[str, ...] | None = None
    """A file's scope (``--from-file-scoped PATH=NAMESPACES``): a mounted Secret's volume carries
    no annotations, so its ``nodeagent.io/namespaces`` is declared with the source."""

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.ref}"


@dataclass(frozen=True)
class SourcesSettings:
    """Where credentials come from and how their changes are followed (``run``)."""

    specs: tuple[SourceSpec, ...]
    on_secret_deleted: Literal["keep", "remove"] = "keep"
    """Keep by default: one accidental ``kubectl delete secret`` must not break pulls on every node."""
    resync_interval: float = 600.0
    """A full pass every 10 min catches anything the watches missed, at negligible cost."""
    forbidden_retry: float = 60.0
    """401/403 need a person to fix RBAC; retrying faster only floods the API server's audit log."""

    def __post_init__(self) -> None:
        if not self.specs:
            raise SettingsError("run needs at least one --secret NAMESPACE/NAME or --from-file PATH")
        if len({s.label for s in self.specs}) != len(self.specs):
            raise SettingsError("the same source is given twice")
        if self.resync_interval < 1:
            raise SettingsError("--resync-interval must be at least 1 second")
        if self.forbidden_retry < 1:
            raise SettingsError("--forbidden-retry must be at least 1 second")


@dataclass(frozen=True)
class ObserveSettings:
    """What the agent tells people: the probe/metrics endpoint, Events and Node annotations."""

    listen_host: str = "0.0.0.0"  # noqa: S104 - the kubelet's probes and Prometheus reach the pod IP
    listen_port: int = 9808
    events: bool = True
    annotations: bool = True
    event_namespace: str = "default"
    """Events about cluster-scoped Nodes live in ``default``, where ``kubectl describe node`` finds them."""


@dataclass(frozen=True)
class EcrSettings:
    """ECR tokens served to the credential-provider plugin (installed per ``sync.provider``)."""

    enabled: bool = False
    regions: tuple[str, ...] = ()
    registries: tuple[str, ...] = ()
    """ECR hosts whose tokens also go into config.json, for kubelets not wired to plugins."""
    credentials_secret: str | None = None

    def __post_init__(self) -> None:
        if (self.registries or self.regions) and not self.enabled:
            raise SettingsError("--ecr-registries and --ecr-regions need --ecr")


@dataclass(frozen=True)
class RunSettings:
    """Settings of ``nodeagent run``, by group: the host (with its provider and containerd groups,
    shared with ``sync``), the sources, what is reported, ECR, and this node."""

    sync: SyncSettings
    sources: SourcesSettings
    observe: ObserveSettings = ObserveSettings()
    ecr: EcrSettings = EcrSettings()
    node_name: str | None = None
    kubeconfig: str | None = None
    startup_taint: bool = False
    """Remove ``nodeagent.io/agent-not-ready`` from the Node once every source is read and applied,
    so that pods scheduled to a fresh node never race its first sync (``--remove-startup-taint``)."""
    drift_limit: int = 5
    """More external rewrites than this per minute is a fight with another writer: back off."""
    drift_backoff: float = 300.0

    def __post_init__(self) -> None:
        if self.startup_taint and not self.node_name:
            raise SettingsError("--remove-startup-taint needs --node-name (or NODE_NAME)")


# -- flags and NODEAGENT_* variables: one declaration each -----------------------------------------
def field_default(cls: type, name: str) -> Any:
    """The default a settings group declares for one field: the one place it is written."""
    return next(f.default for f in fields(cls) if f.name == name)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]!r} is not a number of seconds")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def ports(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in comma_list(text))
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a comma-separated list of ports") from None


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number < 65536:
        raise ValueError(f"{text[:60]!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", number  # noqa: S104 - as the default: the pod IP


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Option:
    """One setting as people give it: a flag and its ``NODEAGENT_*`` variable (derived from the
    flag: ``--resync-interval`` is ``NODEAGENT_RESYNC_INTERVAL``; ``--no-events`` is
    ``NODEAGENT_EVENTS=false``), its default (taken from its settings group), how its text is
    parsed, and its help. The command line builds its flags from these; a value from the
    environment is parsed here, at start, for every command: a bad one names its variable."""

    flag: str
    help: str = ""
    default: Any = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    switch: bool = False
    metavar: str | None = None
    env: str | None = ""
    """The variable's name after ``NODEAGENT_`` ("" derives it from the flag; None: no variable)."""
    fallback_env: str | None = None
    """A variable read when ours is not set (``POD_NAMESPACE`` from the downward API)."""
    fallback_first: bool = False
    """Read ``fallback_env`` before ours (``NODE_NAME``, which the chart sets from the downward API)."""
    default_text: str = ""
    """The default as people type it, when its parsed form reads differently (``--listen``)."""

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def negated(self) -> bool:
        return self.switch and self.flag.startswith("--no-")

    @property
    def variable(self) -> str | None:
        if self.env is None:
            return None
        return "NODEAGENT_" + (self.env or self.flag.removeprefix("--").removeprefix("no-").upper().replace("-", "_"))

    def convert(self, text: str) -> Any:
        """The value of ``text`` (ValueError with a reason when it has none)."""
        if self.switch:
            lowered = text.strip().lower()
            if lowered not in _TRUE + _FALSE:
                raise ValueError(f"{text[:40]!r} is not true or false")
            return (lowered in _TRUE) != self.negated
        if self.choices is not None and text not in self.choices:
            raise ValueError(f"{text[:40]!r} is not one of {', '.join(self.choices)}")
        return self.parse(text) if self.parse is not None else text

    def from_env(self, environ: Mapping[str, str]) -> tuple[bool, Any]:
        """(True, value) when the environment sets this option; a bad value is a SettingsError."""
        names = (self.fallback_env, self.variable) if self.fallback_first else (self.variable, self.fallback_env)
        for name in names:
            if name and environ.get(name, ""):
                try:
                    return True, self.convert(environ[name])
                except ValueError as exc:
                    raise SettingsError(f"{name} (for {self.flag}): {exc}") from None
        return False, None


HOST_OPTIONS = (
    Option("--host-root", "prefix of every host path (default /host in the container, else /)"),
    Option(
        "--kubelet-root-dir", "the kubelet's --root-dir on the host", field_default(SyncSettings, "kubelet_root_dir")
    ),
    Option("--state-dir", "ledger and lock directory on the host", field_default(SyncSettings, "state_dir")),
)
LOG_OPTIONS = (
    Option("--log-format", "", "auto", choices=("auto", "json", "console")),
    Option("--log-level", "", "info", choices=("debug", "info", "warning", "error")),
)
CONTAINERD_OPTIONS = (
    Option("--containerd-preset", "where the node's containerd config is (k3s/rke2: under /var/lib/rancher)",
           choices=tuple(sorted(CONTAINERD_PRESETS))),
    Option("--containerd-config", "containerd's config.toml on the host (default: the preset's, else "
           "/etc/containerd/config.toml; doctor looks for the running containerd's --config first)", metavar="PATH"),
    Option("--registry-config", "TOML with per-registry CA, client TLS, skip_verify, mirrors and containerd_auth "
           "(writes hosts.toml)", metavar="PATH"),
    Option("--containerd-auth", "also write credentials into containerd's config.toml (needs a containerd restart "
           "to apply)", False, switch=True),
    Option("--containerd-restart", "after a config.toml credential change: none (report 'restart pending'), signal, "
           "systemd", field_default(ContainerdSettings, "restart"), choices=RESTART_POLICIES),
    Option("--containerd-restart-interval", "at most one containerd restart per this many seconds",
           field_default(ContainerdSettings, "restart_interval"), seconds),
)  # fmt: skip
PROVIDER_OPTIONS = (
    Option("--provider-preset", "where the node's kubelet looks for plugins (eks: the AL2023 AMI's flags)",
           choices=tuple(sorted(PROVIDER_PRESETS))),
    Option("--provider-bin-dir", "the kubelet's --image-credential-provider-bin-dir (host path)"),
    Option("--provider-config", "CredentialProviderConfig file (.json or .yaml), or a directory for a file of our own"),
    Option("--socket", "agent socket (host path)", field_default(ProviderSettings, "socket")),
    Option("--credential-provider", "serve every registry's credentials through the kubelet's exec-plugin path "
           "(nodeagent-credential-provider: a rotation reaches the next pull; namespace-scoped Secrets)", False,
           switch=True),
    Option("--credential-provider-ports", "comma-separated registry ports to ask the provider for besides those in "
           "the sources (a new one needs a kubelet restart)", (), ports),
    Option("--service-account-tokens", "have the kubelet pass each pod's ServiceAccount token (k8s >= 1.33, "
           "KEP-4412): serves namespace-scoped credentials; a kubelet older than 1.33 does not start with it",
           False, switch=True),
    Option("--service-account-token-audience", "the tokens' audience (the chart grants the nodes this audience)",
           "nodeagent"),
    Option("--provider-only", "with --credential-provider: leave node-wide credentials out of config.json (every "
           "kubelet must run the provider, i.e. have been restarted since it was installed)", False, switch=True),
)  # fmt: skip
SOURCE_OPTIONS = (
    Option("--on-secret-deleted", "", field_default(SourcesSettings, "on_secret_deleted"), choices=("keep", "remove")),
    Option("--resync-interval", "seconds between full passes", field_default(SourcesSettings, "resync_interval"),
           seconds),
    Option("--forbidden-retry", "seconds between retries after 401/403",
           field_default(SourcesSettings, "forbidden_retry"), seconds),
)  # fmt: skip
_LISTEN_DEFAULT = (field_default(ObserveSettings, "listen_host"), field_default(ObserveSettings, "listen_port"))
LISTEN_OPTION = Option(
    "--listen",
    "HOST:PORT of /healthz, /readyz, /metrics",
    _LISTEN_DEFAULT,
    listen_address,
    default_text=f"{_LISTEN_DEFAULT[0]}:{_LISTEN_DEFAULT[1]}",
)
OBSERVE_OPTIONS = (
    LISTEN_OPTION,
    Option("--no-events", "do not create Events", False, switch=True),
    Option("--no-annotations", "do not annotate the Node", False, switch=True),
    Option("--event-namespace", "", field_default(ObserveSettings, "event_namespace")),
)
ECR_OPTIONS = (
    Option("--ecr", "serve ECR tokens", False, switch=True),
    Option("--ecr-regions", "regions to keep warm (comma-separated)", (), comma_list),
    Option("--ecr-registries", "ECR hosts whose tokens also go into config.json (for kubelets without plugin flags)",
           (), comma_list),
    Option("--ecr-credentials-secret", "a Secret with aws_access_key_id/aws_secret_access_key (default: botocore's "
           "credential chain)", metavar="NAMESPACE/NAME"),
)  # fmt: skip
NODE_OPTIONS = (
    Option("--kubeconfig", "default: in-cluster config"),
    Option("--node-name", "this Node's name (default: NODE_NAME, from the downward API)", fallback_env="NODE_NAME",
           fallback_first=True),
    Option("--remove-startup-taint", "remove the nodeagent.io/agent-not-ready taint from this Node once every source "
           "is read and applied", False, switch=True),
)  # fmt: skip
SECRETS_OPTION = Option(
    "--secret", "a dockerconfigjson/dockercfg Secret to watch (repeatable; comma-separated in the variable)",
    (), comma_list, metavar="NAMESPACE/NAME", env="SECRETS",
)  # fmt: skip
FROM_FILE_OPTION = Option(
    "--from-file", "a .dockerconfigjson or .dockercfg file (repeatable; later files win per registry; "
    "comma-separated in the variable)", (), comma_list, metavar="PATH",
)  # fmt: skip
FROM_FILE_SCOPED_OPTION = Option(
    "--from-file-scoped",
    "PATH=NAMESPACES: a file served only to pods of these namespaces (names and '*' globs, comma-separated, as "
    "the nodeagent.io/namespaces annotation, which a mounted Secret's volume does not carry; repeatable)",
    (),
    metavar="PATH=NAMESPACES",
    env=None,
)
NAMESPACE_OPTION = Option("--namespace", "the chart's namespace", "default", fallback_env="POD_NAMESPACE")
ALL_OPTIONS: tuple[Option, ...] = (
    *HOST_OPTIONS, *LOG_OPTIONS, *CONTAINERD_OPTIONS, *PROVIDER_OPTIONS, *SOURCE_OPTIONS, *OBSERVE_OPTIONS,
    *ECR_OPTIONS, *NODE_OPTIONS, SECRETS_OPTION, FROM_FILE_OPTION, NAMESPACE_OPTION,
)  # fmt: skip
"""Every option with a variable: main() reads them all at start, whatever the command."""


def check_environment(environ: Mapping[str, str]) -> None:
    """Parse every ``NODEAGENT_*`` variable that is set (a SettingsError names the first bad one)."""
    for option in ALL_OPTIONS:
        option.from_env(environ)
