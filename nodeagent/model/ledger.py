"""The ownership ledger: what the agent wrote on this node, so it removes only that.

Pure data and (de)serialisation; :mod:`nodeagent.host.hostfs` stores it atomically (0600) at
``<state dir>/state.json``. Foreign originals (entries the agent replaced) are kept here so
they can be restored; they are node secrets already, held with the same protection.

Each target has its own record type, stored under its ``kind`` with fields that say what they
mean (version 2). A version 1 ledger (one shape for every target, ``owned`` meaning something
different in each) is read and migrated on load; the next write stores version 2. A record in a
shape no version of the agent wrote is an error that names it, never a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nodeagent.errors import InputError
from nodeagent.model.decoding import loads_json

__all__ = [
    "LEDGER_VERSION",
    "ConfigTomlRecord",
    "FileRecord",
    "HostsTomlRecord",
    "KubeletRecord",
    "Ledger",
    "PluginRecord",
    "ProviderConfigRecord",
    "ProviderCredentialsRecord",
]

LEDGER_VERSION = 2
READABLE_VERSIONS = (1, 2)


def _map(data: dict[str, Any], name: str) -> dict[str, str]:
    value = data.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name!r} is not a map of strings")
    return dict(value)


def _object(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name!r} is not an object")
    return dict(value)


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{name!r} is not true or false")
    return value


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"{name!r} is not a string")
    return value


@dataclass
class FileRecord:
    """What the agent owns in one host file (the fields every record type shares).

    ``created``: the file did not exist before the agent first wrote it. ``owned`` and
    ``originals`` are named by each record type (its entries, its providers...); ``backup`` is
    the host path of a copy of the file before the agent's first in-place edit; ``digest`` the
    SHA-256 of the bytes the agent last wrote, to tell whether anyone changed the file since (in
    the ledger written before a pass's writes: the digests from before and after the pass,
    space-separated, so a pass cut short by a crash still recognises its own file).
    """

    KIND: ClassVar[str] = ""
    target: str
    created: bool = False
    owned: dict[str, str] = field(default_factory=dict)
    originals: dict[str, Any] = field(default_factory=dict)
    backup: str = ""
    digest: str = ""

    def to_json(self) -> dict[str, Any]:
        """The version 2 form: the kind, then the fields this record type names."""
        return {"kind": self.target, **self._fields()}

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FileRecord:
        raise NotImplementedError

    @classmethod
    def _from_v1(
        cls, created: bool, owned: dict[str, str], originals: dict[str, Any], backup: str, digest: str
    ) -> FileRecord:
        """A version 1 record of this kind, checked to be in the shape version 1 wrote."""
        return cls(cls.KIND, created, owned, originals, backup, digest)

    @classmethod
    def from_json(cls, data: Any, version: int = LEDGER_VERSION) -> FileRecord:
        if not isinstance(data, dict):
            raise ValueError("file record is not an object")
        kind = _text(data, "kind" if version >= 2 else "target")
        record_type = RECORD_TYPES.get(kind)
        if record_type is None:
            raise ValueError(f"unknown record kind {kind!r}")
        if version >= 2:
            return record_type._from_fields(data)
        return record_type._from_v1(
            _flag(data, "created"), _map(data, "owned"), _object(data, "originals"), _text(data, "backup"),
            _text(data, "digest"),
        )  # fmt: skip


def _backup_fields(record: FileRecord) -> dict[str, Any]:
    return {k: v for k, v in (("backup", record.backup), ("digest", record.digest)) if v}


@dataclass
class KubeletRecord(FileRecord):
    """config.json: the ``auths`` keys the agent wrote (key -> registry) and the foreign entries
    it replaced (key -> entry), restored when the agent lets go."""

    KIND: ClassVar[str] = "kubelet"
    target: str = KIND

    @property
    def entries(self) -> dict[str, str]:
        return self.owned

    def _fields(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "entries": dict(sorted(self.owned.items())),
            "originals": dict(sorted(self.originals.items())),
        }

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FileRecord:
        return cls(created=_flag(data, "created"), owned=_map(data, "entries"), originals=_object(data, "originals"))

    @classmethod
    def _from_v1(
        cls, created: bool, owned: dict[str, str], originals: dict[str, Any], backup: str, digest: str
    ) -> FileRecord:
        if backup or digest:
            raise ValueError("a kubelet record has no backup")
        return cls(created=created, owned=owned, originals=originals)


@dataclass
class ConfigTomlRecord(FileRecord):
    """containerd's config.toml (or the agent's drop-in): the ``auth`` tables the agent wrote
    (containerd host -> registry), the node's own tables it replaced, and the backup."""

    KIND: ClassVar[str] = "containerd-config"
    target: str = KIND

    @property
    def auths(self) -> dict[str, str]:
        return self.owned

    def _fields(self) -> dict[str, Any]:
        return {
            "created": self.created, "auths": dict(sorted(self.owned.items())),
            "originals": dict(sorted(self.originals.items())), **_backup_fields(self),
        }  # fmt: skip

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FileRecord:
        return cls(
            created=_flag(data, "created"), owned=_map(data, "auths"), originals=_object(data, "originals"),
            backup=_text(data, "backup"), digest=_text(data, "digest"),
        )  # fmt: skip


_HOSTS_KEYS = frozenset({"registry", "dir", "root"})


