"""``nodeagent doctor``: why can't this node pull my image?

Discovers the kubelet (and containerd) with psutil when the host's processes are visible, falls
back to the configured paths and says so, and produces findings: each with an id, a severity, what
was seen, why it matters and the fix. Reads only; never writes. Never prints a credential.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from nodeagent.config import CONTAINERD_PRESETS
from nodeagent.containerd_restart import process_start_time
from nodeagent.credentials import safe_key
from nodeagent.decoding import DecodeError, loads_json, loads_toml, loads_yaml
from nodeagent.ecr.plugin import API_VERSIONS, CACHE_FILE, MIN_REMAINING
from nodeagent.errors import HostFSError, InputError, SymlinkRefused, TargetError
from nodeagent.hostfs import TEMP_MARKER, HostFS
from nodeagent.keyring import lookup
from nodeagent.ledger import Ledger
from nodeagent.registries import InvalidRegistry, normalise_key
from nodeagent.registry_settings import DOCKER_HUB_ALIASES
from nodeagent.targets.containerd import detect_setup, dropin_path, is_managed
from nodeagent.targets.kubelet import entry_credential, kubelet_entries, kubelet_problems
from nodeagent.targets.provider import PLUGIN_NAME, PROVIDER_CONFIG_FILE, STATIC_PLUGIN_NAME

__all__ = ["SCHEMA_VERSION", "Finding", "NodeFacts", "Report", "discover", "run_doctor"]

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
                facts.kubelet_started = process_start_time(proc.pid, proc.create_time())
                facts.kubelet_version = _kubelet_version(f"/proc/{proc.pid}/exe")
            elif "containerd" in (name, exe) and facts.containerd_pid is None:
                facts.containerd_pid = proc.pid
                facts.containerd_config = _flag(cmdline, "--config") or _flag(cmdline, "-c")
                facts.containerd_started = process_start_time(proc.pid, proc.create_time())
        except (psutil.Error, OSError):
            continue
    return facts


class _Doctor:
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

    # -- kubelet config.json ----------------------------------------------------------------
    def search_order(self) -> list[str]:
        facts = self.facts
        paths = [f"{facts.kubelet_root_dir.rstrip('/')}/config.json"]
        if facts.kubelet_cwd:
            paths.append(f"{facts.kubelet_cwd.rstrip('/')}/config.json")
        if facts.kubelet_home:
            paths.append(f"{facts.kubelet_home.rstrip('/')}/.docker/config.json")
        paths.append("/.docker/config.json")
        return paths

    def check_kubelet(self) -> None:
        facts = self.facts
        if facts.source == "settings":
            self.add(
                "discovery.kubelet-not-found",
                "info",
                f"no kubelet process visible; using --kubelet-root-dir {facts.kubelet_root_dir}",
                "the kubelet's real --root-dir, working directory and HOME decide where it looks",
                "run doctor on the node itself, or in a pod with hostPID, for a full answer",
            )
        elif facts.kubelet_root_dir != self.agent_root_dir:
            self.add(
                "kubelet.root-dir-mismatch",
                "error",
                f"the kubelet runs with --root-dir {facts.kubelet_root_dir}; "
                f"nodeagent writes {self.agent_root_dir}/config.json",
                "the kubelet never reads a config.json outside its own search path",
                f"set --kubelet-root-dir {facts.kubelet_root_dir} (chart: kubeletRootDir or the right distribution)",
            )
        ours = f"{self.agent_root_dir.rstrip('/')}/config.json"
        for path in self.search_order():
            content = self._read(path)
            if content is None:
                continue
            try:
                document = loads_json(content, surrogates="replace")  # as the kubelet (Go) reads it
            except DecodeError:
                document = None
            problems = kubelet_problems(document)
            if problems:
                self.add(
                    "kubelet.config.unparseable",
                    "error",
                    f"{path}: {'; '.join(problems)[:500]}",
                    "the kubelet ignores the whole file and moves on to the next place it looks",
                    "fix or remove the entry named; nodeagent never writes such a file itself",
                )
                continue
            self.used = (path, document)
            break
        if self.used is None:
            self.add(
                "kubelet.config.missing",
                "error",
                f"no readable config.json in the kubelet's search path ({', '.join(self.search_order())})",
                "the kubelet has no node credentials: private pulls fail unless pods carry imagePullSecrets",
                "check the agent is running on this node (kubectl -n <ns> get pods -o wide) and its logs",
            )
            return
        path, document = self.used
        if path != ours:
            self.add(
                "kubelet.config.not-ours",
                "warning",
                f"the kubelet reads {path}, not {ours}",
                "the first config.json that exists and parses wins; files are never merged",
                f"make {ours} the one the kubelet finds first (it is first when --root-dir is right)",
            )
        self._check_file_details(path, document)

    def _check_file_details(self, path: str, document: dict[str, Any]) -> None:
        try:
            st = os.stat(self.fs.real_path(path))
        except OSError:
            st = None
        if st is not None:
            if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != 0:
                self.add(
                    "kubelet.config.permissions",
                    "warning",
                    f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}",
                    "it holds registry passwords: anyone who can read it can pull what the node can",
                    f"chmod 600 {path}; chown root:root {path}",
                )
            age = time.time() - st.st_mtime
            if age < KUBELET_CACHE_SECONDS:
                self.add(
                    "kubelet.config.recently-changed",
                    "info",
                    f"{path} changed {age:.0f} s ago",
                    "the kubelet caches config.json for 5 minutes and does not watch it",
                    f"a pull may use the old credentials for up to {KUBELET_CACHE_SECONDS - age:.0f} s more; "
                    "no restart is needed",
                )
        for name in ("credsStore", "credHelpers"):
            if name in document:
                self.add(
                    f"kubelet.config.{name.lower()}",
                    "info",
                    f"{path} has '{name}'",
                    "the kubelet ignores credential helpers; only auths entries count",
                    "nothing to do unless you expected the helper to supply node credentials",
                )
        for key, entry in kubelet_entries(document).items():
            if not isinstance(entry, dict):
                continue
            fields = {k.lower() for k, v in entry.items() if v}
            if fields and fields <= {"identitytoken", "registrytoken", "email"}:
                self.add(
                    "kubelet.config.token-only-entry",
                    "warning",
                    f"entry {safe_key(key)} has only identitytoken/registrytoken",
                    "the kubelet ignores those fields: this entry gives no credentials",
                    "give the entry auth or username/password",
                )
            try:
                registry = normalise_key(key)
            except InvalidRegistry:
                continue
            if registry in DOCKER_HUB_KEYS:
                self.add(
                    "kubelet.config.docker-hub",
                    "warning",
                    f"a Docker Hub credential is on the node ({safe_key(key)})",
                    "if it is wrong, the kubelet does not retry anonymously: public Docker Hub pulls break too",
                    "keep it valid (or remove it); doctor --probe checks it",
                )

    # -- nodeagent's own state ---------------------------------------------------------------
    def check_state(self) -> None:
        ledger_path = f"{self.state_dir.rstrip('/')}/state.json"
        try:
            ledger = Ledger.load(self.fs.read(ledger_path), source=ledger_path)
        except (InputError, HostFSError) as exc:
            self.add(
                "state.ledger-unreadable",
                "error",
                str(exc),
                "nodeagent cannot tell what it owns",
                "see the agent's logs",
            )
            return
        if not ledger.files:
            self.add(
                "state.nothing-managed",
                "warning",
                "nodeagent manages no files on this node",
                "the agent has not synced here (not scheduled, not ready, or no source)",
                "kubectl -n <ns> get pods -o wide; check the pod on this node",
            )
        else:
            self.add(
                "state.revision",
                "info",
                f"credentials revision {ledger.revision} applied",
                fix="compare with other nodes' nodeagent.io/credentials-revision",
            )
        for path, record in ledger.files.items():
            if record.target != "kubelet":
                continue
            content = self._read(path)
            try:
                document = loads_json(content, surrogates="replace") if content else {}
            except DecodeError:
                document = {}  # reported by check_kubelet as unparseable
            present = set(kubelet_entries(document))
            missing = sorted(set(record.owned) - present)
            if missing:
                self.add(
                    "state.ledger-mismatch",
                    "warning",
                    f"{path} lacks {len(missing)} entries nodeagent wrote "
                    f"({', '.join(safe_key(k, 60) for k in missing[:5])})",
                    "something else changed the file; the agent repairs drift within a second when it runs",
                    "check the agent is running; look for another tool writing the file",
                )
        for directory in {self.agent_root_dir, self.state_dir}:
            leftovers = self.fs.leftover_temp_files(directory)
            if leftovers:
                self.add(
                    "state.temp-files",
                    "warning",
                    f"{len(leftovers)} temp files in {directory} ({', '.join(leftovers[:3])})",
                    "an agent was killed mid-write; they are harmless and swept on the next write",
                    "let the agent run once, or remove files named *" + TEMP_MARKER + "*",
                )

    # -- containerd -----------------------------------------------------------------------------
    def check_containerd(self) -> list[str]:
        """Report containerd's registry setup; return its hosts.toml roots (``config_path``)."""
        path = self.facts.containerd_config or CONTAINERD_PRESETS["kubeadm"]
        content = self._read(path)
        if content is None:
            self.add(
                "containerd.config-missing",
                "info",
                f"no containerd config at {path}",
                "containerd runs with built-in defaults: no per-registry CA, TLS or mirror settings",
                "nothing to do unless you expected registry settings (give --containerd-config for another path)",
            )
            return []
        try:
            document = loads_toml(content)
        except DecodeError as exc:
            self.add(
                "containerd.config-unparseable",
                "error",
                f"{path}: {str(exc)[:200]}",
                "containerd does not start with a config it cannot parse",
                "fix the TOML",
            )
            return []
        try:
            setup = detect_setup(path, content)  # the agent's own reading: version, roots, drop-in
        except TargetError as exc:
            self.add(
                "containerd.config-unsupported",
                "warning",
                f"{path}: {exc.reason}",
                "nodeagent manages registry settings only in version 2 and 3 configs",
                "migrate the config with 'containerd config migrate'",
            )
            return []
        plugin, roots = setup.plugin, list(setup.roots)
        self.add(
            "containerd.config",
            "info",
            f"{path}: version {setup.version}, plugin {plugin}, config_path {':'.join(roots) or '(not set)'}",
            "" if roots else "without config_path containerd reads no hosts.toml (per-registry CA, TLS, mirrors)",
            "" if roots else f'set [plugins."{plugin}".registry] config_path = "/etc/containerd/certs.d"',
        )
        registry = ((document.get("plugins") or {}).get(plugin) or {}).get("registry") or {}
        configs = {h: c for h, c in (registry.get("configs") or {}).items() if isinstance(c, dict) and c.get("auth")}
        changed = [path]
        dropin = dropin_path(setup)
        dropin_content = self._read(dropin) if dropin else None
        if dropin is not None and dropin_content is not None and is_managed(dropin_content):
            changed.append(dropin)
            try:
                extra = loads_toml(dropin_content)
            except DecodeError:
                extra = {}
            extra_registry = ((extra.get("plugins") or {}).get(plugin) or {}).get("registry") or {}
            configs.update(extra_registry.get("configs") or {})
        if configs:
            self.add(
                "containerd.registry-auth",
                "info",
                f"config.toml has credentials for {', '.join(sorted(configs))}",
                "used only for pulls where the kubelet sends no credentials over CRI",
                "a change to them needs a containerd restart",
            )
        if self.facts.containerd_started is not None:
            mtimes = {}
            for changed_path in changed:
                try:
                    mtimes[changed_path] = os.stat(self.fs.real_path(changed_path)).st_mtime
                except OSError:
                    continue
            newer = [p for p, mtime in mtimes.items() if mtime > self.facts.containerd_started]
            if newer:
                self.add(
                    "containerd.restart-pending",
                    "warning",
                    f"{', '.join(newer)} changed after containerd started",
                    "containerd reads config.toml only at start: the change is not in effect",
                    "restart containerd when convenient (systemctl restart containerd)",
                )
        managed: list[str] = []
        own: list[str] = []
        for root in roots:
            self._check_hosts_root(root, managed, own)
        if managed or own:
            self.add(
                "containerd.hosts",
                "info",
                f"hosts.toml managed by nodeagent: {', '.join(managed) or 'none'}; "
                f"the node's own (never changed by nodeagent): {', '.join(own) or 'none'}",
                "hosts.toml is re-read on every pull: changes apply without a restart",
                "delete the first line of a managed file to keep it as the node's own",
            )
        return roots

    def _check_hosts_root(self, root: str, managed: list[str], own: list[str]) -> None:
        real_root = self.fs.real_path(root)
        try:
            hosts = sorted(os.listdir(real_root))
        except OSError:
            return
        for host in hosts:
            hosts_toml = f"{root.rstrip('/')}/{host}/hosts.toml"
            content = self._read(hosts_toml)
            if content is None:
                continue
            (managed if is_managed(content) else own).append(host)
            try:
                document = loads_toml(content)
            except DecodeError as exc:
                self.add(
                    "containerd.hosts-unparseable",
                    "error",
                    f"{hosts_toml}: {str(exc)[:200]}",
                    "containerd fails pulls from this registry",
                    "fix the TOML",
                )
                continue
            tables = document.get("host")
            # The registry itself at the top level (server), then each [host."URL"] table.
            sections = [("server", document)] + (
                [(f'[host."{url}"]', t) for url, t in tables.items() if isinstance(t, dict)]
                if isinstance(tables, dict)
                else []
            )
            for where, settings in sections:
                for ca in _strings(settings.get("ca")):
                    ca_path = ca if ca.startswith("/") else f"{root.rstrip('/')}/{host}/{ca}"
                    problem = _certificate_problem(self._read(ca_path))
                    if problem:
                        self.add(
                            "containerd.ca-invalid",
                            "error",
                            f"{hosts_toml} {where} ca {ca_path}: {problem}",
                            "TLS to the registry fails: x509: certificate signed by unknown authority",
                            "put the registry's current CA certificate (PEM) at that path",
                        )

    def check_image_pull_policy(self) -> None:
        """KEP-2535: who may use an image pulled with node credentials (kubelet >= 1.33)."""
        path = self.facts.kubelet_config
        content = self._read(path) if path else None
        if path is None or content is None:
            return
        try:
            document = loads_yaml(content)
        except DecodeError:
            return  # the kubelet's own file: not ours to judge beyond this one field
        policy = document.get("imagePullCredentialsVerificationPolicy") if isinstance(document, dict) else None
        shown = policy if isinstance(policy, str) else "not set (the kubelet's default, NeverVerifyPreloadedImages)"
        self.add(
            "kubelet.image-pull-policy",
            "info",
            f"{path}: imagePullCredentialsVerificationPolicy {shown}",
            "AlwaysVerify: a pod may use a cached image only with credentials that pulled it; otherwise an image "
            "pulled with node credentials (config.json, a plugin without ServiceAccount tokens) serves every pod",
            "for private images, use AlwaysVerify with namespace-scoped credentials (docs/security.md)"
            if policy != "AlwaysVerify"
            else "nothing to do",
        )

    # -- credential provider ------------------------------------------------------------------
    def check_provider(self) -> None:
        facts = self.facts
        if not facts.provider_config:
            return
        config_path = facts.provider_config
        if os.path.isdir(self.fs.real_path(config_path)):
            config_path = config_path.rstrip("/") + "/" + PROVIDER_CONFIG_FILE
        content = self._read(config_path)
        if content is None:
            self.add(
                "provider.config-missing",
                "error",
                f"{config_path} does not exist",
                "the kubelet runs no plugin for ECR images",
                "nodeagent install-provider, or run the agent with --ecr",
            )
            return
        try:
            document = loads_json(content) if config_path.endswith(".json") else loads_yaml(content)
            providers = {p["name"]: p for p in document.get("providers", [])}
        except (DecodeError, AttributeError, KeyError, TypeError):
            self.add(
                "provider.config-unparseable",
                "error",
                f"{config_path} is not a CredentialProviderConfig",
                "the kubelet fails to start or ignores it",
                "fix the file",
            )
            return
        ours = {name: providers[name] for name in (PLUGIN_NAME, STATIC_PLUGIN_NAME) if name in providers}
        if not ours:
            self.add(
                "provider.not-listed",
                "error",
                f"neither {PLUGIN_NAME} nor {STATIC_PLUGIN_NAME} is in {config_path}",
                "the kubelet never runs nodeagent's plugin",
                "run the agent with --ecr or --credential-provider (or nodeagent install-provider)",
            )
            return
        for name, entry in ours.items():
            self._check_provider_entry(name, entry)
        static = ours.get(STATIC_PLUGIN_NAME)
        if isinstance(static, dict) and isinstance(static.get("matchImages"), list):
            self.static_match_images = [str(p) for p in static["matchImages"]]
        self._check_restart_pending(config_path)
        if PLUGIN_NAME not in ours:
            self._check_python()
            return
        self._check_python()
        self._check_token_cache()
        self._check_socket()

    def _check_python(self) -> None:
        if not any(
            os.access(self.fs.real_path(p), os.X_OK)
            for p in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
        ):
            self.add(
                "provider.no-python",
                "error",
                "no python3 on the host",
                "the plugin's #!/usr/bin/env python3 cannot start",
                "install python3 on the node image",
            )

    def _check_provider_entry(self, name: str, entry: Any) -> None:
        facts = self.facts
        if not isinstance(entry, dict):
            return
        if entry.get("apiVersion") not in API_VERSIONS:
            self.add(
                "provider.api-version",
                "error",
                f"{name}: apiVersion {entry.get('apiVersion')!r}",
                "the kubelet rejects the plugin's answers",
                "use credentialprovider.kubelet.k8s.io/v1",
            )
        if facts.provider_bin_dir:
            plugin = f"{facts.provider_bin_dir.rstrip('/')}/{name}"
            real = self.fs.real_path(plugin)
            if not os.path.isfile(real) or not os.access(real, os.X_OK):
                self.add(
                    "provider.plugin-missing",
                    "error",
                    f"{plugin} is missing or not executable",
                    "the kubelet cannot run it",
                    "run the agent with --ecr or --credential-provider",
                )
        if name != STATIC_PLUGIN_NAME:
            return
        raw_args = entry.get("args")
        args = [str(a) for a in raw_args] if isinstance(raw_args, list) else []
        credentials = args[args.index("--credentials") + 1] if "--credentials" in args[:-1] else None
        if credentials is None or self._read(credentials) is None:
            self.add(
                "provider.credentials-missing",
                "error",
                f"{STATIC_PLUGIN_NAME} has no credentials file ({credentials or 'no --credentials argument'})",
                "the plugin answers every pull with an error: the kubelet falls back to config.json alone",
                "run the agent with --credential-provider (it writes the file on its first pass)",
            )
        if isinstance(entry.get("tokenAttributes"), dict):
            minor = _minor(facts.kubelet_version)
            if minor is not None and minor < 33:
                self.add(
                    "provider.token-attributes-unsupported",
                    "error",
                    f"{STATIC_PLUGIN_NAME} has tokenAttributes, and the kubelet is {facts.kubelet_version}",
                    "a kubelet older than 1.33 refuses this config at its next start (the node goes NotReady)",
                    "remove --service-account-tokens (chart: credentialProvider.serviceAccountTokens.enabled) "
                    "before restarting the kubelet, or upgrade it to 1.34",
                )
            elif minor is None:
                self.add(
                    "provider.token-attributes-unchecked",
                    "warning",
                    f"{STATIC_PLUGIN_NAME} has tokenAttributes and the kubelet's version is unknown",
                    "a kubelet older than 1.33 refuses this config at start; 1.33 needs the "
                    "KubeletServiceAccountTokenForCredentialProviders feature gate (on by default from 1.34)",
                    "check `kubelet --version` before restarting the kubelet",
                )

    def _check_restart_pending(self, config_path: str) -> None:
        """The kubelet reads its provider config only at start: a config changed since it started
        is not in effect."""
        started = self.facts.kubelet_started
        try:
            changed = os.stat(self.fs.real_path(config_path)).st_mtime
        except OSError:
            return
        if started is not None and changed > started:
            self.add(
                "provider.kubelet-restart-pending",
                "warning",
                f"{config_path} changed after the kubelet started",
                "the kubelet still runs with its old provider config: the new provider is not asked yet",
                "restart the kubelet once (systemctl restart kubelet)",
            )

    def _check_token_cache(self) -> None:
        path = f"{self.state_dir.rstrip('/')}/{CACHE_FILE}"
        content = self._read(path)
        if content is None:
            self.add(
                "provider.token-cache-missing",
                "warning",
                f"no token cache at {path}",
                "every pull asks the agent over its socket",
                "check the agent runs with --ecr",
            )
            return
        try:
            document = loads_json(content)
        except DecodeError:
            document = {}
        tokens = document.get("tokens", {}) if isinstance(document, dict) else {}
        if not isinstance(tokens, dict):
            tokens = {}
        tokens = {
            k: v for k, v in tokens.items() if isinstance(v, dict) and isinstance(v.get("expiresAt", 0), (int, float))
        }
        now = time.time()
        for key, entry in tokens.items():
            left = float(entry.get("expiresAt", 0)) - now
            if left <= MIN_REMAINING:
                self.add(
                    "provider.token-stale",
                    "warning",
                    f"ECR token for {key} has {max(left, 0) / 60:.0f} min left",
                    "the plugin will not hand it out",
                    "check the agent's ecr_token_failed logs and the node's clock",
                )

    def _check_socket(self) -> None:
        real = self.fs.real_path(self.socket_path)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(5)
                conn.connect(real)
                conn.sendall(b'{"key": "doctor-ping"}\n')
                answer = conn.recv(4096)
        except OSError as exc:
            self.add(
                "provider.socket-down",
                "error",
                f"the agent socket {self.socket_path} does not answer ({exc.strerror or exc})",
                "a cache miss fails the pull",
                "check the agent pod on this node",
            )
            return
        if b"error" not in answer:
            self.add(
                "provider.socket-odd",
                "warning",
                "the agent socket answered unexpectedly",
                "",
                "check the agent version",
            )


