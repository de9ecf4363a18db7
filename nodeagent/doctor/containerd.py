"""doctor's containerd checks: config.toml and hosts.toml, read with the containerd target's parsers."""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from nodeagent.config import CONTAINERD_PRESETS
from nodeagent.errors import HostFSError, TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.decoding import DecodeError, loads_toml
from nodeagent.targets.containerd import detect_setup, dropin_path, is_managed

from .base import Checks


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


class ContainerdChecks(Checks):
    """containerd's config (read with the containerd target's own setup detection) and its
    hosts.toml directories."""

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


def containerd_hosts_for(fs: HostFS, roots: list[str], image: str) -> str | None:
    """The hosts.toml containerd uses for an image: ``<root>/<host[:port]>/hosts.toml``, else ``_default``."""
    from nodeagent.model.keyring import image_registry_path, is_docker_hub_image

    host = "docker.io" if is_docker_hub_image(image) else image_registry_path(image).split("/", 1)[0]
    for name in (host, "_default"):
        for root in roots:
            candidate = f"{root.rstrip('/')}/{name}/hosts.toml"
            if os.path.isfile(fs.real_path(candidate)):
                return candidate
    return None


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

        # The registry's own origin may carry its TLS in a [host."https://HOST"] table rather than
        # at the top level: containerd uses that table's settings when it talks to that origin.
        tables = [document]
        for url, table in (document.get("host") or {}).items() if isinstance(document.get("host"), dict) else ():
            parts = urllib.parse.urlsplit(str(url))
            if isinstance(table, dict) and parts.scheme == "https" and parts.netloc == host:
                tables.append(table)
        pair = next((p for p in (_client_pair(t.get("client"), real) for t in reversed(tables)) if p), None)
        return {
            "ca_files": tuple(real(c) for t in tables for c in _strings(t.get("ca"))),
            "client_cert": pair,
            "skip_verify": any(t.get("skip_verify") is True for t in tables),
        }
    return {}


def _client_pair(client: Any, real: Callable[[str], str]) -> tuple[str, str] | None:
    """hosts.toml's ``client``: one combined file, a [cert, key] pair, or a list of pairs (the first)."""
    if isinstance(client, str):
        return (real(client), real(client))
    if isinstance(client, list) and client:
        first = client[0]
        if isinstance(first, str) and len(client) == 2 and isinstance(client[1], str):
            return (real(first), real(client[1]))
        if isinstance(first, list) and len(_strings(first)) == 2:
            return (real(first[0]), real(first[1]))
    return None
