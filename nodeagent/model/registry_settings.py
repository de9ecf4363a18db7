"""Per-registry settings a Secret cannot carry, from ``--registry-config`` (TOML).

One table per registry host::

    [registries."harbor.internal:8443"]
    ca = "/etc/nodeagent/ca/harbor.crt"      # a path, or the PEM itself
    client_cert = "/etc/nodeagent/tls/client.crt"
    client_key = "/etc/nodeagent/tls/client.key"
    skip_verify = false
    mirrors = ["https://mirror.internal:5000",                        # gets no credentials
               { url = "https://cache.internal", credentials = true }]  # gets this registry's
    override_path = false                    # mirrors' URLs carry the full API path
    containerd_auth = "config"               # "config" | "header" | "none"

Everything is validated here, when the file is loaded: the host passes the strict host validator,
certificates parse as PEM, files exist and the client key matches its certificate. A registry
with a bad setting is rejected alone and named; the others apply. Paths are read in the agent's
own filesystem (a mounted ConfigMap or Secret), and their contents are copied to the node next
to the ``hosts.toml`` that uses them, so containerd never depends on the agent's mounts.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from nodeagent.errors import SettingsError
from nodeagent.model.credentials import EntryProblem
from nodeagent.model.decoding import DecodeError, loads_toml
from nodeagent.model.registries import InvalidRegistry, check_containerd_host, validate_registry_host

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ALIASES",
    "ContainerdAuth",
    "RegistrySettings",
    "SettingsLoad",
    "containerd_namespace",
    "load_registry_settings",
    "parse_registry_settings",
]

ContainerdAuth = Literal["config", "header", "none"]
AUTH_MODES: tuple[ContainerdAuth, ...] = ("config", "header", "none")
DOCKER_HUB = "docker.io"
"""containerd's namespace (and ``certs.d`` directory) for Docker Hub."""
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_SETTINGS_BYTES = 4 * 1024 * 1024
_KEYS = frozenset({"ca", "client_cert", "client_key", "skip_verify", "mirrors", "override_path", "containerd_auth"})


@dataclass(frozen=True)
class RegistrySettings:
    """One registry's TLS, mirror and containerd-auth settings, validated and with file contents read."""

    host: str
    """containerd's name for the registry (``docker.io`` for Docker Hub), lower-case host."""
    ca: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)
    skip_verify: bool = False
    mirrors: tuple[str, ...] = ()
    credential_mirrors: frozenset[str] = frozenset()
    """Mirrors that get this registry's credential (``credentials = true``); the others get none,
    so a password never reaches a host the settings did not name for it."""
    override_path: bool = False
    containerd_auth: ContainerdAuth = "config"
    """``config``: credentials go to config.toml when ``--containerd-auth`` is on (restart needed);
    ``header``: a static Basic ``Authorization`` header in hosts.toml (no restart; Basic-only
    registries); ``none``: containerd gets no credentials for this host from nodeagent."""

    @property
    def needs_hosts_toml(self) -> bool:
        return bool(self.ca or self.client_cert or self.skip_verify or self.mirrors or self.containerd_auth == "header")


@dataclass(frozen=True)
class SettingsLoad:
    """What a settings file yielded: the usable registries and the rejected ones (named)."""

    source: str
    registries: Mapping[str, RegistrySettings]
    rejected: tuple[EntryProblem, ...] = ()
    warnings: tuple[EntryProblem, ...] = ()


def containerd_namespace(registry: str) -> str:
    """The ``certs.d`` directory name containerd uses for a registry host (Docker Hub is ``docker.io``)."""
    lowered = registry.lower()
    return DOCKER_HUB if lowered in DOCKER_HUB_ALIASES else lowered


class _Reject(ValueError):
    """One registry's settings are unusable; the message names the setting, never a secret."""


def _pem_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509  # imported on use (~12 MB): only registries with certificates need it

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _Reject(f"{what} is not a PEM certificate") from None
    if not certificates:
        raise _Reject(f"{what} holds no certificate")
    return certificates