def _certificate_problem(content: bytes | None) -> str | None:
    if content is None:
        return "missing"
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(content)
    except ValueError:
        return "not a PEM certificate"
    now = time.time()
    for certificate in certificates:
        if certificate.not_valid_after_utc.timestamp() < now:
            return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
        if certificate.not_valid_before_utc.timestamp() > now:
            return f"not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
    return None


def containerd_hosts_for(fs: HostFS, roots: list[str], image: str) -> str | None:
    """The hosts.toml containerd uses for an image: ``<root>/<host[:port]>/hosts.toml``, else ``_default``."""
    from nodeagent.keyring import image_registry_path, is_docker_hub_image

    host = "docker.io" if is_docker_hub_image(image) else image_registry_path(image).split("/", 1)[0]
    for name in (host, "_default"):
        for root in roots:
            candidate = f"{root.rstrip('/')}/{name}/hosts.toml"
            if os.path.isfile(fs.real_path(candidate)):
                return candidate
    return None


def check_image(
    report: Report, used: tuple[str, dict[str, Any]] | None, image: str, provider_patterns: list[tuple[str, str]]
) -> None:
    """Which credentials the kubelet would try for ``image``, in order, and which providers it calls."""
    keys = list(kubelet_entries(used[1])) if used else []
    matches, providers = lookup(image, keys, provider_patterns)
    report.image = {
        "image": image,
        "configJson": used[0] if used else None,
        "credentials": [{"key": m.key, "normalised": m.normalised, "reason": m.reason} for m in matches],
        "providers": providers,
    }
    if not matches and not providers:
        report.findings.append(
            Finding(
                "image.no-credentials",
                "warning",
                f"no node credential matches {image}",
                "the kubelet pulls anonymously (or with the pod's imagePullSecrets)",
                "add the registry to the central Secret (exact host, port and path prefix matter)",
            )
        )


