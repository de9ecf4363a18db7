"""The kubelet target: merge managed entries into the kubelet's ``config.json``.

``render_kubelet_config`` is pure. It keeps every foreign ``auths`` entry and every unknown
top-level key, parks a foreign entry it replaces in the ledger record and restores it when the
managed entry goes away, and refuses to produce a file the kubelet would reject (one bad
``auth`` makes the kubelet ignore the whole file and fall through to the next search path).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from nodeagent.errors import TargetError
from nodeagent.model.credentials import RegistryCredential, safe_key
from nodeagent.model.decoding import DecodeError, loads_json
from nodeagent.model.ledger import FileRecord, KubeletRecord
from nodeagent.model.registries import InvalidRegistry, decode_auth, normalise_key
from nodeagent.targets import Desired, FileChange, HostView, Plan, Rendered

__all__ = [
    "TARGET",
    "KubeletTarget",
    "entry_credential",
    "kubelet_entries",
    "kubelet_problems",
    "render_kubelet_config",
]

TARGET = KubeletRecord.KIND
_KUBELET_FIELDS = ("username", "password", "email", "auth")


def kubelet_problems(document: Any) -> list[str]:
    """Why the kubelet would reject this parsed config.json as a whole (empty: it would accept it).

    Go's encoding/json matches field names case-insensitively and fails the whole decode on a
    type mismatch; the entry decoder then fails on an ``auth`` that does not decode.
    """
    if not isinstance(document, dict):
        return ["top level is not a JSON object"]
    problems: list[str] = []
    for name, value in document.items():
        lowered = name.lower()
        if lowered == "auths" and value is not None and not isinstance(value, dict):
            problems.append(f"top-level '{safe_key(name)}' is not an object")
        if (
            lowered == "httpheaders"
            and value is not None
            and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))
        ):
            problems.append(f"top-level '{safe_key(name)}' is not a map of strings")
    for name, value in document.items():
        if name.lower() == "auths" and isinstance(value, dict):  # Go merges every spelling into one map
            for key, entry in value.items():
                reason = _entry_problem(entry)
                if reason:
                    problems.append(f"entry {safe_key(key)}: {reason}")
    return problems


def _entry_problem(entry: Any) -> str | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return "entry is not a JSON object"
    auth = ""
    for name, value in entry.items():
        if name.lower() in _KUBELET_FIELDS:
            if value is None:
                continue  # Go decodes null into a string as "leave it empty"
            if not isinstance(value, str):
                return f"field '{safe_key(name)}' is not a string"
            if name.lower() == "auth":
                auth = value
    if auth:
        try:
            decode_auth(auth)
        except ValueError as exc:
            return str(exc)
    return None


def kubelet_entries(document: Any) -> dict[str, Any]:
    """The ``auths`` entries the kubelet reads from a config.json it accepts: Go decodes every
    top-level spelling of ``auths`` into one map, in order (a later object adds to it and wins on
    a repeated key; a later ``null`` empties it)."""
    entries: dict[str, Any] = {}
    for name, value in document.items() if isinstance(document, dict) else ():
        if name.lower() == "auths":
            if value is None:
                entries = {}
            elif isinstance(value, dict):
                entries.update(value)
    return entries


def entry_credential(entry: Any) -> tuple[str, str]:
    """The (username, password) the kubelet reads from one ``auths`` entry: field names matched
    case-insensitively (the last occurrence wins, as in Go), ``null`` as empty, and a non-empty
    ``auth`` overriding both. Raises ValueError (never naming a value) when the kubelet would
    reject the entry, and so the whole file."""
    reason = _entry_problem(entry)
    if reason:
        raise ValueError(reason)
    # null leaves a field as an earlier occurrence set it (Go decodes null into a string as a no-op).
    fields = {k.lower(): v for k, v in (entry or {}).items() if k.lower() in _KUBELET_FIELDS and v is not None}
    if fields.get("auth"):
        return decode_auth(fields["auth"])
    return fields.get("username", ""), fields.get("password", "")


def _identity(key: str) -> str | None:
    try:
        return normalise_key(key)
    except InvalidRegistry:
        return None


def render_kubelet_config(
    *,
    desired: Sequence[RegistryCredential],
    current: bytes | None,
    record: FileRecord | None,
    path: str,
    held: Collection[str] = (),
) -> Rendered:
    """Merge ``desired`` into the current ``config.json`` bytes.

    ``held`` names registries whose source entry was rejected: the entries the agent already
    wrote for them stay as they are, rather than being removed on the strength of bad input.
    """
    old = record or KubeletRecord(created=current is None)
    document: dict[str, Any]
    if current is None:
        document = {}
    else:
        try:
            # A lone surrogate in the node's own entries is read as U+FFFD, as the kubelet (Go) reads it.
            loaded = loads_json(current, surrogates="replace", duplicates=False)
        except DecodeError as exc:
            raise TargetError(
                path, f"the existing file cannot be used ({exc}); refusing to overwrite it (fix or remove it)"
            ) from None
        if not isinstance(loaded, dict):
            raise TargetError(path, "the existing file is not a JSON object; refusing to overwrite it")
        document = loaded
        spellings = sorted(name for name in document if name.lower() == "auths" and name != "auths")
        if spellings:
            raise TargetError(
                path,
                f"the existing file spells its credentials map {spellings[0]!r}, which the kubelet reads "
                "together with 'auths'; refusing to edit it (rename it to 'auths')",
            )
    auths_value = document.get("auths", {})
    if not isinstance(auths_value, dict):
        raise TargetError(path, "the existing 'auths' is not an object; refusing to overwrite it")
    auths: dict[str, Any] = dict(auths_value)
    wanted = {c.registry for c in desired}
    new = KubeletRecord(created=old.created or current is None)

    # 1. Take back what the agent wrote (except held registries), and put back originals it no
    #    longer replaces.
    for key, registry in old.owned.items():
        if registry in held and registry not in wanted:
            if key in auths:
                new.owned[key] = registry
            continue
        auths.pop(key, None)
    for key, entry in old.originals.items():
        identity = _identity(key)
        if identity in wanted or identity in held:
            new.originals[key] = entry
        elif key not in auths:
            auths[key] = entry

    # 2. Park foreign entries for the same registry, then write the managed ones.
    foreign_by_registry: dict[str | None, list[str]] = {}
    for key in auths:
        foreign_by_registry.setdefault(_identity(key), []).append(key)
    for credential in desired:
        for key in foreign_by_registry.get(credential.registry, ()):
            if key in auths and key not in new.owned:
                # A foreign entry re-added since an earlier park is the newer intent: it replaces the old.
                new.originals[key] = auths.pop(key)
        auths[credential.key] = credential.entry()
        new.owned[credential.key] = credential.registry

    if not auths and new.created and set(document) <= {"auths"}:
        return Rendered(content=None, record=new)
    document["auths"] = auths
    problems = kubelet_problems(document)
    if problems:
        raise TargetError(
            path,
            "the kubelet would ignore the whole file because of "
            + "; ".join(problems)
            + " (fix or remove the foreign entry; nothing was written)",
        )
    content = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return Rendered(content=content, record=new)


class KubeletTarget:
    """The kubelet's ``config.json``: a failure fails the pass (nothing is written)."""

    name = TARGET
    isolated = False
    kinds = frozenset({TARGET})

    def __init__(self, path: str, *, node_wide: bool = True) -> None:
        self.path = path
        self.node_wide = node_wide
        """False with ``--provider-only``: node-wide credentials are served by the provider alone."""

    def trusts(self, path: str, record: FileRecord) -> bool:
        return path.endswith("/config.json")

    def plan(self, host: HostView, desired: Desired, records: Mapping[str, FileRecord]) -> Plan:
        current = host.read(self.path)
        record = records.get(self.path)
        held = set(desired.held)
        if desired.hold_all and record is not None:
            held.update(record.owned.values())
        render = render_kubelet_config(
            desired=desired.merged.credentials if self.node_wide else (),
            current=current,
            record=record,
            path=self.path,
            held=held,
        )
        plan = Plan(changes=[FileChange(self.path, current, render.content)])
        plan.keep(self.path, render.record)
        return plan
