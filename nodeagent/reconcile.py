"""Sources -> desired state -> plan -> apply, for one pass (``sync``) and for ``cleanup``.

Each enabled target (``targets``) plans its files from a read-only view of the host, the desired
state and its own ledger records (pure); one failure policy decides which target's failure fails
the pass; only :class:`~nodeagent.host.hostfs.HostFS` touches the host.
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
from nodeagent.ecr.plugin import CACHE_FILE as ECR_CACHE_FILE
from nodeagent.errors import HostFSError, InputError, TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import (
    MAX_INPUT_BYTES,
    SECRET_FIELDS,
    EntryProblem,
    MergeResult,
    ParseResult,
    RegistryCredential,
    merge_credentials,
    parse_docker_config,
)
from nodeagent.model.decoding import DecodeError, loads_json, loads_yaml, parse_toml_document
from nodeagent.model.ledger import Ledger
from nodeagent.model.registry_settings import SettingsLoad
from nodeagent.targets import Desired, FileChange, HostView, Plan, Target
from nodeagent.targets.containerd import ContainerdTarget
from nodeagent.targets.kubelet import KubeletTarget
from nodeagent.targets.provider import ProviderTarget

__all__ = [
    "FileChange",
    "SyncReport",
    "cleanup",
    "compute_revision",
    "load_file_sources",
    "redact_document",
    "sync",
]


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


def targets(settings: SyncSettings) -> list[Target]:
    """The targets of a pass, in the order their files are written."""
    provider = settings.provider
    node_wide = not (provider is not None and provider.credentials and not provider.config_json)
    return [
        KubeletTarget(settings.kubelet_config, node_wide=node_wide),
        ProviderTarget(provider, backup_path=settings.provider_backup),
        ContainerdTarget(settings.containerd, backup_path=settings.containerd_backup),
    ]


def _plan(
    host: HostView, settings: SyncSettings, ledger: Ledger, desired: Desired, report: SyncReport
) -> tuple[list[tuple[Target, Plan]], Ledger]:
    """Every target's plan, and the ledger they leave. The failure policy: an isolated target's
    failure is a conflict (its records stay as they were); any other target's fails the pass."""
    plans: list[tuple[Target, Plan]] = []
    new_ledger = Ledger(files=dict(ledger.files), revision=report.revision)
    state_dir = settings.state_dir.rstrip("/") + "/"
    for target in targets(settings):
        records = {}
        for path, record in ledger.files.items():
            if record.target not in target.kinds:
                continue
            if target.trusts(path, record) and (not record.backup or record.backup.startswith(state_dir)):
                records[path] = record
                continue
            # An edited (or foreign) ledger naming a file nodeagent never writes, or a backup
            # outside its state dir: never read, written or removed; it stays in the ledger.
            reason = f"the ledger's {record.target} record names a file nodeagent never writes; ignored"
            report.conflicts += (EntryProblem(key="*", registry=None, reason=reason, source=path),)
        try:
            plan = target.plan(host, desired, records)
        except (HostFSError, TargetError) as exc:
            if not target.isolated:
                raise
            report.conflicts += (EntryProblem(key="*", registry=None, reason=exc.reason, source=exc.path),)
            continue
        for path in plan.forget:
            new_ledger.files.pop(path, None)
        new_ledger.files.update(plan.records)
        report.conflicts += tuple(plan.conflicts)
        report.warnings += tuple(plan.warnings)
        report.prune_dirs.extend(plan.prune_dirs)
        report.changes.extend(plan.changes)
        if target.name == "provider":
            report.provider_configs = plan.read_at_start
        elif target.name == "containerd":
            report.containerd_auth_changed = plan.restart
            report.containerd_auth_files = plan.read_at_start
        plans.append((target, plan))
    return plans, new_ledger


def _intent(old: Ledger, new: Ledger) -> Ledger:
    """Old and new ownership together: what to record before any target file changes."""
    union = old.copy()
    union.revision = new.revision
    for path, record in new.files.items():
        merged = union.files.setdefault(path, type(record)(target=record.target, created=record.created))
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
    plans: Sequence[tuple[Target, Plan]],
    report: SyncReport,
) -> None:
    new_bytes = new_ledger.dump() if new_ledger.files else None
    if not any(c.changed for c in report.changes) and new_bytes == ledger_bytes:
        return
    hostfs.ensure_dir(settings.state_dir, mode=0o700, private=True)
    if any(c.changed for c in report.changes):
        hostfs.write(settings.ledger_path, _intent(ledger, new_ledger).dump())
    for target, plan in plans:
        for change in plan.changes:
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
                if not target.isolated:
                    raise
                # An isolated target's files are reported and left; the others and the ledger still
                # apply (the next pass retries: the ledger records what the agent meant to own).
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
        desired = Desired(
            merged=merged,
            held=frozenset(merged.held_registries),
            hold_all=hold_all,
            uninstall=uninstall,
            registries=registry_settings.registries if registry_settings is not None else {},
        )
        plans, new_ledger = _plan(hostfs, settings, ledger, desired, report)
        if not settings.dry_run:
            _apply(hostfs, settings, ledger_bytes, ledger, new_ledger, plans, report)
    return report


def cleanup(hostfs: HostFS, settings: SyncSettings) -> SyncReport:
    """Remove everything the ledger says the agent owns, restore the foreign originals, and remove
    the agent's own state (the ECR token cache)."""
    report = sync(hostfs, dataclasses.replace(settings, provider=None), [], uninstall=True)
    if not settings.dry_run and hostfs.remove(settings.state_dir.rstrip("/") + "/" + ECR_CACHE_FILE):
        report.removed.append(settings.state_dir.rstrip("/") + "/" + ECR_CACHE_FILE)
    return report
