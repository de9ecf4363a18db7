"""The containerd target: ``hosts.toml`` (CA, client TLS, mirrors, optional Basic header) and
node credentials in ``config.toml`` (or a conf.d drop-in). Pure renderers, like every target.

Facts this follows (design.md, "Facts about containerd"):

* ``<config_path>/<host[:port]>/hosts.toml`` is re-read on every pull: no restart. It has no
  credential fields; a static ``Authorization: Basic`` header works only for registries that
  accept Basic without a Bearer challenge.
* Credentials live in ``[plugins."<CRI plugin>".registry.configs."HOST".auth]``: plugin
  ``io.containerd.grpc.v1.cri`` in a ``version = 2`` config, ``io.containerd.cri.v1.images`` in
  ``version = 3`` (containerd 2.x). HOST is the host containerd connects to (Docker Hub:
  ``registry-1.docker.io``). A change needs a containerd restart.
* containerd 2.x merges ``imports`` drop-ins deeply, so on a version 3 config with a conf.d import
  the agent writes its own drop-in; 1.x replaces whole plugin sections from a drop-in, so a
  version 2 config is edited in place (with tomlkit: comments, order and every other setting kept).

Files the agent owns start with :data:`MANAGED_HEADER`; a ``hosts.toml`` without it is never
changed or removed.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nodeagent.config import ContainerdSettings
from nodeagent.credentials import EntryProblem, RegistryCredential
from nodeagent.decoding import DecodeError, loads_toml, parse_toml_document
from nodeagent.errors import TargetError
from nodeagent.ledger import FileRecord, Ledger
from nodeagent.registries import InvalidRegistry, check_containerd_host, decode_auth, validate_registry_host
from nodeagent.registry_settings import DOCKER_HUB, RegistrySettings, containerd_namespace

if TYPE_CHECKING:
    from tomlkit.items import Table

__all__ = [
    "CONFIG_TARGET",
    "DEFAULT_ROOTS_V3",
    "DROPIN_NAME",
    "HOSTS_TARGET",
    "MANAGED_HEADER",
    "PLUGINS",
    "ConfigRender",
    "ContainerdPlan",
    "ContainerdSetup",
    "auth_hosts",
    "detect_setup",
    "dropin_path",
    "go_toml_v1_problems",
    "is_managed",
    "plan_containerd",
    "render_config_auth",
    "render_dropin",
    "render_hosts_files",
]

PLUGINS = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.images"}
"""The CRI plugin that holds registry settings, by config version."""
DEFAULT_ROOTS_V3 = ("/etc/containerd/certs.d", "/etc/docker/certs.d")
"""containerd >= 2.2's default ``config_path`` (a version 3 config without one)."""
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
MANAGED_HEADER = "# nodeagent: managed file; the agent rewrites and removes it. Delete this line to keep it as yours."
HOSTS_TARGET = "containerd-hosts"
CONFIG_TARGET = "containerd-config"
DROPIN_NAME = "nodeagent.toml"
_CAPABILITIES = ["pull", "resolve"]


@dataclass(frozen=True)
class ContainerdSetup:
    """What the node's containerd config says about registry settings."""

    config: str
    exists: bool
    version: int
    roots: tuple[str, ...]
    """``config_path`` roots, in containerd's lookup order; empty when hosts.toml is not read."""
    dropin_dir: str | None = None
    """A conf.d directory the config imports (used for credentials on version 3 only)."""

    @property
    def plugin(self) -> str:
        return PLUGINS[self.version]


