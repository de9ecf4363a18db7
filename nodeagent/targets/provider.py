"""The credential-provider target: the plugin files, our entries in the kubelet's
``CredentialProviderConfig`` (``nodeagent-ecr-credential-provider`` for ECR tokens,
``nodeagent-credential-provider`` for every registry the agent manages), and the credentials file
the latter answers from. Pure renderers, like every target.

The config is YAML or JSON by the file's extension (the kubelet accepts both); when the
configured path is a directory (kubelet >= 1.34 merges every ``*.json|*.yaml|*.yml`` in it), the
agent writes a file of its own there. Other providers are kept; a foreign provider with our name
is parked in the ledger and restored when ours goes away. YAML comments are not preserved by a
merge (PyYAML does not keep them); JSON and YAML key order is.

Every plan is judged as the kubelet will read it at its next start (:func:`kubelet_load_problem`:
the whole directory, merged, and each provider's binary): a plan the kubelet would refuse leaves
the config and the plugins as they are (a conflict naming why, or at uninstall a warning that
they were kept so the kubelet still starts), while the credentials file still follows the sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

from nodeagent.ecr.plugin import CREDENTIALS_VERSION, keyring_key
from nodeagent.errors import NodeagentError, TargetError
from nodeagent.model.credentials import EntryProblem, MergeResult, RegistryCredential, ScopedCredential
from nodeagent.model.decoding import DecodeError, loads_json, loads_yaml
from nodeagent.model.ledger import FileRecord, PluginRecord, ProviderConfigRecord, ProviderCredentialsRecord
from nodeagent.model.registries import InvalidRegistry, decode_auth, split_host_port
from nodeagent.targets import Desired, FileChange, HostView, Plan, Rendered

if TYPE_CHECKING:
    from nodeagent.config import ProviderSettings

__all__ = [
    "CONFIG_EXTENSIONS",
    "CONFIG_TARGET",
    "CREDENTIALS_FILE",
    "CREDENTIALS_TARGET",
    "PLUGIN_NAME",
    "PLUGIN_TARGET",
    "PROVIDER_CONFIG_FILE",
    "SCOPED_PLUGIN_NAME",
    "STATIC_PLUGIN_NAME",
    "ProviderTarget",
    "Rendered",
    "catch_all_images",
    "ecr_entry",
    "entry_scope",
    "kubelet_load_problem",
    "kubelet_view",
    "load_provider_config",
    "match_images",
    "plugin_bytes",
    "provider_config_problem",
    "registry_ports",
    "render_credentials_file",
    "render_plugin",
    "render_provider_config",
    "scoped_entry",
    "static_entry",
]

PLUGIN_NAME = "nodeagent-ecr-credential-provider"
STATIC_PLUGIN_NAME = "nodeagent-credential-provider"
"""The same plugin file, answering from the agent's credentials file for every registry."""
SCOPED_PLUGIN_NAME = "nodeagent-scoped-credential-provider"
"""The same file once more, answering namespace-scoped entries only, and the one entry with
``tokenAttributes``: when the kubelet cannot get a pod's ServiceAccount token (the API server is
down) it skips that provider for the pull, and the node-wide one, which asks for no token, still
answers."""
CREDENTIALS_TARGET = ProviderCredentialsRecord.KIND
CREDENTIALS_FILE = "provider-credentials.json"
"""The credentials file's name in the state dir (``ProviderSettings.credentials_file``: a test pins them)."""
MAX_LABELS = 10
"""Host label counts the catch-all covers (an ECR host in China has 7): each ``*`` in a
``matchImages`` pattern matches exactly one DNS label."""
PLUGIN_TARGET = PluginRecord.KIND
PROVIDER_CONFIG_FILE = "nodeagent-ecr.yaml"
"""Our own file when the configured provider config path is a directory (kubelet >= 1.34)."""
CONFIG_TARGET = ProviderConfigRecord.KIND
CONFIG_API_VERSIONS = ("kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v1alpha1")
PROVIDER_API_VERSION = "credentialprovider.kubelet.k8s.io/v1"
DEFAULT_CACHE_DURATION = "6h"
"""The kubelet's cache when a response has no cacheDuration; ours always sends one (half the
token's remaining life), so this only matters if an answer lacks it."""

