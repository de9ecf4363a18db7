"""Sources -> desired state -> plan -> apply, for one pass (``sync``) and for ``cleanup``.

The plan is computed from pure renderers; only :class:`~nodeagent.hostfs.HostFS` touches the host.
Order of writes for crash safety: the ledger is first written with the union of old and new
ownership (so a crash never leaves an agent entry that looks foreign), then the target files,
then the final ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.config import SyncSettings
from nodeagent.credentials import (
    MAX_INPUT_BYTES,
    SECRET_FIELDS,
    EntryProblem,
    MergeResult,
    ParseResult,
    RegistryCredential,
    merge_credentials,
    parse_docker_config,
)
from nodeagent.decoding import DecodeError, loads_json, loads_yaml, parse_toml_document
from nodeagent.ecr.plugin import CACHE_FILE as ECR_CACHE_FILE
from nodeagent.errors import HostFSError, InputError
from nodeagent.hostfs import HostFS
from nodeagent.ledger import FileRecord, Ledger
from nodeagent.registry_settings import SettingsLoad
from nodeagent.targets.containerd import CONFIG_TARGET as CONTAINERD_CONFIG_TARGET
from nodeagent.targets.containerd import HOSTS_TARGET as CONTAINERD_HOSTS_TARGET
from nodeagent.targets.containerd import plan_containerd
from nodeagent.targets.kubelet import render_kubelet_config
from nodeagent.targets.provider import (
    CONFIG_TARGET,
    CREDENTIALS_TARGET,
    PLUGIN_TARGET,
    PROVIDER_CONFIG_FILE,
    ProviderRender,
    ecr_entry,
    registry_ports,
    render_credentials_file,
    render_plugin,
    render_provider_config,
    static_entry,
)

__all__ = [
    "FileChange",
    "SyncReport",
    "cleanup",
    "compute_revision",
    "load_file_sources",
    "redact_document",
    "sync",
]


@dataclass(frozen=True)
class FileChange:
    """One host file's planned change; ``new`` is None when the file is to be removed."""

    path: str
    old: bytes | None
    new: bytes | None
    mode: int = 0o600

    @property
    def changed(self) -> bool:
        return self.old != self.new


@dataclass
class SyncReport:
    """What a pass did (or, in a dry run, would do)."""

    registries: int = 0
    revision: str = ""
    changes: list[FileChange] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rejected: tuple[EntryProblem, ...] = ()
    warnings: tuple[EntryProblem, ...] = ()
    conflicts: tuple[EntryProblem, ...] = ()
    dry_run: bool = False
    containerd_auth_changed: bool = False
    """config.toml (or the drop-in) credentials changed: containerd needs a restart to use them."""
    prune_dirs: list[str] = field(default_factory=list)
    containerd_auth_files: list[str] = field(default_factory=list)
    """The file(s) holding the agent's containerd credentials (config.toml or the drop-in)."""
    provider_configs: list[str] = field(default_factory=list)
    """The CredentialProviderConfig file(s) holding the agent's providers: the kubelet reads them
    only at start, so writing one means a kubelet restart is needed for it to take effect."""

    @property
    def kubelet_restart_needed(self) -> bool:
        return bool(set(self.provider_configs) & set(self.written))


def load_file_sources(paths: Sequence[str]) -> list[ParseResult]:
    """Read and parse each ``--from-file``; any unreadable file fails the whole pass."""
    results = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise InputError(path, f"cannot read: {exc.strerror}") from None
        results.append(parse_docker_config(data, source=path))
    return results


def compute_revision(credentials: Sequence[RegistryCredential]) -> str:
    """A short, stable fingerprint of the applied set (same on every node for the same input)."""
    canonical = json.dumps(sorted([c.key, c.entry()] for c in credentials), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"nodeagent/revision/v1\0" + canonical.encode()).hexdigest()[:16]


def _revision(merged: MergeResult, with_scoped: bool) -> str:
    """The revision of what this pass applies: scoped credentials count when the provider serves them."""
    scoped = [s.credential for s in merged.scoped] if with_scoped else []
    return compute_revision([*merged.credentials, *scoped])