def _table(document: Any, *keys: str) -> Any:
    node = document
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def detect_setup(config: str, content: bytes | None) -> ContainerdSetup:
    """Read the config's version, ``config_path`` roots and conf.d import (TargetError if unusable)."""
    if content is None:
        return ContainerdSetup(config, exists=False, version=2, roots=())
    try:
        document = loads_toml(content)  # read-only: the fast, strict stdlib parser
    except DecodeError as exc:
        raise TargetError(config, f"cannot be read ({exc}); leaving containerd alone") from None
    version = document.get("version", 1)
    if version not in PLUGINS:
        raise TargetError(
            config,
            f"containerd config version {version} is not supported (2 or 3); "
            "migrate it with 'containerd config migrate'",
        )
    registry = _table(document, "plugins", PLUGINS[version], "registry")
    config_path = registry.get("config_path", "")
    roots = tuple(r for r in str(config_path).split(":") if r) if isinstance(config_path, str) else ()
    for root in roots:
        if not root.startswith("/") or ".." in root.split("/") or "\x00" in root:
            raise TargetError(
                config,
                f"registry config_path root {root!r} is not an absolute path without '..'; leaving containerd alone",
            )
    if not roots and version == 3 and "config_path" not in registry:
        roots = DEFAULT_ROOTS_V3
    dropin = None
    imports = document.get("imports", [])
    for pattern in imports if isinstance(imports, list) else []:
        if isinstance(pattern, str) and pattern.endswith("/*.toml") and pattern.startswith("/"):
            dropin = pattern[: -len("/*.toml")]
            break
    return ContainerdSetup(config, exists=True, version=version, roots=roots, dropin_dir=dropin)


def go_toml_v1_problems(text: str) -> list[str]:
    """What containerd 1.6's TOML parser (go-toml v1) would refuse in a document tomllib accepts.

    Its table-header lexer ends a header at the first ``]`` and refuses a ``[`` inside one, quoted
    or not ("table key cannot contain ']'"); quoted keys in key/value lines and inline tables are
    read correctly (checked with containerd's own hosts loader and ``containerd config dump``,
    tests/test_containerd_parsers.py). A model for run time, compared with the real parser in tests.
    """
    from tomlkit.items import AoT, Table

    problems: list[str] = []

    def walk(container: Any, path: list[str]) -> None:
        for key, item in container.body:
            if key is None:
                continue
            full = [*path, key.key]
            tables = list(item.body) if isinstance(item, AoT) else [item] if isinstance(item, Table) else []
            for table in tables:
                headed = isinstance(item, AoT) or not table.is_super_table()
                if headed and any("[" in part or "]" in part for part in full):
                    problems.append(f"table [{'.'.join(full)}] has '[' or ']' in its name")
                walk(table.value, full)

    walk(parse_toml_document(text), [])
    return problems


@functools.lru_cache(maxsize=4096)
def _containerd_problems(content: bytes) -> tuple[str, ...]:
    """go_toml_v1_problems of rendered bytes, cached: a pass checks every hosts.toml again, and the
    rendered bytes repeat from pass to pass."""
    try:
        return tuple(go_toml_v1_problems(content.decode("utf-8")))
    except DecodeError as exc:
        return (f"rendered TOML does not parse ({exc})",)


def _check_for_containerd(content: bytes, path: str, what: str) -> None:
    """Refuse to write TOML that containerd's own parser would reject (TargetError names it)."""
    problems = _containerd_problems(content)
    if problems:
        raise TargetError(path, f"{what}: containerd 1.6 could not read it ({problems[0]}); not written")


def is_managed(content: bytes | None) -> bool:
    """Whether a file carries the agent's header line (the agent may change or remove it)."""
    return content is not None and content.split(b"\n", 1)[0] == MANAGED_HEADER.encode()


def _basic(credential: RegistryCredential) -> str | None:
    if credential.auth:
        try:
            username, password = decode_auth(credential.auth)
        except ValueError:
            return None
    elif credential.username or credential.password:
        username, password = credential.username, credential.password
    else:
        return None
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def _host_of(url: str) -> str:
    return urlsplit(url).netloc


def _tls(target: Table | Any, settings: RegistrySettings, directory: str, header: str | None) -> None:
    import tomlkit  # imported where used: an agent not managing containerd never loads it (RSS)

    if settings.ca:
        target["ca"] = f"{directory}/ca.crt"
    if settings.client_cert:
        target["client"] = [[f"{directory}/client.cert", f"{directory}/client.key"]]
    if settings.skip_verify:
        target["skip_verify"] = True
    if header is not None:
        headers = tomlkit.table()
        headers["Authorization"] = f"Basic {header}"
        target["header"] = headers