_DOMAINS = (
    "amazonaws.com",
    "amazonaws.com.cn",
    "amazonaws.eu",
    "on.aws",
    "on.amazonwebservices.com.cn",
    "sc2s.sgov.gov",
    "c2s.ic.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
)


def match_images() -> list[str]:
    """``matchImages`` globs for every host form the reference ECR provider accepts."""
    patterns = [
        f"*.dkr{sep}ecr{fips}.*.{domain}" for domain in _DOMAINS for sep in (".", "-") for fips in ("", "-fips")
    ]
    return [*patterns, "public.ecr.aws", "ecr-public.aws.com"]


def plugin_bytes() -> bytes:
    """The plugin file as shipped in the package (this exact file is copied to the node)."""
    return resources.files("nodeagent.ecr").joinpath("plugin.py").read_bytes()


def render_plugin(*, install: bool, current: bytes | None, record: FileRecord | None, path: str) -> Rendered:
    """The plugin binary: written when installing, removed when not (only if the agent created it)."""
    if install:
        if current is not None and record is None and current != plugin_bytes():
            raise TargetError(path, "a different file with the plugin's name exists; refusing to overwrite it")
        created = record.created if record is not None else current is None
        return Rendered(plugin_bytes(), PluginRecord(created=created, owned=dict(PluginRecord.OWNED)))
    if record is None:
        return Rendered(current, PluginRecord())
    return Rendered(None if record.created else current, PluginRecord())


def ecr_entry(args: list[str]) -> dict[str, Any]:
    """Our ECR provider entry."""
    return {
        "name": PLUGIN_NAME,
        "matchImages": match_images(),
        "defaultCacheDuration": DEFAULT_CACHE_DURATION,
        "apiVersion": PROVIDER_API_VERSION,
        "args": list(args),
    }


def catch_all_images(ports: Iterable[int | str]) -> list[str]:
    """``matchImages`` that send every image to the plugin: one glob per host label count (``*``
    is one label), and the same again for each port (a port is compared exactly, as a string,
    and cannot be a glob: ``0080`` is not ``80``). A registry on a port not listed here is not
    asked for: the kubelet reads the list at start, so a new port needs a kubelet restart."""
    globs = [".".join(["*"] * n) for n in range(1, MAX_LABELS + 1)]
    return [*globs, *(f"{glob}:{port}" for port in sorted({str(p) for p in ports}) for glob in globs)]


def static_entry(*, credentials_file: str, ports: Iterable[int | str]) -> dict[str, Any]:
    """Our provider entry for every registry, node-wide entries. ``defaultCacheDuration`` 0: the
    plugin's own answers say ``cacheDuration: 0s`` anyway, so a rotation reaches the very next
    pull. It asks for no ServiceAccount token, so it answers during an API server outage too."""
    return {
        "name": STATIC_PLUGIN_NAME,
        "matchImages": catch_all_images(ports),
        "defaultCacheDuration": "0s",
        "apiVersion": PROVIDER_API_VERSION,
        "args": ["--credentials", credentials_file],
    }


def scoped_entry(*, credentials_file: str, ports: Iterable[int | str], audience: str) -> dict[str, Any]:
    """Our provider entry for namespace-scoped credentials: the kubelet passes each pod's
    ServiceAccount token with ``audience`` (KEP-4412, k8s >= 1.33 with the feature gate, on by
    default from 1.34), and the plugin serves the entries scoped to the token's namespace. Listed
    before the node-wide entry, whose answer it overrides on a key both give (the kubelet keeps
    the earlier provider's credential for a key)."""
    return {
        "name": SCOPED_PLUGIN_NAME,
        "matchImages": catch_all_images(ports),
        "defaultCacheDuration": "0s",
        "apiVersion": PROVIDER_API_VERSION,
        "args": ["--credentials", credentials_file, "--serve", "scoped"],
        "tokenAttributes": {
            "serviceAccountTokenAudience": audience,
            "cacheType": "ServiceAccount",
            "requireServiceAccount": False,
        },
    }


def registry_ports(merged: MergeResult) -> set[str]:
    """The ports of every registry the sources name (node-wide and scoped), as each key writes
    it: the provider's ``matchImages`` must list each one, as the kubelet compares ports as
    strings (config.json keys are matched the same way, so ``:0080`` in a key matches only
    images with ``:0080``, and the provider must be asked for exactly those)."""
    ports: set[str] = set()
    for credential in [*merged.credentials, *(s.credential for s in merged.scoped)]:
        try:
            split_host_port(credential.registry.split("/", 1)[0])  # a valid host[:port] at all
        except InvalidRegistry:
            continue
        host = keyring_key(credential.key).split("/", 1)[0]
        port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else ""
        if port.isdigit():
            ports.add(port)
    return ports