@dataclass
class HostsTomlRecord(FileRecord):
    """One file of a registry's hosts.toml directory (the agent owns the whole file): the
    registry, and whether the agent created the directory and the config_path root."""

    KIND: ClassVar[str] = "containerd-hosts"
    target: str = KIND
    created: bool = True

    @property
    def registry(self) -> str:
        return self.owned.get("registry", "")

    def _fields(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "created_dir": self.owned.get("dir") == "created",
            "created_root": self.owned.get("root") == "created",
        }

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FileRecord:
        owned = {"registry": _text(data, "registry")}
        owned.update({key: "created" for key in ("dir", "root") if _flag(data, f"created_{key}")})
        return cls(owned=owned)

    @classmethod
    def _from_v1(
        cls, created: bool, owned: dict[str, str], originals: dict[str, Any], backup: str, digest: str
    ) -> FileRecord:
        if not created or originals or backup or digest or not set(owned) <= _HOSTS_KEYS or "registry" not in owned:
            raise ValueError("a containerd-hosts record names its registry and nothing else")
        if any(owned.get(key, "created") != "created" for key in ("dir", "root")):
            raise ValueError("a containerd-hosts record's dir and root can only be 'created'")
        return cls(owned=owned)


def _installed(owned: dict[str, str], expected: dict[str, str], kind: str) -> bool:
    if owned not in ({}, expected):
        raise ValueError(f"a {kind} record owns {sorted(owned)!r}, not {sorted(expected)!r}")
    return bool(owned)


@dataclass
class PluginRecord(FileRecord):
    """A credential-provider plugin file the agent installed."""

    KIND: ClassVar[str] = "provider-plugin"
    OWNED: ClassVar[dict[str, str]] = {"nodeagent-ecr-credential-provider": "plugin"}
    target: str = KIND

    @property
    def installed(self) -> bool:
        return bool(self.owned)

    def _fields(self) -> dict[str, Any]:
        return {"created": self.created, "installed": self.installed}

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FileRecord:
        return cls(created=_flag(data, "created"), owned=dict(cls.OWNED) if _flag(data, "installed") else {})

    @classmethod
    def _from_v1(
        cls, created: bool, owned: dict[str, str], originals: dict[str, Any], backup: str, digest: str
    ) -> FileRecord:
        if originals or backup or digest:
            raise ValueError(f"a {cls.KIND} record has no originals or backup")
        return cls(created=created, owned=dict(cls.OWNED) if _installed(owned, cls.OWNED, cls.KIND) else {})


@dataclass
class ProviderCredentialsRecord(PluginRecord):
    """The credentials file ``nodeagent-credential-provider`` answers from."""

    KIND: ClassVar[str] = "provider-credentials"
    OWNED: ClassVar[dict[str, str]] = {"credentials": "file"}
    target: str = KIND


@dataclass
class ProviderConfigRecord(FileRecord):
    """The kubelet's CredentialProviderConfig: the providers the agent added (by name), the
    node's own providers of those names it replaced, and the backup of the node's file."""

    KIND: ClassVar[str] = "provider-config"
    target: str = KIND

    @property
    def providers(self) -> list[str]:
        return sorted(self.owned)

    def _fields(self) -> dict[str, Any]:
        return {
            "created": self.created, "providers": self.providers, "originals": dict(sorted(self.originals.items())),
            **_backup_fields(self),
        }  # fmt: skip

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FileRecord:
        names = data.get("providers", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("'providers' is not a list of names")
        return cls(
            created=_flag(data, "created"), owned=dict.fromkeys(names, "provider"),
            originals=_object(data, "originals"), backup=_text(data, "backup"), digest=_text(data, "digest"),
        )  # fmt: skip

    @classmethod
    def _from_v1(
        cls, created: bool, owned: dict[str, str], originals: dict[str, Any], backup: str, digest: str
    ) -> FileRecord:
        if set(owned.values()) - {"provider"}:
            raise ValueError("a provider-config record owns providers only")
        return cls(created=created, owned=owned, originals=originals, backup=backup, digest=digest)


RECORD_TYPES: dict[str, type[FileRecord]] = {
    t.KIND: t
    for t in (
        KubeletRecord,
        ConfigTomlRecord,
        HostsTomlRecord,
        PluginRecord,
        ProviderCredentialsRecord,
        ProviderConfigRecord,
    )
}
"""Every record kind, by the name stored in the ledger."""


@dataclass
class Ledger:
    """Every file the agent manages, keyed by host path (absolute, without the host root)."""

    files: dict[str, FileRecord] = field(default_factory=dict)
    revision: str = ""
    version: int = LEDGER_VERSION
    """The version the stored ledger had (1: migrated on load; the next write stores version 2)."""

    def dump(self) -> bytes:
        body = {
            "version": LEDGER_VERSION,
            "revision": self.revision,
            "files": {path: rec.to_json() for path, rec in sorted(self.files.items())},
        }
        return (json.dumps(body, indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def load(cls, data: bytes | None, *, source: str) -> Ledger:
        """Read a stored ledger (version 1 is migrated); an absent one is empty, a corrupt one is an
        error that names the record (never guessed)."""
        if data is None:
            return cls()
        where = ""
        try:
            body = loads_json(data)
            version = body.get("version") if isinstance(body, dict) else None
            if version not in READABLE_VERSIONS or isinstance(version, bool):
                raise ValueError(f"unknown ledger version (expected one of {', '.join(map(str, READABLE_VERSIONS))})")
            files = body.get("files", {})
            if not isinstance(files, dict):
                raise ValueError("'files' is not an object")
            records = {}
            for path, record in files.items():
                where = f" (record {str(path)[:200]!r})"
                records[str(path)] = FileRecord.from_json(record, version)
            return cls(files=records, revision=_text(body, "revision"), version=version)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # DecodeError is a ValueError
            raise InputError(source, f"ledger is unreadable{where}: {type(exc).__name__}: {exc}") from None

    def copy(self) -> Ledger:
        return Ledger.load(self.dump(), source="<copy>")