@functools.lru_cache(maxsize=4096)
def _hosts_toml(settings: RegistrySettings, directory: str, header: str | None) -> bytes:
    """The hosts.toml bytes (cached: a pass re-renders every registry, and tomlkit is slow)."""
    import tomlkit

    server = DOCKER_HUB_SERVER if settings.host == DOCKER_HUB else f"https://{settings.host}"
    document = tomlkit.document()
    document.add(tomlkit.comment(MANAGED_HEADER[2:]))
    document["server"] = server
    document["capabilities"] = [*_CAPABILITIES, "push"]
    _tls(document, settings, directory, header)
    hosts = tomlkit.table(is_super_table=bool(settings.mirrors))
    for url in settings.mirrors:
        entry = tomlkit.table()
        entry["capabilities"] = list(_CAPABILITIES)
        if settings.override_path:
            entry["override_path"] = True
        # The credential goes to the registry itself, and to a mirror only when its settings say so.
        _tls(entry, settings, directory, header if url in settings.credential_mirrors else None)
        hosts[url] = entry
    document["host"] = hosts
    return tomlkit.dumps(document).encode()


def render_hosts_files(
    settings: RegistrySettings, *, root: str, credential: RegistryCredential | None
) -> tuple[dict[str, tuple[bytes, int]], list[str]]:
    """``hosts.toml`` and the certificate files next to it, as ``{host path: (bytes, mode)}``.

    Each mirror is a ``[host."URL"]`` entry, tried in order; containerd always tries the top-level
    ``server`` last, so the registry itself is the top level (``server``, its capabilities and TLS
    settings), never also a ``[host]`` entry (it would be tried twice). Every mirror carries the TLS
    settings too (mirrors of a private registry usually share its CA). containerd 1.6 refuses a
    hosts.toml without a ``host`` table ("invalid `host` tree"), so without mirrors an empty
    ``[host]`` table is written (all checked with containerd's own loader,
    tests/test_containerd_parsers.py). In ``header`` mode the registry's Basic credential is a
    static header at the top level and on the mirrors marked ``credentials = true`` (the file is
    then 0600).
    Returns the files and warnings (e.g. header mode without a usable credential).
    """
    directory = f"{root.rstrip('/')}/{settings.host}"
    warnings: list[str] = []
    header = None
    if settings.containerd_auth == "header":
        header = _basic(credential) if credential is not None else None
        if header is None:
            warnings.append("containerd_auth = 'header' but no username/password credential for it: no header written")
    files: dict[str, tuple[bytes, int]] = {
        f"{directory}/hosts.toml": (_hosts_toml(settings, directory, header), 0o600 if header else 0o644)
    }
    if settings.ca:
        files[f"{directory}/ca.crt"] = (settings.ca, 0o644)
    if settings.client_cert and settings.client_key:
        files[f"{directory}/client.cert"] = (settings.client_cert, 0o644)
        files[f"{directory}/client.key"] = (settings.client_key, 0o600)
    return files, warnings


def auth_hosts(
    credentials: Sequence[RegistryCredential], registry_settings: Mapping[str, RegistrySettings]
) -> tuple[dict[str, tuple[dict[str, str], str]], list[EntryProblem]]:
    """The ``registry.configs."HOST".auth`` tables to write: ``{HOST: (auth fields, registry)}``.

    HOST is the host containerd connects to: ``registry-1.docker.io`` for Docker Hub, and a
    mirror marked ``credentials = true`` gets its registry's credential unless the sources name
    that host themselves (other mirrors get none). Keys with a path or a wildcard have no
    containerd equivalent (containerd's auth is per host) and are skipped with a warning, as are
    IPv6 hosts (containerd 1.6 cannot read them as table keys); registries whose settings say
    ``header`` or ``none`` are left out.
    """
    explicit: dict[str, tuple[dict[str, str], str]] = {}
    via_mirror: dict[str, tuple[dict[str, str], str]] = {}
    skipped: list[EntryProblem] = []
    for credential in credentials:
        registry = credential.registry
        try:
            validate_registry_host(registry)
        except InvalidRegistry:
            skipped.append(
                EntryProblem(
                    credential.key,
                    registry,
                    "has a path or wildcard; containerd's config.toml credentials are per host: not written there",
                    credential.source,
                )
            )
            continue
        try:
            check_containerd_host(registry)
        except InvalidRegistry as exc:
            skipped.append(
                EntryProblem(credential.key, registry, f"{exc}: not written to config.toml", credential.source)
            )
            continue
        namespace = containerd_namespace(registry)
        settings = registry_settings.get(namespace)
        if settings is not None and settings.containerd_auth != "config":
            continue
        basic = _basic(credential)
        if basic is not None:
            fields = {"auth": basic}
        elif credential.identitytoken:
            fields = {"identitytoken": credential.identitytoken}
        else:
            continue
        host = "registry-1.docker.io" if namespace == DOCKER_HUB else namespace
        explicit[host] = (fields, namespace)
        for mirror in settings.mirrors if settings is not None else ():
            if settings is not None and mirror in settings.credential_mirrors:
                via_mirror.setdefault(_host_of(mirror), (fields, namespace))
    return {**via_mirror, **explicit}, skipped