class _Scopes:
    """The file's scope table: each distinct scope once, exact names framed by newlines in one
    string (the plugin scans it, it does not build a list), globs apart."""

    def __init__(self) -> None:
        self.table: list[dict[str, Any]] = []
        self._index: dict[tuple[str, ...], int] = {}

    def add(self, namespaces: Sequence[str]) -> int:
        key = tuple(namespaces)
        if key not in self._index:
            names = [n for n in key if "*" not in n]
            self._index[key] = len(self.table)
            self.table.append({"names": "\n" + "".join(f"{n}\n" for n in names), "globs": [n for n in key if "*" in n]})
        return self._index[key]


def entry_scope(entry: dict[str, Any], scopes: Sequence[Any]) -> tuple[str, ...] | None:
    """The namespaces an entry of a file already written is scoped to (None: node-wide); version 1
    entries carry them, version 2 entries name a scope of the table."""
    if isinstance(entry.get("namespaces"), list):
        return tuple(str(n) for n in entry["namespaces"])
    index = entry.get("scope")
    if not isinstance(index, int) or not 0 <= index < len(scopes) or not isinstance(scopes[index], dict):
        return None
    names = scopes[index].get("names")
    globs = scopes[index].get("globs")
    found = [n for n in names.split("\n") if n] if isinstance(names, str) else []
    return (*found, *(g for g in globs if isinstance(g, str))) if isinstance(globs, list) else tuple(found)


def _credential_entry(credential: RegistryCredential, scope: int | None) -> dict[str, Any]:
    entry = credential.entry()
    username, password = credential.username, credential.password
    if entry.get("auth"):
        username, password = decode_auth(entry["auth"])
    return {
        "key": credential.key,
        "registry": credential.registry,
        "username": username,
        "password": password,
        "scope": scope,
    }


def render_credentials_file(
    *,
    credentials: Sequence[RegistryCredential],
    scoped: Sequence[ScopedCredential],
    current: bytes | None,
    held: Collection[str] = (),
    hold_all: bool = False,
) -> bytes:
    """The file ``nodeagent-credential-provider`` answers from: scoped entries first (they win
    over a node-wide entry of the same key for pods they are served to), then node-wide ones;
    each namespace scope is stored once and named by index. A ``held`` registry (its source entry
    was rejected) keeps the node-wide entry it had. With ``hold_all`` (a source's state is
    unknown) every entry the file had for a registry no known source names stays, scoped ones
    with their scope: the unknown source holds only what may be its own, and every known source's
    entries (rotations, new scopes) flow, as in config.json."""
    scopes = _Scopes()
    entries = [_credential_entry(s.credential, scopes.add(s.namespaces)) for s in scoped]
    entries += [_credential_entry(c, None) for c in credentials if not c.token_only]
    wanted = {c.registry for c in credentials} | {s.credential.registry for s in scoped}
    if (held or hold_all) and current is not None:
        try:
            document = loads_json(current)
            previous, old_scopes = document.get("entries") or [], document.get("scopes") or []
        except (DecodeError, AttributeError):
            previous, old_scopes = [], []
        for e in previous if isinstance(previous, list) else []:
            if not isinstance(e, dict) or e.get("registry") in wanted:
                continue
            scope = entry_scope(e, old_scopes if isinstance(old_scopes, list) else [])
            if hold_all or (e.get("registry") in held and scope is None):
                kept = {k: v for k, v in e.items() if k != "namespaces"}
                entries.append({**kept, "scope": None if scope is None else scopes.add(scope)})
    document = {"version": CREDENTIALS_VERSION, "scopes": scopes.table, "entries": entries}
    return (json.dumps(document, indent=1) + "\n").encode()


