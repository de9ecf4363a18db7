"""Targets: each plans one consumer's files from a read-only view of the host, the desired
state and its own ledger records, and returns one :class:`Plan`. Pure: no target writes, and no
target imports another; :mod:`nodeagent.reconcile` loops over the enabled ones and applies.

The one policy for failures (which fail the pass) is each target's ``isolated`` flag: the
kubelet's ``config.json`` and the provider files fail the pass (retried; nothing is written);
containerd's files are isolated: a failure there is reported as a conflict, containerd is left as
it is, and the other targets still apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nodeagent.model.credentials import EntryProblem, MergeResult
from nodeagent.model.ledger import FileRecord
from nodeagent.model.registry_settings import RegistrySettings

__all__ = ["Desired", "FileChange", "HostView", "Plan", "Rendered", "Target"]


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


@dataclass(frozen=True)
class Rendered:
    """What a renderer made of one file: the new content (None: remove the file) and its record."""

    content: bytes | None
    record: FileRecord


class HostView(Protocol):
    """The host as a target may see it while planning: read only."""

    def read(self, path: str) -> bytes | None: ...

    def is_dir(self, path: str) -> bool: ...

    def list_files(self, path: str) -> list[str]: ...

    def mode(self, path: str) -> int | None: ...


@dataclass(frozen=True)
class Desired:
    """What every target plans from: the merged credentials, what to hold, the registry settings."""

    merged: MergeResult
    held: frozenset[str]
    """Registries whose entries stay as they are (their source's new entry was rejected)."""
    hold_all: bool = False
    """Some source's state is unknown: nothing the agent wrote is removed."""
    uninstall: bool = False
    """``cleanup``: every target lets go of everything its records name."""
    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)


@dataclass
class Plan:
    """One target's plan: file changes in order (a backup before the file it backs up), the
    ledger records to set and to forget, problems, directories to remove once empty, and whether
    the consumer needs a restart to read what changed."""

    changes: list[FileChange] = field(default_factory=list)
    records: dict[str, FileRecord] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)
    conflicts: list[EntryProblem] = field(default_factory=list)
    warnings: list[EntryProblem] = field(default_factory=list)
    prune_dirs: list[str] = field(default_factory=list)
    restart: bool = False
    """The consumer reads these files only at start and their content changed."""
    read_at_start: list[str] = field(default_factory=list)
    """The files of this plan the consumer reads only at start (containerd's credentials, the
    kubelet's provider config)."""

    def keep(self, path: str, record: FileRecord) -> None:
        """Record ``path``, or forget it when the agent no longer owns anything in it."""
        if record.owned or record.originals:
            self.records[path] = record
        else:
            self.forget.append(path)


class Target(Protocol):
    name: str
    isolated: bool
    """True: a failure is reported as a conflict and the other targets still apply."""
    kinds: frozenset[str]
    """The ledger record kinds this target owns."""

    def plan(self, host: HostView, desired: Desired, records: Mapping[str, FileRecord]) -> Plan: ...

    def trusts(self, path: str, record: FileRecord) -> bool:
        """Whether ``path`` can be a file this target writes (by its name): a ledger record naming
        any other file (an edited ledger) is never acted on."""
        ...