@dataclass(frozen=True)
class ConfigRender:
    content: bytes | None
    record: FileRecord


def _super_table(parent: Any, key: str) -> Any:
    import tomlkit

    node = parent.get(key)
    if node is None:
        node = tomlkit.table(is_super_table=True)
        parent[key] = node
    elif not isinstance(node, dict):
        raise ValueError(key)
    return node


def _auth_table(fields: Mapping[str, str]) -> Table:
    import tomlkit

    table = tomlkit.table()
    for name, value in fields.items():
        table[name] = value
    table.add(tomlkit.nl())
    return table


def _prune(value: Any) -> Any:
    """A parsed document without empty tables (tomlkit drops an empty super table on output)."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {} or not isinstance(value[k], dict)}
    return value


def _intended(
    view: dict[str, Any],
    plugin: str,
    desired: Mapping[str, tuple[dict[str, str], str]],
    old: FileRecord,
) -> dict[str, Any]:
    """What the edited file must parse to: the current document with exactly the agent's auth
    tables changed. Checked against the rendered bytes, so a layout tomlkit edits wrongly (dotted
    keys, inline tables) is refused instead of written."""
    document = copy.deepcopy(view)
    node = document
    for key in ("plugins", plugin, "registry", "configs"):
        node = node.setdefault(key, {})
    for host in old.owned:
        if host in desired or not isinstance(node.get(host), dict):
            continue
        node[host].pop("auth", None)
        if host in old.originals:
            node[host]["auth"] = dict(old.originals[host])
    for host, (fields, _) in desired.items():
        node.setdefault(host, {})["auth"] = dict(fields)
    return dict(_prune(document))


def render_config_auth(
    *,
    current: bytes,
    setup: ContainerdSetup,
    desired: Mapping[str, tuple[dict[str, str], str]],
    record: FileRecord | None,
    path: str,
) -> ConfigRender:
    """Edit ``registry.configs."HOST".auth`` tables in place in the main config.

    Tables the agent wrote before and no longer wants are removed; a foreign table the agent
    replaced is kept in the ledger and put back when the agent lets go of that host. Everything
    else in the file, comments included, is left as it is. The result is parsed again and must
    equal the intended document, and pass containerd's parser rules, or nothing is written.
    """
    import tomlkit

    old = record or FileRecord(CONFIG_TARGET)
    new = FileRecord(CONFIG_TARGET, backup=old.backup, digest=old.digest)
    try:
        view = loads_toml(current)
    except DecodeError as exc:
        raise TargetError(path, f"cannot be read ({exc}); refusing to change it") from None
    if not desired and not old.owned:
        return ConfigRender(current, new)
    configs_now = _table(view, "plugins", setup.plugin, "registry", "configs")
    if set(old.owned) == set(desired) and all(
        _table(configs_now, host, "auth") == fields for host, (fields, _) in desired.items()
    ):
        # Up to date: the file says exactly what the agent would write (no slow tomlkit round trip).
        new.owned = {host: registry_name for host, (_, registry_name) in desired.items()}
        new.originals = {h: v for h, v in old.originals.items() if h in desired}
        return ConfigRender(current, new)
    try:
        document = parse_toml_document(current)
    except DecodeError as exc:
        raise TargetError(path, f"cannot be edited ({exc}); refusing to change it") from None
    try:
        _edit_configs(document, setup=setup, desired=desired, old=old, new=new, path=path)
        content = tomlkit.dumps(document).encode()
    except TargetError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # tomlkit on an odd layout
        raise TargetError(path, _LAYOUT_REFUSAL.format(type(exc).__name__)) from None
    try:
        rendered = loads_toml(content)
    except DecodeError:
        rendered = None
    if rendered is None or _prune(rendered) != _intended(view, setup.plugin, desired, old):
        raise TargetError(path, _LAYOUT_REFUSAL.format("the edit did not come out as intended"))
    _check_for_containerd(content, path, "config.toml")
    return ConfigRender(content, new)


_LAYOUT_REFUSAL = (
    "registry.configs is written in a layout nodeagent cannot edit safely ({}): dotted keys or inline "
    'tables; write it as [plugins."...".registry.configs."HOST".auth] tables, or use a conf.d drop-in. '
    "The file is left as it is"
)


def _edit_configs(
    document: Any,
    *,
    setup: ContainerdSetup,
    desired: Mapping[str, tuple[dict[str, str], str]],
    old: FileRecord,
    new: FileRecord,
    path: str,
) -> None:
    import tomlkit
    from tomlkit.items import InlineTable

    try:
        configs = _super_table(
            _super_table(_super_table(_super_table(document, "plugins"), setup.plugin), "registry"), "configs"
        )
    except ValueError as exc:
        raise TargetError(path, f"'{exc}' is not a table; refusing to change the file") from None
    if isinstance(configs, InlineTable):
        raise ValueError("inline table")
    for host in old.owned:
        if host in desired:
            continue
        entry = configs.get(host)
        if isinstance(entry, dict):
            entry.pop("auth", None)
            if host in old.originals:
                entry["auth"] = _auth_table(old.originals[host])
            elif not entry:
                del configs[host]
    for host, (fields, registry_name) in desired.items():
        entry = configs.get(host)
        if entry is None:
            entry = tomlkit.table(is_super_table=True)
            configs[host] = entry
        elif not isinstance(entry, dict):
            raise TargetError(path, f"registry.configs.{host} is not a table; refusing to change the file")
        existing = entry.get("auth")
        if host in old.originals:
            new.originals[host] = old.originals[host]
        elif existing is not None and host not in old.owned:
            new.originals[host] = existing.unwrap() if hasattr(existing, "unwrap") else existing
        entry["auth"] = _auth_table(fields)
        new.owned[host] = registry_name
    if not configs:
        del document["plugins"][setup.plugin]["registry"]["configs"]


def render_dropin(
    *, setup: ContainerdSetup, desired: Mapping[str, tuple[dict[str, str], str]], path: str, current: bytes | None
) -> ConfigRender:
    """The agent's own conf.d drop-in (containerd 2.x merges it deeply into the main config)."""
    import tomlkit

    if current is not None and not is_managed(current):
        raise TargetError(path, "a drop-in with this name exists and is not nodeagent's; refusing to overwrite it")
    if not desired:
        return ConfigRender(None, FileRecord(CONFIG_TARGET))
    document = tomlkit.document()
    document.add(tomlkit.comment(MANAGED_HEADER[2:]))
    document["version"] = setup.version
    configs = tomlkit.table(is_super_table=True)
    for host, (fields, _) in sorted(desired.items()):
        entry = tomlkit.table(is_super_table=True)
        entry["auth"] = _auth_table(fields)
        configs[host] = entry
    registry = tomlkit.table(is_super_table=True)
    registry["configs"] = configs
    plugin = tomlkit.table(is_super_table=True)
    plugin["registry"] = registry
    plugins = tomlkit.table(is_super_table=True)
    plugins[setup.plugin] = plugin
    document["plugins"] = plugins
    owned = {host: registry_name for host, (_, registry_name) in desired.items()}
    content = tomlkit.dumps(document).encode()
    _check_for_containerd(content, path, "drop-in")
    return ConfigRender(content, FileRecord(CONFIG_TARGET, created=True, owned=owned))