def load_provider_config(current: bytes, path: str, fmt: str) -> dict[str, Any]:
    """The node's CredentialProviderConfig as the agent reads it before a merge (and doctor before a
    check): a TargetError names what is wrong, including what the kubelet itself would refuse."""
    try:
        document = loads_json(current) if fmt == "json" else loads_yaml(current)
    except DecodeError as exc:
        raise TargetError(path, f"the existing file cannot be used ({exc}); refusing to change it") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise TargetError(path, "the existing file is not a CredentialProviderConfig object")
    if document.get("kind", "CredentialProviderConfig") != "CredentialProviderConfig":
        raise TargetError(path, "the existing file is not a CredentialProviderConfig")
    if document.get("apiVersion", CONFIG_API_VERSIONS[0]) not in CONFIG_API_VERSIONS:
        raise TargetError(path, "the existing CredentialProviderConfig has an unknown apiVersion")
    if not isinstance(document.get("providers", []), list):
        raise TargetError(path, "the existing 'providers' is not a list")
    problem = provider_config_problem(document)
    if problem is not None:
        raise TargetError(path, f"the kubelet would refuse this CredentialProviderConfig ({problem}); not changed")
    return document


_CONFIG_FIELDS = frozenset({"apiVersion", "kind", "providers"})
_PROVIDER_FIELDS = frozenset(
    {"name", "matchImages", "defaultCacheDuration", "apiVersion", "args", "env", "tokenAttributes"}
)
_ENV_FIELDS = frozenset({"name", "value"})
_TOKEN_FIELDS = frozenset(
    {
        "serviceAccountTokenAudience",
        "cacheType",
        "requireServiceAccount",
        "requiredServiceAccountAnnotationKeys",
        "optionalServiceAccountAnnotationKeys",
    }
)


def provider_config_problem(document: dict[str, Any]) -> str | None:
    """Why the kubelet (1.34) would refuse a CredentialProviderConfig at start, for the classes a
    merge could carry along: unknown fields (its decoder is strict), ``tokenAttributes`` under a
    plugin apiVersion other than v1, a provider name that is not a string, duplicate provider names.
    None when none applies. A model for
    run time, compared with the kubelet's own loader in tests/test_kubelet_real.py."""
    unknown = sorted(set(document) - _CONFIG_FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r}"
    names: set[str] = set()
    for index, provider in enumerate(document.get("providers") or []):
        if not isinstance(provider, dict):
            return f"providers[{index}] is not an object"
        unknown = sorted(set(provider) - _PROVIDER_FIELDS)
        if unknown:
            return f"unknown field 'providers[{index}].{unknown[0]}'"
        for env in provider.get("env") or []:
            if not isinstance(env, dict) or set(env) - _ENV_FIELDS:
                return f"providers[{index}].env has an entry with fields other than name and value"
        tokens = provider.get("tokenAttributes")
        if tokens is not None:
            if not isinstance(tokens, dict) or set(tokens) - _TOKEN_FIELDS:
                return f"providers[{index}].tokenAttributes has unknown fields"
            if provider.get("apiVersion") != PROVIDER_API_VERSION:
                return f"providers[{index}].tokenAttributes needs apiVersion {PROVIDER_API_VERSION}"
        name = provider.get("name")
        if name is not None and not isinstance(name, str):
            return f"providers[{index}].name is not a string"
        if isinstance(name, str):
            if name in names:
                return f"provider name {name!r} is given twice"
            names.add(name)
    return None


def render_provider_config(
    *, entries: Sequence[dict[str, Any]] | None, current: bytes | None, record: FileRecord | None, path: str
) -> Rendered:
    """Merge our provider ``entries`` into the config (None: remove every entry we own). A
    foreign provider with one of our names is parked in the ledger and restored when ours goes."""
    fmt = "json" if path.endswith(".json") else "yaml"
    old = record or ProviderConfigRecord(created=current is None)
    if current is None and not entries:
        return Rendered(None, ProviderConfigRecord())
    document = load_provider_config(current, path, fmt) if current is not None else {}
    providers = [p for p in document.get("providers", []) if not (isinstance(p, dict) and p.get("name") in old.owned)]
    new = ProviderConfigRecord(created=old.created or current is None)
    names = [entry["name"] for entry in entries or ()]
    for name, original in old.originals.items():
        if name not in names and not any(isinstance(p, dict) and p.get("name") == name for p in providers):
            providers.append(original)  # ours went away: the node's own entry comes back
    for entry in entries or ():
        name = entry["name"]
        foreign = [p for p in providers if isinstance(p, dict) and p.get("name") == name]
        if foreign:
            new.originals[name] = foreign[-1]
            providers = [p for p in providers if p not in foreign]
        elif name in old.originals:
            new.originals[name] = old.originals[name]
        providers.append(entry)
        new.owned[name] = "provider"
    if not providers and new.created and set(document) <= {"apiVersion", "kind", "providers"}:
        return Rendered(None, ProviderConfigRecord())
    document.setdefault("apiVersion", CONFIG_API_VERSIONS[0])
    document.setdefault("kind", "CredentialProviderConfig")
    document["providers"] = providers
    if fmt == "json":
        content = (json.dumps(document, indent=2) + "\n").encode()
    else:
        content = yaml.safe_dump(document, sort_keys=False, default_flow_style=False).encode()
    return Rendered(content, new)