_SECRET_NAMES = SECRET_FIELDS | {"authorization"}
_HEADER_TABLES = frozenset({"httpheaders", "header", "headers"})
"""Tables whose every value is secret: config.json's ``HttpHeaders``, hosts.toml's ``header``."""


def _masking(name: str, inherited: str) -> str:
    """How a value under ``name`` is shown: ``all`` masked, ``env`` (a provider's env list: each
    ``value`` masked, names shown) or ``none``."""
    lowered = name.lower()
    if inherited == "all" or lowered in _SECRET_NAMES or lowered in _HEADER_TABLES:
        return "all"
    if lowered == "env":
        return "env"
    if inherited == "env" and lowered == "value":
        return "all"
    return "env" if inherited == "env" else "none"


def _mask_tree(value: Any, key: bytes | None, mode: str = "none") -> Any:
    if isinstance(value, dict):
        return {k: _mask_tree(v, key, _masking(str(k), mode)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_tree(v, key, mode) for v in value]
    return _mask_value(value, key) if mode == "all" else value


def _redact_toml(content: bytes, key: bytes | None) -> str:
    import tomlkit  # imported on use, as in targets/containerd.py

    try:
        document = parse_toml_document(content)
    except DecodeError:
        return "<unparseable content hidden>\n"

    def mask(table: Any, mode: str) -> None:
        for name in list(table.keys()):
            value = table[name]
            inner = _masking(str(name), mode)
            if isinstance(value, dict):
                mask(value, inner)
            elif inner == "all":
                table[name] = _mask_tree(value.unwrap() if hasattr(value, "unwrap") else value, key, "all")

    mask(document, "none")
    return tomlkit.dumps(document)


def redact_document(content: bytes | None, key: bytes | None = None, path: str = "") -> str:
    """Render a host file the agent manages with every secret masked, for people to read:
    config.json (JSON), containerd's TOML files, the provider config (JSON or YAML, ``env``
    values masked), certificates as they are, private keys hidden. Secret fields, and every
    value under a header table (``HttpHeaders``, hosts.toml's ``header``), are masked.

    With ``key``, each secret becomes ``<redacted:xxxxxxxx>`` (an HMAC under a per-run key) so a
    diff still shows *which* secret changed without revealing anything about it.
    """
    if content is None:
        return ""
    if path.endswith(".key"):
        return f"<private key, {len(content)} bytes, hidden>\n"
    if path.endswith((".crt", ".cert")):
        return content.decode("utf-8", "replace")
    if path.endswith((".toml", ".toml.orig")):
        return _redact_toml(content, key)
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            return str(yaml.safe_dump(_mask_tree(loads_yaml(content), key), sort_keys=False))
        except DecodeError:
            return "<unparseable content hidden>\n"
    try:
        document = loads_json(content, surrogates="replace")
    except DecodeError:
        return "<unparseable content hidden>\n"
    return json.dumps(_mask_tree(document, key), indent=2, ensure_ascii=False) + "\n"


def _mask_value(value: Any, key: bytes | None) -> str:
    if key is None:
        return "***"
    digest = hmac.new(key, json.dumps(value).encode(), hashlib.sha256).hexdigest()[:8]
    return f"<redacted:{digest}>"


def diff_changes(changes: Sequence[FileChange]) -> str:
    """A unified diff of the planned changes with every secret masked."""
    key = secrets.token_bytes(16)
    parts: list[str] = []
    for change in changes:
        if not change.changed:
            continue
        old, new = redact_document(change.old, key, change.path), redact_document(change.new, key, change.path)
        parts.extend(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=f"{change.path} (node)" if change.old is not None else "/dev/null",
                tofile=f"{change.path} (planned)" if change.new is not None else "/dev/null",
            )
        )
    return "".join(parts)