def dropin_path(setup: ContainerdSetup) -> str | None:
    """Where the agent's drop-in goes: version 3 configs that import a conf.d directory only."""
    if setup.version == 3 and setup.dropin_dir:
        return f"{setup.dropin_dir.rstrip('/')}/{DROPIN_NAME}"
    return None


# -- planning: what to write, given what is on the node ------------------------------------------
@dataclass(frozen=True)
class PlannedFile:
    path: str
    old: bytes | None
    new: bytes | None
    mode: int


@dataclass
class ContainerdPlan:
    """File changes (in order: a backup before the file it backs up) and ledger updates."""

    changes: list[PlannedFile] = field(default_factory=list)
    records: dict[str, FileRecord] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)
    conflicts: list[EntryProblem] = field(default_factory=list)
    warnings: list[EntryProblem] = field(default_factory=list)
    prune_dirs: list[str] = field(default_factory=list)
    auth_changed: bool = False


def _digest(content: bytes | None) -> str:
    return hashlib.sha256(content).hexdigest() if content is not None else ""


def _ours(record: FileRecord, current: bytes | None) -> bool:
    """Whether the file is as the agent last wrote it (the ledger written before a pass's writes
    holds the digests from before and after it, so a pass cut short still counts)."""
    return _digest(current) in record.digest.split()