CONFIG_EXTENSIONS = (".json", ".yaml", ".yml")
"""The files of a provider config directory the kubelet reads (others are ignored)."""


def _judge_document(path: str, content: bytes) -> tuple[dict[str, Any] | None, str | None]:
    fmt = "json" if path.endswith(".json") else "yaml"
    try:
        raw = loads_json(content) if fmt == "json" else loads_yaml(content)
    except DecodeError as exc:
        return None, f"{path}: not decodable ({exc})"
    # The kubelet's decoder needs both (it finds the type by them); the agent's merge defaults them.
    if not isinstance(raw, dict) or "kind" not in raw or "apiVersion" not in raw:
        return None, f"{path}: not a CredentialProviderConfig (apiVersion and kind are required)"
    try:
        return load_provider_config(content, path, fmt), None
    except TargetError as exc:
        return None, f"{path}: {exc.reason}"


def kubelet_load_problem(
    files: Mapping[str, bytes | None], *, directory: bool, binary_exists: Callable[[str], bool]
) -> str | None:
    """Why the kubelet (1.34) would not start with this provider config, or None: a model of its
    ``readCredentialProviderConfig`` and ``RegisterCredentialProviderPlugins`` (a directory is the
    merge of its ``*.json|*.yaml|*.yml`` files in lexical order, none is an error, a provider name
    in two files is an error; a file that is missing is an error; at least one provider; each
    provider's binary must exist in the bin dir). ``files``: every config file the kubelet would
    read, path to content (None: missing). For run time (the agent's plans, doctor); compared
    with the kubelet's own loader on generated directories in tests/test_provider_directory.py."""
    present = {path: content for path, content in files.items() if content is not None}
    if not present:
        return "no configuration files found in the directory" if directory else "the file does not exist"
    seen: dict[str, str] = {}
    for path in sorted(present):
        document, problem = _judge_document(path, present[path])
        if problem is not None or document is None:
            return problem
        for index, provider in enumerate(document.get("providers") or []):
            name = provider.get("name") if isinstance(provider, dict) else None
            if not isinstance(name, str) or not name:
                return f"{path}: providers[{index}] has no name"
            if name in seen:
                return f"provider name {name!r} is in both {seen[name]} and {path} (the kubelet refuses duplicates)"
            seen[name] = path
            if not provider.get("matchImages"):
                return f"{path}: provider {name!r} has no matchImages"
    if not seen:
        return "no provider is configured (the kubelet needs at least one)"
    missing = sorted(name for name in seen if not binary_exists(name))
    if missing:
        return f"the plugin binary for provider {missing[0]!r} (in {seen[missing[0]]}) does not exist"
    return None


def kubelet_view(
    host: HostView, *, config_path: str, bin_dir: str | None, overlay: Mapping[str, bytes | None] | None = None
) -> str | None:
    """:func:`kubelet_load_problem` on the node: ``config_path`` is the kubelet's flag (a file, or
    a directory, also one that does not exist yet when its name has no config extension),
    ``bin_dir`` its plugin directory (None: binaries not judged), ``overlay`` planned contents
    (None: removed) over what is on disk."""
    overlay = overlay or {}
    directory = host.is_dir(config_path) or not config_path.endswith(CONFIG_EXTENSIONS)
    if directory:
        root = config_path.rstrip("/")
        try:
            names = set(host.list_files(root))
        except NodeagentError as exc:
            return f"{root}: cannot be listed ({exc})"
        names |= {path[len(root) + 1 :] for path in overlay if path.rsplit("/", 1)[0] == root}
        paths = [f"{root}/{name}" for name in names if name.endswith(CONFIG_EXTENSIONS)]
    else:
        paths = [config_path]
    files: dict[str, bytes | None] = {}
    for path in paths:
        try:
            files[path] = overlay[path] if path in overlay else host.read(path)
        except NodeagentError as exc:
            return f"{path}: cannot be read ({exc})"

    def binary_exists(name: str) -> bool:
        if bin_dir is None:
            return True
        path = f"{bin_dir.rstrip('/')}/{name}"
        if path in overlay:
            return overlay[path] is not None
        try:
            return host.mode(path) is not None
        except NodeagentError:
            return True  # a symlink or the like: the kubelet's LookPath follows it

    return kubelet_load_problem(files, directory=directory, binary_exists=binary_exists)