def _strings(value: Any) -> list[str]:
    """A TOML value that should be a string or a list of strings, as a list (anything else: none)."""
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def registry_tls(fs: HostFS, roots: Sequence[str], host: str) -> dict[str, Any]:
    """The TLS settings containerd uses for ``host`` from its hosts.toml (top level: ``ca``,
    ``client``, ``skip_verify``), as real paths: the probe connects as the node does."""
    for root in roots:
        hosts_toml = f"{root.rstrip('/')}/{host}/hosts.toml"
        try:
            content = fs.read(hosts_toml)
            document = loads_toml(content) if content is not None else None
        except (HostFSError, DecodeError):
            continue
        if document is None:
            continue
        base = f"{root.rstrip('/')}/{host}"

        def real(path: str, base: str = base) -> str:
            return fs.real_path(path if path.startswith("/") else f"{base}/{path}")

        client = document.get("client")
        pair = None
        if isinstance(client, str):
            pair = (real(client), real(client))
        elif isinstance(client, list) and client:
            first = client[0]
            if isinstance(first, str) and len(client) == 2 and isinstance(client[1], str):
                pair = (real(first), real(client[1]))
            elif isinstance(first, list) and len(_strings(first)) == 2:
                pair = (real(first[0]), real(first[1]))
        return {
            "ca_files": tuple(real(c) for c in _strings(document.get("ca"))),
            "client_cert": pair,
            "skip_verify": document.get("skip_verify") is True,
        }
    return {}


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
    doctor.check_state()
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
    if report.image is not None:
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