def _problem(key: str, reason: str, path: str) -> EntryProblem:
    return EntryProblem(key=key, registry=None, reason=reason, source=path)


def _existing_auths(content: bytes | None, path: str) -> dict[str, dict[str, str]]:
    """The auth tables a file holds now, by host (used to hold entries unchanged)."""
    if content is None:
        return {}
    try:
        setup = detect_setup(path, content)
        document = loads_toml(content)
    except (TargetError, DecodeError):
        return {}
    configs = _table(document, "plugins", setup.plugin, "registry", "configs")
    auths = {host: _table(configs, host, "auth") for host in configs}
    return {host: {str(k): str(v) for k, v in auth.items()} for host, auth in auths.items() if auth}


class _Planner:
    def __init__(
        self,
        *,
        read: Callable[[str], bytes | None],
        is_dir: Callable[[str], bool],
        mode_of: Callable[[str], int | None],
        ledger: Ledger,
        backup_path: str,
    ) -> None:
        self._read, self.is_dir, self.mode_of = read, is_dir, mode_of
        self.ledger, self.backup_path = ledger, backup_path
        self.plan = ContainerdPlan()
        self._reads: dict[str, bytes | None] = {}

    def read(self, path: str) -> bytes | None:
        """Each file is read once per plan (nothing is written while planning)."""
        if path not in self._reads:
            self._reads[path] = self._read(path)
        return self._reads[path]

    def change(self, path: str, old: bytes | None, new: bytes | None, mode: int) -> None:
        self.plan.changes.append(PlannedFile(path, old, new, mode))

    # -- hosts.toml ---------------------------------------------------------------------------
    def hosts(
        self,
        setup: ContainerdSetup | None,
        registries: Mapping[str, RegistrySettings],
        credentials: Mapping[str, RegistryCredential],
        *,
        held: frozenset[str],
        hold_all: bool,
    ) -> None:
        desired: dict[str, tuple[bytes, int, FileRecord]] = {}
        taken_over: set[str] = set()
        needs = [s for s in registries.values() if s.needs_hosts_toml]
        if setup is not None and needs and not setup.roots:
            for settings in needs:
                self.plan.conflicts.append(
                    _problem(
                        settings.host,
                        f"containerd reads no hosts.toml: {setup.config} sets no registry config_path "
                        f'(set [plugins."{setup.plugin}".registry] config_path = "/etc/containerd/certs.d")',
                        setup.config,
                    )
                )
        elif setup is not None and needs:
            root = setup.roots[0]
            root_created = not self.is_dir(root) or any(
                r.owned.get("root") == "created" for r in self.ledger.files.values() if r.target == HOSTS_TARGET
            )
            for settings in needs:
                directory = f"{root.rstrip('/')}/{settings.host}"
                hosts_path = f"{directory}/hosts.toml"
                current = self.read(hosts_path)
                if current is not None and not is_managed(current):
                    taken_over.add(directory)
                    self.plan.conflicts.append(
                        _problem(settings.host, "hosts.toml has no nodeagent header: left as is", hosts_path)
                    )
                    continue
                files, notes = render_hosts_files(settings, root=root, credential=credentials.get(settings.host))
                try:
                    _check_for_containerd(files[hosts_path][0], hosts_path, f"hosts.toml for {settings.host}")
                except TargetError as exc:
                    self.plan.conflicts.append(_problem(settings.host, exc.reason, hosts_path))
                    continue
                holding = hold_all or settings.host in held
                if settings.containerd_auth == "header" and settings.host not in credentials and holding:
                    # The credential is held (its source unknown or its new entry rejected): keep the
                    # header the file has rather than write one without it.
                    if current is not None:
                        files[hosts_path] = (current, 0o600)
                    notes = []
                foreign = [
                    p for p, (content, _) in files.items()
                    if p not in self.ledger.files and self.read(p) not in (None, content) and p != hosts_path
                ]  # fmt: skip
                if foreign:
                    self.plan.conflicts.append(
                        _problem(settings.host, "a file the agent would write exists and is not its own", foreign[0])
                    )
                    continue
                self.plan.warnings.extend(_problem(settings.host, n, hosts_path) for n in notes)
                old = self.ledger.files.get(hosts_path)
                created_dir = old.owned.get("dir") == "created" if old is not None else not self.is_dir(directory)
                for path, (content, mode) in files.items():
                    owned = {"registry": settings.host}
                    if path == hosts_path and created_dir:
                        owned["dir"] = "created"
                    if path == hosts_path and root_created:
                        owned["root"] = "created"
                    desired[path] = (content, mode, FileRecord(HOSTS_TARGET, created=True, owned=owned))
        for path, record in self.ledger.files.items():
            if record.target != HOSTS_TARGET or path in desired:
                continue
            directory = path.rsplit("/", 1)[0]
            hosts_toml = self.read(f"{directory}/hosts.toml")
            if directory in taken_over or (hosts_toml is not None and not is_managed(hosts_toml)):
                self.plan.forget.append(path)  # someone took the directory over: leave all of it
                continue
            self.change(path, self.read(path), None, 0o600)
            self.plan.forget.append(path)
            if record.owned.get("dir") == "created":
                self.plan.prune_dirs.append(directory)
            if record.owned.get("root") == "created":
                self.plan.prune_dirs.append(directory.rsplit("/", 1)[0])  # removed only once empty
        for path, (content, mode, record) in desired.items():
            self.change(path, self.read(path), content, mode)
            self.plan.records[path] = record

    # -- config.toml credentials --------------------------------------------------------------
    def auth(
        self,
        setup: ContainerdSetup | None,
        desired: dict[str, tuple[dict[str, str], str]],
        *,
        held: frozenset[str],
        hold_all: bool,
    ) -> None:
        records = {p: r for p, r in self.ledger.files.items() if r.target == CONFIG_TARGET}
        target = None
        if setup is not None:
            target = dropin_path(setup) or setup.config
            if not setup.exists and desired:
                self.plan.conflicts.append(
                    _problem("*", "--containerd-auth needs containerd's config file; none is there", setup.config)
                )
                target, desired = None, {}
        if target in records:
            held_hosts = {
                h: r for h, r in records[target].owned.items() if h not in desired and (hold_all or r in held)
            }
            existing = _existing_auths(self.read(target), target) if held_hosts else {}
            for host, registry in held_hosts.items():
                if host in existing:
                    desired[host] = (existing[host], registry)
        for path, record in records.items():
            if path != target or not desired:
                self.release(path, record)
        if target is not None and setup is not None and desired:
            self.apply(target, setup, desired, records.get(target))

    def release(self, path: str, record: FileRecord) -> None:
        """Let go of every credential in one file: restore the backup when nobody changed the
        file since the agent's last write, else remove exactly the tables the agent added."""
        current = self.read(path)
        new: bytes | None = current
        if current is None:
            pass
        elif record.created:
            new = None if is_managed(current) else current
        elif record.backup and self.read(record.backup) is not None and _ours(record, current):
            new = self.read(record.backup)
        else:
            try:
                new = render_config_auth(
                    current=current, setup=detect_setup(path, current), desired={}, record=record, path=path
                ).content
            except TargetError as exc:
                self.plan.conflicts.append(_problem("*", exc.reason, path))
        if new != current:
            self.change(path, current, new, self.mode_of(path) or 0o644)
            self.plan.auth_changed = True
        if record.backup:
            self.change(record.backup, self.read(record.backup), None, 0o600)
        self.plan.forget.append(path)

    def apply(
        self,
        path: str,
        setup: ContainerdSetup,
        desired: dict[str, tuple[dict[str, str], str]],
        record: FileRecord | None,
    ) -> None:
        current = self.read(path)
        try:
            if path != setup.config:
                render = render_dropin(setup=setup, desired=desired, path=path, current=current)
                mode = 0o600
            else:
                assert current is not None  # checked by auth(): the main config exists
                render = render_config_auth(current=current, setup=setup, desired=desired, record=record, path=path)
                mode = self.mode_of(path) or 0o600
        except TargetError as exc:
            self.plan.conflicts.append(_problem("*", exc.reason, path))
            return
        new_record = render.record
        backup = self.read(record.backup) if record is not None and record.backup else None
        if record is None or (record.backup and backup is None and not _ours(record, current)):
            # Before the first in-place edit; also when a pass died after recording the backup but
            # before writing it (the file is then still the original).
            if path == setup.config and render.content != current:
                new_record.backup = self.backup_path
                self.change(self.backup_path, self.read(self.backup_path), current, 0o600)
        elif record.backup and backup is None:
            new_record.backup = ""  # the copy is gone and the file is the agent's: no byte-exact restore
        elif record.backup and backup != current and not _ours(record, current):
            # Someone changed the file since the agent's last write: the backup no longer is
            # "the file without nodeagent", so cleanup will remove exactly the agent's tables.
            self.change(record.backup, backup, None, 0o600)
            new_record.backup = ""
        new_record.digest = _digest(render.content)
        if render.content != current:
            self.change(path, current, render.content, mode)
            self.plan.auth_changed = True
        self.plan.records[path] = new_record