def _plan(
    hostfs: HostFS,
    settings: SyncSettings,
    ledger: Ledger,
    merged: MergeResult,
    hold_all: bool,
    uninstall: bool,
    registry_settings: SettingsLoad | None,
    report: SyncReport,
) -> tuple[list[FileChange], Ledger]:
    path = settings.kubelet_config
    current = hostfs.read(path)
    record = ledger.files.get(path)
    held = set(merged.held_registries)
    if hold_all and record is not None:
        held.update(record.owned.values())
    provider = settings.provider
    node_wide = not (provider is not None and provider.credentials and not provider.config_json)
    render = render_kubelet_config(
        desired=merged.credentials if node_wide else (),
        current=current,
        record=record,
        path=path,
        held=held,
    )
    new_ledger = Ledger(files=dict(ledger.files), revision=report.revision)
    changes = [FileChange(path, current, render.content)]
    _record(new_ledger, path, render.record)
    changes += _plan_provider(hostfs, settings, ledger, new_ledger, uninstall, merged, held, hold_all)
    report.provider_configs = [p for p, r in new_ledger.files.items() if r.target == CONFIG_TARGET]
    changes += _plan_containerd(
        hostfs,
        settings,
        ledger,
        new_ledger,
        merged,
        registry_settings,
        uninstall=uninstall,
        hold_all=hold_all,
        report=report,
    )
    return changes, new_ledger


def _record(ledger: Ledger, path: str, record: FileRecord) -> None:
    if record.owned or record.originals:
        ledger.files[path] = record
    else:
        ledger.files.pop(path, None)


def _plan_provider(
    hostfs: HostFS,
    settings: SyncSettings,
    ledger: Ledger,
    new_ledger: Ledger,
    uninstall: bool,
    merged: MergeResult,
    held: set[str],
    hold_all: bool,
) -> list[FileChange]:
    """The credential-provider plugins, config and credentials file: installed when configured;
    removed only by ``uninstall`` (cleanup), so a plain ``sync`` never takes away what
    ``--ecr`` or ``--credential-provider`` installed. ``hold_all`` (install-provider, which has
    no sources) keeps a credentials file that is already there."""
    changes: list[FileChange] = []
    active: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    provider = settings.provider
    if provider is not None:
        config_path = provider.config_path
        # A path without a .json/.yaml/.yml name is a config directory (kubelet >= 1.34), also on a
        # fresh node where it does not exist yet: the agent's own file goes inside (the chart's rule too).
        if hostfs.is_dir(config_path) or not config_path.endswith((".json", ".yaml", ".yml")):
            config_path = config_path.rstrip("/") + "/" + PROVIDER_CONFIG_FILE
        if provider.ecr:
            active[provider.plugin_path] = PLUGIN_TARGET
            entries.append(ecr_entry(provider.plugin_args))
        if provider.credentials:
            active[provider.static_plugin_path] = PLUGIN_TARGET
            active[provider.credentials_file] = CREDENTIALS_TARGET
            ports = {*provider.ports, *registry_ports(merged)}
            entries.append(
                static_entry(credentials_file=provider.credentials_file, ports=ports, audience=provider.audience)
            )
        active[config_path] = CONFIG_TARGET
    stale = {
        p: r.target
        for p, r in ledger.files.items()
        if uninstall and r.target in (PLUGIN_TARGET, CONFIG_TARGET, CREDENTIALS_TARGET) and p not in active
    }
    for path, target in {**active, **stale}.items():
        installing = path in active
        current = hostfs.read(path)
        record = ledger.files.get(path)
        if target == PLUGIN_TARGET:
            render = render_plugin(install=installing, current=current, record=record, path=path)
            mode = 0o755
        elif target == CREDENTIALS_TARGET:
            content = None
            if installing and hold_all and current is not None:
                content = current  # install-provider: the running agent's file stays as it is
            elif installing:
                content = render_credentials_file(
                    credentials=merged.credentials, scoped=merged.scoped, current=current, held=held
                )
            created = record.created if record is not None else current is None
            owned = {"credentials": "file"} if installing else {}
            render = ProviderRender(content, FileRecord(CREDENTIALS_TARGET, created, owned))
            mode = 0o600
        else:
            render = render_provider_config(
                entries=entries if installing else None, current=current, record=record, path=path
            )
            # Keep the mode the node gave its file (a 0600 config may hold env secrets).
            mode = hostfs.mode(path) or 0o644
            backup_changes, content = _provider_backup(hostfs, settings, record, render, current)
            changes += backup_changes
            render = dataclasses.replace(render, content=content)
        _record(new_ledger, path, render.record)
        changes.append(FileChange(path, current, render.content, mode))
    return changes


