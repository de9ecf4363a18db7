"""doctor's credential-provider checks."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from nodeagent.ecr.plugin import API_VERSIONS, CACHE_FILE, MIN_REMAINING
from nodeagent.errors import TargetError
from nodeagent.model.decoding import DecodeError, loads_json
from nodeagent.targets.provider import (
    PLUGIN_NAME,
    PROVIDER_CONFIG_FILE,
    SCOPED_PLUGIN_NAME,
    STATIC_PLUGIN_NAME,
    kubelet_view,
    load_provider_config,
)

from .base import Checks
from .facts import _minor


class ProviderChecks(Checks):
    """The kubelet's credential providers: the config, each of our entries, the plugin and the
    host's python, the ECR token cache and the agent's socket."""

    def check_provider(self) -> None:
        facts = self.facts
        if not facts.provider_config:
            return
        config_path = facts.provider_config
        # The whole config as the kubelet reads it at start (every file of a directory, merged,
        # and each provider's binary): the agent's plans are judged by the same model.
        refused = kubelet_view(self.fs, config_path=config_path, bin_dir=facts.provider_bin_dir)
        if refused is not None:
            self.add(
                "provider.kubelet-refuses-config",
                "error",
                f"the kubelet would not start with {config_path}: {refused}",
                "its next start (a reboot, an upgrade) fails and the node goes NotReady",
                "fix or remove the file named; the agent leaves the kubelet's files as they are until then",
            )
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
        try:  # the provider target's own reader: what it refuses to merge into, doctor reports
            fmt = "json" if config_path.endswith(".json") else "yaml"
            document = load_provider_config(content, config_path, fmt)
        except TargetError as exc:
            self.add(
                "provider.config-unparseable",
                "error",
                f"{config_path} is not a usable CredentialProviderConfig: {exc.reason}",
                "the kubelet fails to start or ignores it, and the agent will not merge into it",
                "fix the file",
            )
            return
        providers = {
            p["name"]: p
            for p in document.get("providers", [])
            if isinstance(p, dict) and isinstance(p.get("name"), str)
        }
        names = (PLUGIN_NAME, STATIC_PLUGIN_NAME, SCOPED_PLUGIN_NAME)
        ours = {name: providers[name] for name in names if name in providers}
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
        if name not in (STATIC_PLUGIN_NAME, SCOPED_PLUGIN_NAME):
            return
        raw_args = entry.get("args")
        args = [str(a) for a in raw_args] if isinstance(raw_args, list) else []
        credentials = args[args.index("--credentials") + 1] if "--credentials" in args[:-1] else None
        if credentials is None or self._read(credentials) is None:
            self.add(
                "provider.credentials-missing",
                "error",
                f"{name} has no credentials file ({credentials or 'no --credentials argument'})",
                "the plugin answers every pull with an error: the kubelet falls back to config.json alone",
                "run the agent with --credential-provider (it writes the file on its first pass)",
            )
        if isinstance(entry.get("tokenAttributes"), dict) and name == STATIC_PLUGIN_NAME:
            self.add(
                "provider.node-wide-needs-token",
                "warning",
                f"{name} has tokenAttributes",
                "when the kubelet cannot get a pod's ServiceAccount token (an API server outage) it skips this "
                "provider, so node-wide credentials are not served either (with --provider-only, pulls fail)",
                "run this version of the agent: scoped credentials get their own entry "
                f"({SCOPED_PLUGIN_NAME}) and the node-wide one asks for no token; restart the kubelet once",
            )
        if isinstance(entry.get("tokenAttributes"), dict):
            minor = _minor(facts.kubelet_version)
            if minor is not None and minor < 33:
                self.add(
                    "provider.token-attributes-unsupported",
                    "error",
                    f"{name} has tokenAttributes, and the kubelet is {facts.kubelet_version}",
                    "a kubelet older than 1.33 refuses this config at its next start (the node goes NotReady)",
                    "remove --service-account-tokens (chart: credentialProvider.serviceAccountTokens.enabled) "
                    "before restarting the kubelet, or upgrade it to 1.34",
                )
            elif minor is None:
                self.add(
                    "provider.token-attributes-unchecked",
                    "warning",
                    f"{name} has tokenAttributes and the kubelet's version is unknown",
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