def plan_containerd(
    *,
    read: Callable[[str], bytes | None],
    is_dir: Callable[[str], bool],
    mode_of: Callable[[str], int | None],
    settings: ContainerdSettings | None,
    credentials: Sequence[RegistryCredential],
    registries: Mapping[str, RegistrySettings],
    ledger: Ledger,
    backup_path: str,
    held: frozenset[str] = frozenset(),
    hold_all: bool = False,
) -> ContainerdPlan:
    """Plan containerd's files from the credentials and registry settings.

    ``settings`` None releases everything the ledger says the agent owns in containerd's files
    (``cleanup``). Reads go through ``read``/``is_dir``/``mode_of`` so this stays free of I/O.
    """
    planner = _Planner(read=read, is_dir=is_dir, mode_of=mode_of, ledger=ledger, backup_path=backup_path)
    setup = None
    if settings is not None:
        try:
            setup = detect_setup(settings.config, planner.read(settings.config))
        except TargetError as exc:
            planner.plan.conflicts.append(_problem("*", exc.reason, settings.config))
            return planner.plan  # leave containerd's files as they are until its config parses
    by_namespace: dict[str, RegistryCredential] = {}
    for credential in credentials:
        try:
            validate_registry_host(credential.registry)
        except InvalidRegistry:
            continue
        by_namespace[containerd_namespace(credential.registry)] = credential
    held_namespaces = frozenset(containerd_namespace(r) for r in held)
    planner.hosts(
        setup, registries if settings is not None else {}, by_namespace, held=held_namespaces, hold_all=hold_all
    )
    desired: dict[str, tuple[dict[str, str], str]] = {}
    if settings is not None and settings.auth:
        desired, skipped = auth_hosts(credentials, registries)
        planner.plan.warnings.extend(skipped)
    planner.auth(setup, desired, held=held, hold_all=hold_all)
    return planner.plan