def _digest(content: bytes | None) -> str:
    return hashlib.sha256(content).hexdigest() if content is not None else ""


def _provider_backup(
    hostfs: HostFS, settings: SyncSettings, record: FileRecord | None, render: Any, current: bytes | None
) -> tuple[list[FileChange], bytes | None]:
    """A node's own provider config is copied before the agent's first edit and put back byte for
    byte when the agent lets go, if nobody changed the file since (else only the entry goes)."""
    backup = settings.provider_backup
    if current is not None and record is None and render.content != current and not render.record.created:
        render.record.backup, render.record.digest = backup, _digest(render.content)
        return [FileChange(backup, hostfs.read(backup), current, 0o600)], render.content
    if record is None or not record.backup:
        return [], render.content
    if render.record.owned:  # still installed: carry the backup on (not read on every pass)
        render.record.backup, render.record.digest = record.backup, _digest(render.content)
        return [], render.content
    saved = hostfs.read(record.backup)
    content = render.content
    if saved is not None and _digest(current) == record.digest:
        content = saved  # nobody touched it since: restore the node's bytes exactly
    return [FileChange(record.backup, saved, None, 0o600)], content


def _plan_containerd(
    hostfs: HostFS,
    settings: SyncSettings,
    ledger: Ledger,
    new_ledger: Ledger,
    merged: MergeResult,
    registry_settings: SettingsLoad | None,
    *,
    uninstall: bool,
    hold_all: bool,
    report: SyncReport,
) -> list[FileChange]:
    """containerd's hosts.toml files and config.toml credentials (targets/containerd.py plans;
    this reads what it needs from the host and records ownership)."""
    containerd = None if uninstall else settings.containerd
    if containerd is None and not uninstall:
        return []  # containerd is not managed: its files (and the ledger's records of them) stay
    try:
        plan = plan_containerd(
            read=hostfs.read,
            is_dir=hostfs.is_dir,
            mode_of=hostfs.mode,
            settings=containerd,
            credentials=merged.credentials,
            registries=registry_settings.registries if registry_settings is not None else {},
            ledger=ledger,
            backup_path=settings.containerd_backup,
            held=merged.held_registries,
            hold_all=hold_all,
        )
    except HostFSError as exc:
        # One containerd quirk (a symlinked config.toml, a path the writer refuses) leaves containerd
        # as it is and its ledger records unchanged; the kubelet's files still apply.
        report.conflicts += (EntryProblem(key="*", registry=None, reason=exc.reason, source=exc.path),)
        return []
    for path in plan.forget:
        new_ledger.files.pop(path, None)
    for path, record in plan.records.items():
        new_ledger.files[path] = record
    report.conflicts += tuple(plan.conflicts)
    report.warnings += tuple(plan.warnings)
    report.prune_dirs.extend(plan.prune_dirs)
    report.containerd_auth_changed = plan.auth_changed
    report.containerd_auth_files = [p for p, r in plan.records.items() if r.target == CONTAINERD_CONFIG_TARGET]
    return [FileChange(c.path, c.old, c.new, c.mode) for c in plan.changes]


def _intent(old: Ledger, new: Ledger) -> Ledger:
    """Old and new ownership together: what to record before any target file changes."""
    union = old.copy()
    union.revision = new.revision
    for path, record in new.files.items():
        merged = union.files.setdefault(path, FileRecord(target=record.target, created=record.created))
        merged.owned.update(record.owned)
        merged.originals.update(record.originals)
        merged.created = merged.created or record.created
        merged.backup = merged.backup or record.backup
        merged.digest = " ".join(dict.fromkeys(merged.digest.split() + record.digest.split()))
    return union