def _digest(content: bytes | None) -> str:
    return hashlib.sha256(content).hexdigest() if content is not None else ""


class ProviderTarget:
    """The credential-provider plugins, config and credentials file: installed when configured;
    removed only by ``uninstall`` (cleanup), so a plain ``sync`` never takes away what ``--ecr``
    or ``--credential-provider`` installed. ``hold_all`` (a source of unknown state; also
    install-provider, which has no sources) keeps every entry of the credentials file no known
    source names, and lets the others follow their sources. A failure fails the pass."""

    name = "provider"
    isolated = False
    kinds = frozenset({PLUGIN_TARGET, CONFIG_TARGET, CREDENTIALS_TARGET})

    def __init__(self, settings: ProviderSettings | None, *, backup_path: str) -> None:
        self.settings, self.backup_path = settings, backup_path

    def trusts(self, path: str, record: FileRecord) -> bool:
        if record.target == PLUGIN_TARGET:
            return path.rsplit("/", 1)[-1] in (PLUGIN_NAME, STATIC_PLUGIN_NAME, SCOPED_PLUGIN_NAME)
        if record.target == CREDENTIALS_TARGET:
            return path.endswith("/" + CREDENTIALS_FILE)
        return path.endswith(CONFIG_EXTENSIONS)

    def _active(self, host: HostView, desired: Desired) -> tuple[dict[str, str], list[dict[str, Any]]]:
        """The files to install, by path, and the provider entries of the config."""
        active: dict[str, str] = {}
        entries: list[dict[str, Any]] = []
        provider = self.settings
        if provider is None:
            return active, entries
        config_path = provider.config_path
        # A path without a .json/.yaml/.yml name is a config directory (kubelet >= 1.34), also on a
        # fresh node where it does not exist yet: the agent's own file goes inside (the chart's rule too).
        if host.is_dir(config_path) or not config_path.endswith((".json", ".yaml", ".yml")):
            config_path = config_path.rstrip("/") + "/" + PROVIDER_CONFIG_FILE
        if provider.ecr:
            active[provider.plugin_path] = PLUGIN_TARGET
            entries.append(ecr_entry(provider.plugin_args))
        if provider.credentials:
            active[provider.static_plugin_path] = PLUGIN_TARGET
            active[provider.credentials_file] = CREDENTIALS_TARGET
            ports = {*map(str, provider.ports), *registry_ports(desired.merged)}
            if provider.audience:
                active[provider.scoped_plugin_path] = PLUGIN_TARGET
                entries.append(
                    scoped_entry(credentials_file=provider.credentials_file, ports=ports, audience=provider.audience)
                )
            entries.append(static_entry(credentials_file=provider.credentials_file, ports=ports))
        active[config_path] = CONFIG_TARGET
        return active, entries

    def plan(self, host: HostView, desired: Desired, records: Mapping[str, FileRecord]) -> Plan:
        plan = Plan()
        active, entries = self._active(host, desired)
        # A config the agent no longer writes to (uninstall, or the configured path moved: a file
        # inside a directory, then the directory) is let go of, or the kubelet would read our
        # providers twice; stale plugins go only at uninstall.
        stale = {
            p: r.target
            for p, r in records.items()
            if p not in active and (desired.uninstall or (self.settings is not None and r.target == CONFIG_TARGET))
        }
        kubelet_files: set[str] = set()
        merged = desired.merged
        for path, target in {**active, **stale}.items():
            installing = path in active
            current = host.read(path)
            record = records.get(path)
            if target == PLUGIN_TARGET:
                render = render_plugin(install=installing, current=current, record=record, path=path)
                mode = 0o755
                kubelet_files.add(path)
            elif target == CREDENTIALS_TARGET:
                content = None
                if installing:
                    content = render_credentials_file(
                        credentials=merged.credentials,
                        scoped=merged.scoped,
                        current=current,
                        held=desired.held,
                        hold_all=desired.hold_all,
                    )
                created = record.created if record is not None else current is None
                owned = dict(ProviderCredentialsRecord.OWNED) if installing else {}
                render = Rendered(content, ProviderCredentialsRecord(created=created, owned=owned))
                mode = 0o600
            else:
                render = render_provider_config(
                    entries=entries if installing else None, current=current, record=record, path=path
                )
                # Keep the mode the node gave its file (a 0600 config may hold env secrets).
                mode = host.mode(path) or 0o644
                render = self._backup(host, plan, record, render, current)
                kubelet_files |= {path, self.backup_path}
                if render.record.owned:
                    plan.read_at_start.append(path)
            plan.keep(path, render.record)
            plan.changes.append(FileChange(path, current, render.content, mode))
        self._judge(host, plan, records, kubelet_files, uninstall=desired.uninstall)
        return plan

    def _where(self, records: Mapping[str, FileRecord]) -> tuple[str, str | None] | None:
        """The kubelet's provider config flag and plugin directory: from the settings, or at
        cleanup (no settings) from the records (our own file in a directory means the flag names
        the directory)."""
        if self.settings is not None:
            return self.settings.config_path, self.settings.bin_dir
        configs = [p for p, r in records.items() if r.target == CONFIG_TARGET]
        if not configs:
            return None
        config = configs[0]
        if config.endswith("/" + PROVIDER_CONFIG_FILE):
            config = config.rsplit("/", 1)[0]
        plugins = [p.rsplit("/", 1)[0] for p, r in records.items() if r.target == PLUGIN_TARGET]
        return config, plugins[0] if plugins else None

    def _judge(
        self, host: HostView, plan: Plan, records: Mapping[str, FileRecord], kubelet_files: set[str], *, uninstall: bool
    ) -> None:
        """Leave the kubelet's files (config, backup, plugins) as they are when the kubelet would
        refuse to start with what the plan leaves (also when it refuses what is there now: the
        agent neither breaks nor pretends to mend it); the credentials file still follows."""
        where = self._where(records)
        if where is None or not any(c.changed for c in plan.changes if c.path in kubelet_files):
            return
        config_path, bin_dir = where
        overlay = {c.path: c.new for c in plan.changes if c.path in kubelet_files}
        problem = kubelet_view(host, config_path=config_path, bin_dir=bin_dir, overlay=overlay)
        if problem is None:
            return
        plan.changes = [c for c in plan.changes if c.path not in kubelet_files]
        plan.read_at_start = [p for p in plan.read_at_start if p not in kubelet_files]
        for path in kubelet_files:
            plan.forget = [p for p in plan.forget if p != path]
            plan.records.pop(path, None)
            if path in records:
                plan.records[path] = records[path]
        if uninstall:
            reason = (
                f"kept the provider config and plugin so the kubelet still starts ({problem}): remove the "
                "kubelet's --image-credential-provider-config flag or give it another provider, then run cleanup again"
            )
            plan.warnings.append(EntryProblem(key="*", registry=None, reason=reason, source=config_path))
        else:
            reason = f"not changed: the kubelet would refuse this provider config at its next start ({problem})"
            plan.conflicts.append(EntryProblem(key="*", registry=None, reason=reason, source=config_path))

    def _backup(
        self, host: HostView, plan: Plan, record: FileRecord | None, render: Rendered, current: bytes | None
    ) -> Rendered:
        """A node's own provider config is copied before the agent's first edit and put back byte
        for byte when the agent lets go, if nobody changed the file since (else only the entry goes)."""
        if current is not None and record is None and render.content != current and not render.record.created:
            render.record.backup, render.record.digest = self.backup_path, _digest(render.content)
            plan.changes.append(FileChange(self.backup_path, host.read(self.backup_path), current, 0o600))
            return render
        if record is None or not record.backup:
            return render
        if render.record.owned:  # still installed: carry the backup on (not read on every pass)
            render.record.backup, render.record.digest = record.backup, _digest(render.content)
            return render
        saved = host.read(record.backup)
        content = render.content
        if saved is not None and _digest(current) == record.digest:
            content = saved  # nobody touched it since: restore the node's bytes exactly
        plan.changes.append(FileChange(record.backup, saved, None, 0o600))
        return dataclasses.replace(render, content=content)
