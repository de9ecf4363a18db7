"""Node credentials in containerd's ``config.toml`` (``[plugins."<CRI plugin>".registry.configs."HOST".auth]``)
or, on a version 3 config that imports a conf.d directory, in the agent's own drop-in. containerd
reads them only at start: a change asks for a restart. A version 2 config is edited in place with
tomlkit (comments, order and every other setting kept), and the first edit keeps a backup."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nodeagent.errors import TargetError
from nodeagent.model.credentials import EntryProblem, RegistryCredential
from nodeagent.model.decoding import DecodeError, loads_toml, parse_toml_document
from nodeagent.model.ledger import ConfigTomlRecord, FileRecord
from nodeagent.model.registries import InvalidRegistry, check_containerd_host, validate_registry_host
from nodeagent.model.registry_settings import DOCKER_HUB, RegistrySettings, containerd_namespace
from nodeagent.targets import Rendered

from .hosts import _basic, _host_of
from .setup import (
    CONFIG_TARGET,
    MANAGED_HEADER,
    ContainerdSetup,
    PlanContext,
    _check_for_containerd,
    _digest,
    _ours,
    _problem,
    _table,
    detect_setup,
    dropin_path,
    is_managed,
)

if TYPE_CHECKING:
    from tomlkit.items import Table

__all__ = ["AuthPlanning", "auth_hosts", "render_config_auth", "render_dropin"]


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
) -> Rendered:
    """Edit ``registry.configs."HOST".auth`` tables in place in the main config.

    Tables the agent wrote before and no longer wants are removed; a foreign table the agent
    replaced is kept in the ledger and put back when the agent lets go of that host. Everything
    else in the file, comments included, is left as it is. The result is parsed again and must
    equal the intended document, and pass containerd's parser rules, or nothing is written.
    """
    import tomlkit

    old = record or ConfigTomlRecord()
    new = ConfigTomlRecord(backup=old.backup, digest=old.digest)
    try:
        view = loads_toml(current)
    except DecodeError as exc:
        raise TargetError(path, f"cannot be read ({exc}); refusing to change it") from None
    if not desired and not old.owned:
        return Rendered(current, new)
    configs_now = _table(view, "plugins", setup.plugin, "registry", "configs")
    if set(old.owned) == set(desired) and all(
        _table(configs_now, host, "auth") == fields for host, (fields, _) in desired.items()
    ):
        # Up to date: the file says exactly what the agent would write (no slow tomlkit round trip).
        new.owned = {host: registry_name for host, (_, registry_name) in desired.items()}
        new.originals = {h: v for h, v in old.originals.items() if h in desired}
        return Rendered(current, new)
    try:
        document = parse_toml_document(current)
    except DecodeError as exc:
        raise TargetError(path, f"cannot be edited ({exc}); refusing to change it") from None
    try:
        _edit_configs(document, setup=setup, desired=desired, old=old, new=new, path=path)
        content = tomlkit.dumps(document).encode()
    except TargetError:
        raise
    except Exception as exc:  # tomlkit editing a layout it does not handle raises
        # anything (IndexError on dotted keys, ValueError, KeyError...): the one answer is "cannot
        # edit this file", never a crash of the pass or of cleanup.
        raise TargetError(path, _LAYOUT_REFUSAL.format(type(exc).__name__)) from None
    try:
        rendered = loads_toml(content)
    except DecodeError:
        rendered = None
    if rendered is None or _prune(rendered) != _intended(view, setup.plugin, desired, old):
        raise TargetError(path, _LAYOUT_REFUSAL.format("the edit did not come out as intended"))
    _check_for_containerd(content, path, "config.toml")
    return Rendered(content, new)


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
) -> Rendered:
    """The agent's own conf.d drop-in (containerd 2.x merges it deeply into the main config)."""
    import tomlkit

    if current is not None and not is_managed(current):
        raise TargetError(path, "a drop-in with this name exists and is not nodeagent's; refusing to overwrite it")
    if not desired:
        return Rendered(None, ConfigTomlRecord())
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
    return Rendered(content, ConfigTomlRecord(created=True, owned=owned))


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


class AuthPlanning(PlanContext):
    def auth(
        self,
        setup: ContainerdSetup | None,
        desired: dict[str, tuple[dict[str, str], str]],
        *,
        held: frozenset[str],
        hold_all: bool,
    ) -> None:
        records = {p: r for p, r in self.records.items() if r.target == CONFIG_TARGET}
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
                # Not released: the record and the backup stay (they are what restores the node's
                # own credentials once the file can be edited), and the conflict names the file.
                self.plan.conflicts.append(_problem("*", f"not released: {exc.reason}", path))
                self.plan.records[path] = record
                return
        if new != current:
            self.change(path, current, new, self.mode_of(path) or 0o644)
            self.plan.restart = True
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
            self.plan.restart = True
        self.plan.records[path] = new_record