def _apply(
    hostfs: HostFS,
    settings: SyncSettings,
    ledger_bytes: bytes | None,
    ledger: Ledger,
    new_ledger: Ledger,
    changes: Sequence[FileChange],
    report: SyncReport,
) -> None:
    containerd_targets = (CONTAINERD_CONFIG_TARGET, CONTAINERD_HOSTS_TARGET)
    containerd_paths = {
        p for p, r in {**ledger.files, **new_ledger.files}.items() if r.target in containerd_targets
    } | {settings.containerd_backup}
    new_bytes = new_ledger.dump() if new_ledger.files else None
    if not any(c.changed for c in changes) and new_bytes == ledger_bytes:
        return
    hostfs.ensure_dir(settings.state_dir, mode=0o700, private=True)
    if any(c.changed for c in changes):
        hostfs.write(settings.ledger_path, _intent(ledger, new_ledger).dump())
    for change in changes:
        if not change.changed:
            continue
        try:
            if change.new is None:
                if hostfs.remove(change.path):
                    report.removed.append(change.path)
            else:
                hostfs.ensure_dir(change.path.rsplit("/", 1)[0] or "/")
                if hostfs.write(change.path, change.new, mode=change.mode):
                    report.written.append(change.path)
        except HostFSError as exc:
            if change.path not in containerd_paths:
                raise
            # containerd's files are reported and left; the kubelet's and the ledger still apply
            # (the next pass retries: the ledger records what the agent meant to own).
            report.conflicts += (EntryProblem(key="*", registry=None, reason=exc.reason, source=exc.path),)
    for directory in sorted(set(report.prune_dirs), key=lambda d: -d.count("/")):  # deepest first
        if hostfs.remove_empty_dir(directory):
            report.removed.append(directory + "/")
    if new_bytes is None:
        hostfs.remove(settings.ledger_path)
    else:
        hostfs.write(settings.ledger_path, new_bytes)


def sync(
    hostfs: HostFS,
    settings: SyncSettings,
    sources: Sequence[ParseResult],
    *,
    hold_all: bool = False,
    uninstall: bool = False,
    registry_settings: SettingsLoad | None = None,
) -> SyncReport:
    """One reconcile pass: merge ``sources`` into the node's files (or plan it, in a dry run).

    ``hold_all`` keeps every entry the agent already wrote that the sources no longer name: used
    while some source's state is unknown or unusable, so nothing is removed on partial knowledge.
    """
    merged = merge_credentials(sources)
    serving_scoped = settings.provider is not None and settings.provider.credentials
    unserved = tuple(
        EntryProblem(
            s.credential.key, s.credential.registry,
            "scoped to namespaces (nodeagent.io/namespaces): only nodeagent-credential-provider serves it, and it "
            "is not enabled (--credential-provider); nothing was written for it", s.credential.source,
        )
        for s in merged.scoped
        if not serving_scoped
    )  # fmt: skip
    report = SyncReport(
        registries=len(merged.credentials),
        revision=_revision(merged, serving_scoped),
        rejected=merged.rejected + (registry_settings.rejected if registry_settings else ()),
        warnings=merged.warnings + unserved + (registry_settings.warnings if registry_settings else ()),
        conflicts=merged.conflicts,
        dry_run=settings.dry_run,
    )
    # A dry run takes no lock: it writes nothing and must work where the state dir is read-only.
    lock = (
        contextlib.nullcontext() if settings.dry_run else hostfs.lock(settings.state_dir, timeout=settings.lock_timeout)
    )
    with lock:
        ledger_bytes = hostfs.read(settings.ledger_path)
        ledger = Ledger.load(ledger_bytes, source=settings.ledger_path)
        report.changes, new_ledger = _plan(
            hostfs, settings, ledger, merged, hold_all, uninstall, registry_settings, report
        )
        if not settings.dry_run:
            _apply(hostfs, settings, ledger_bytes, ledger, new_ledger, report.changes, report)
    return report


def cleanup(hostfs: HostFS, settings: SyncSettings) -> SyncReport:
    """Remove everything the ledger says the agent owns, restore the foreign originals, and remove
    the agent's own state (the ECR token cache)."""
    report = sync(hostfs, dataclasses.replace(settings, provider=None), [], uninstall=True)
    if not settings.dry_run and hostfs.remove(settings.state_dir.rstrip("/") + "/" + ECR_CACHE_FILE):
        report.removed.append(settings.state_dir.rstrip("/") + "/" + ECR_CACHE_FILE)
    return report
