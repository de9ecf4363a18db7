"""The ownership ledger: what the agent wrote on this node, so it removes only that.

Pure data and (de)serialisation; :mod:`nodeagent.hostfs` stores it atomically (0600) at
``<state dir>/state.json``. Foreign originals (entries the agent replaced) are kept here so
they can be restored; they are node secrets already, held with the same protection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nodeagent.decoding import loads_json
from nodeagent.errors import InputError

__all__ = ["LEDGER_VERSION", "FileRecord", "Ledger"]

LEDGER_VERSION = 1


@dataclass
class FileRecord:
    """What the agent owns in one host file.

    ``owned`` maps each ``auths`` key the agent wrote to its normalised registry;
    ``originals`` holds foreign entries the agent replaced, by their original key;
    ``created`` says the file did not exist before the agent first wrote it (or, for a
    ``containerd-hosts`` record, that the agent owns the whole file).
    """

    target: str
    created: bool = False
    owned: dict[str, str] = field(default_factory=dict)
    originals: dict[str, Any] = field(default_factory=dict)
    backup: str = ""
    """Host path of a copy of the file as it was before the agent's first in-place edit."""
    digest: str = ""
    """SHA-256 of the bytes the agent last wrote, to tell whether anyone changed the file since
    (in the ledger written before a pass's writes: the digests from before and after the pass,
    space-separated, so a pass cut short by a crash still recognises its own file)."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "target": self.target,
            "created": self.created,
            "owned": dict(sorted(self.owned.items())),
            "originals": dict(sorted(self.originals.items())),
        }
        if self.backup:
            body["backup"] = self.backup
        if self.digest:
            body["digest"] = self.digest
        return body

    @classmethod
    def from_json(cls, data: Any) -> FileRecord:
        if not isinstance(data, dict):
            raise ValueError("file record is not an object")
        owned, originals = data.get("owned", {}), data.get("originals", {})
        if not isinstance(owned, dict) or not all(isinstance(v, str) for v in owned.values()):
            raise ValueError("'owned' is not a map of strings")
        if not isinstance(originals, dict):
            raise ValueError("'originals' is not an object")
        return cls(
            target=str(data.get("target", "")),
            created=bool(data.get("created", False)),
            owned=dict(owned),
            originals=dict(originals),
            backup=str(data.get("backup", "")),
            digest=str(data.get("digest", "")),
        )


@dataclass
class Ledger:
    """Every file the agent manages, keyed by host path (absolute, without the host root)."""

    files: dict[str, FileRecord] = field(default_factory=dict)
    revision: str = ""

    def dump(self) -> bytes:
        body = {
            "version": LEDGER_VERSION,
            "revision": self.revision,
            "files": {path: rec.to_json() for path, rec in sorted(self.files.items())},
        }
        return (json.dumps(body, indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def load(cls, data: bytes | None, *, source: str) -> Ledger:
        """Read a stored ledger; an absent one is empty, a corrupt one is an error (never guessed)."""
        if data is None:
            return cls()
        try:
            body = loads_json(data)
            if not isinstance(body, dict) or body.get("version") != LEDGER_VERSION:
                raise ValueError(f"unknown ledger version (expected {LEDGER_VERSION})")
            files = body.get("files", {})
            if not isinstance(files, dict):
                raise ValueError("'files' is not an object")
            return cls(
                files={str(p): FileRecord.from_json(r) for p, r in files.items()},
                revision=str(body.get("revision", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # DecodeError is a ValueError
            raise InputError(source, f"ledger is unreadable: {type(exc).__name__}: {exc}") from None

    def copy(self) -> Ledger:
        return Ledger.load(self.dump(), source="<copy>")