def _file_or_pem(value: Any, what: str, read_file: Callable[[str], bytes]) -> bytes:
    if not isinstance(value, str) or not value:
        raise _Reject(f"{what} must be a path or PEM text")
    if "-----BEGIN" in value:
        return value.encode()
    if not value.startswith("/"):
        raise _Reject(f"{what} must be an absolute path or PEM text (got {value!r})")
    try:
        return read_file(value)
    except OSError as exc:
        raise _Reject(f"{what} file {value} cannot be read: {exc.strerror or exc}") from None


def _mirror_entry(value: Any) -> tuple[str, bool]:
    """A mirror as a URL string (no credentials) or ``{ url = "...", credentials = true }``."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"url", "credentials"})
        if unknown:
            raise _Reject(f"mirror setting(s) {', '.join(unknown)} unknown (known: credentials, url)")
        if not isinstance(value.get("credentials", False), bool):
            raise _Reject("a mirror's credentials must be true or false")
        return _mirror(value.get("url")), bool(value.get("credentials", False))
    return _mirror(value), False


def _mirror(value: Any) -> str:
    if not isinstance(value, str):
        raise _Reject("mirrors must be a list of URLs or { url = ..., credentials = ... } tables")
    url = urllib.parse.urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise _Reject(f"mirror {value!r} is not an http:// or https:// URL")
    if url.username is not None or url.password is not None or url.query or url.fragment:
        raise _Reject(f"mirror {url.scheme}://{url.hostname}: no user info, query or fragment allowed")
    try:
        validate_registry_host(url.netloc)
        check_containerd_host(url.netloc)
    except InvalidRegistry as exc:
        raise _Reject(f"mirror host {url.netloc!r}: {exc}") from None
    if ".." in url.path.split("/") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in url.path):
        raise _Reject(f"mirror {value!r} has an unsafe path")
    return f"{url.scheme}://{url.netloc.lower()}{url.path.rstrip('/')}"


def _registry(host: str, table: Any, read_file: Callable[[str], bytes]) -> tuple[RegistrySettings, list[str]]:
    if not isinstance(table, dict):
        raise _Reject("settings must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise _Reject(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    warnings: list[str] = []
    ca = None
    if table.get("ca") is not None:
        ca = _file_or_pem(table["ca"], "ca", read_file)
        for certificate in _pem_certificates(ca, "ca"):
            if certificate.not_valid_after_utc.timestamp() < time.time():
                warnings.append(f"ca certificate {certificate.subject.rfc4514_string()} has expired")
    cert = key = None
    if (table.get("client_cert") is None) != (table.get("client_key") is None):
        raise _Reject("client_cert and client_key must be given together")
    if table.get("client_cert") is not None:
        cert = _file_or_pem(table["client_cert"], "client_cert", read_file)
        leaf = _pem_certificates(cert, "client_cert")[0]
        key_value = table["client_key"]
        if not isinstance(key_value, str) or not key_value.startswith("/"):
            raise _Reject("client_key must be an absolute path (a mounted Secret), never inline")
        key = _file_or_pem(key_value, "client_key", read_file)
        from cryptography.hazmat.primitives import serialization

        try:
            private = serialization.load_pem_private_key(key, password=None)
        except TypeError:
            raise _Reject("client_key is encrypted; containerd needs an unencrypted PEM key") from None
        except ValueError:
            raise _Reject("client_key is not a PEM private key") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(serialization.Encoding.DER, public) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, public
        ):
            raise _Reject("client_key does not match client_cert")
    for flag in ("skip_verify", "override_path"):
        if not isinstance(table.get(flag, False), bool):
            raise _Reject(f"{flag} must be true or false")
    mirrors = table.get("mirrors", [])
    if not isinstance(mirrors, list):
        raise _Reject("mirrors must be a list of URLs")
    auth = table.get("containerd_auth", "config")
    if auth not in AUTH_MODES:
        raise _Reject(f"containerd_auth must be one of {', '.join(AUTH_MODES)} (got {auth!r})")
    if auth == "header" and containerd_namespace(host) == DOCKER_HUB:
        raise _Reject("containerd_auth = 'header' does not work for Docker Hub (it answers with a Bearer challenge)")
    entries = [_mirror_entry(m) for m in mirrors]
    settings = RegistrySettings(
        host=containerd_namespace(host),
        ca=ca,
        client_cert=cert,
        client_key=key,
        skip_verify=bool(table.get("skip_verify", False)),
        mirrors=tuple(dict.fromkeys(url for url, _ in entries)),
        credential_mirrors=frozenset(url for url, credentials in entries if credentials),
        override_path=bool(table.get("override_path", False)),
        containerd_auth=cast(ContainerdAuth, auth),
    )
    if settings.skip_verify:
        warnings.append("skip_verify is on: containerd will not check this registry's TLS certificate")
    return settings, warnings


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(MAX_SETTINGS_BYTES)


def parse_registry_settings(
    data: bytes, *, source: str, read_file: Callable[[str], bytes] = _read_file
) -> SettingsLoad:
    """Parse a settings document. A document that is not TOML, or has no ``registries`` table of
    tables, is a :class:`SettingsError`; a bad registry is rejected alone."""
    try:
        document = loads_toml(data)
    except DecodeError as exc:
        raise SettingsError(f"{source}: {exc}") from None
    unknown = sorted(set(document) - {"registries"})
    if unknown:
        raise SettingsError(f'{source}: unknown top-level key(s) {", ".join(unknown)} (expected [registries."HOST"])')
    tables = document.get("registries", {})
    if not isinstance(tables, dict):
        raise SettingsError(f"{source}: 'registries' must be a table of [registries.\"HOST\"] tables")
    registries: dict[str, RegistrySettings] = {}
    rejected: list[EntryProblem] = []
    warnings: list[EntryProblem] = []
    for host, table in tables.items():
        try:
            try:
                validate_registry_host(host)
                check_containerd_host(host)
            except InvalidRegistry as exc:
                raise _Reject(str(exc)) from None
            settings, notes = _registry(host, table, read_file)
            if settings.host in registries:
                raise _Reject(f"settings for {settings.host} are given twice")
        except _Reject as exc:
            rejected.append(EntryProblem(key=host, registry=None, reason=str(exc), source=source))
            continue
        registries[settings.host] = settings
        warnings.extend(EntryProblem(key=host, registry=settings.host, reason=n, source=source) for n in notes)
    return SettingsLoad(source, registries, tuple(rejected), tuple(warnings))


def load_registry_settings(path: str, *, read_file: Callable[[str], bytes] = _read_file) -> SettingsLoad:
    """Read and parse ``--registry-config``; an unreadable or unparseable file is a SettingsError."""
    try:
        data = read_file(path)
    except OSError as exc:
        raise SettingsError(f"--registry-config {path}: cannot read: {exc.strerror or exc}") from None
    return parse_registry_settings(data, source=path, read_file=read_file)


class SettingsFile:
    """``--registry-config`` as the agent holds it: loaded at start (a bad file fails the start),
    re-read when its content changes (a ConfigMap update), the last good version kept when a new
    one is bad."""

    def __init__(self, path: str, *, stat: Callable[[str], Any] | None = None) -> None:
        self.path = path
        self._stat = stat or os.stat  # follows a ConfigMap volume's ..data symlink: the content's identity
        self._stamp = self._identity()
        self.current = load_registry_settings(path)

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = self._stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def reload(self) -> tuple[bool, SettingsError | None]:
        """Re-read the file if it changed: whether it did, and the error of a bad new version
        (the last good settings stay)."""
        stamp = self._identity()
        if stamp == self._stamp:
            return False, None
        self._stamp = stamp
        try:
            self.current = load_registry_settings(self.path)
        except SettingsError as exc:
            return True, exc
        return True, None
