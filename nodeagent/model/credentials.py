"""The credential model: parse, normalise, validate and merge registry credentials.

Pure: bytes and mappings in, frozen dataclasses out. Input is a ``.dockerconfigjson``
(``{"auths": {...}}``) or a legacy ``.dockercfg`` (a bare map), from a file or from a
Secret's base64 ``data``. A bad entry is rejected on its own and named; input that cannot be
read as a whole raises :class:`~nodeagent.errors.InputError` and nothing from it applies.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nodeagent.errors import InputError
from nodeagent.model.decoding import DecodeError, has_surrogate, loads_json
from nodeagent.model.registries import MAX_KEY_BYTES, InvalidRegistry, decode_auth, mask_userinfo, normalise_key

__all__ = [
    "MAX_ENTRIES",
    "MAX_INPUT_BYTES",
    "NAMESPACES_ANNOTATION",
    "NODE_SELECTOR_ANNOTATION",
    "SECRET_ANNOTATIONS",
    "EntryProblem",
    "Format",
    "MergeResult",
    "ParseResult",
    "RegistryCredential",
    "ScopedCredential",
    "merge_credentials",
    "parse_docker_config",
    "parse_namespaces",
    "parse_secret",
    "safe_key",
    "unknown_annotations",
]

MAX_INPUT_BYTES = 1024 * 1024
"""1 MiB: the API server's own limit for a Secret, so nothing legitimate is larger."""

MAX_ENTRIES = 10_000
"""More registries than any real cluster uses; bounds memory and the size of config.json."""

Format = Literal["auto", "dockerconfigjson", "dockercfg"]

SECRET_TYPES: Mapping[str, tuple[str, Format]] = {
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson", "dockerconfigjson"),
    "kubernetes.io/dockercfg": (".dockercfg", "dockercfg"),
}

# Fields the kubelet reads from an entry (Go's encoding/json matches them case-insensitively),
# plus the token fields it ignores but other consumers (containerd) use.
_STRING_FIELDS = ("username", "password", "email", "auth", "identitytoken", "registrytoken")
SECRET_FIELDS = frozenset({"password", "auth", "identitytoken", "registrytoken"})


def safe_key(key: str, limit: int = 120) -> str:
    """A registry key as it may appear in a log line or error: escaped and bounded."""
    text = json.dumps(mask_userinfo(key), ensure_ascii=True)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class RegistryCredential:
    """One registry's credentials, as the kubelet will read them.

    ``key`` is the ``auths`` key as written in the source (it is written back unchanged);
    ``registry`` is the kubelet's normalised key and the identity used for merging.
    """

    key: str
    registry: str
    source: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    email: str = ""
    identitytoken: str = field(default="", repr=False)
    registrytoken: str = field(default="", repr=False)

    @property
    def token_only(self) -> bool:
        """True when only identitytoken/registrytoken are set, which the kubelet ignores."""
        return not (self.auth or self.username or self.password) and bool(self.identitytoken or self.registrytoken)

    def entry(self) -> dict[str, str]:
        """The ``auths`` entry to write: the fields the source gave, in a fixed order."""
        return {name: getattr(self, name) for name in _STRING_FIELDS if getattr(self, name)}


@dataclass(frozen=True)
class EntryProblem:
    """A rejected entry or a warning about one: the key (safe to log) and the reason."""

    key: str
    registry: str | None
    reason: str
    source: str

    def __str__(self) -> str:
        return f"{self.source}: registry {safe_key(self.key)!s}: {self.reason}"


@dataclass(frozen=True)
class ParseResult:
    """What one source yielded: usable credentials, rejected entries and warnings."""

    source: str
    credentials: tuple[RegistryCredential, ...]
    rejected: tuple[EntryProblem, ...] = ()
    warnings: tuple[EntryProblem, ...] = ()
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)
    """Every secret string seen in the input, rejected entries included, for the log redactor."""
    namespaces: tuple[str, ...] | None = None
    """Set when the source is scoped (``nodeagent.io/namespaces``): its credentials are served only
    to pods of these namespaces (names or ``*`` globs), by the credential provider, never node-wide."""


@dataclass(frozen=True)
class ScopedCredential:
    """A credential served only to pods of some namespaces (through the credential provider)."""

    credential: RegistryCredential
    namespaces: tuple[str, ...]


@dataclass(frozen=True)
class MergeResult:
    """Credentials from every source, one per registry, in first-seen order (later sources win).

    ``credentials`` are node-wide (config.json, containerd, the provider); ``scoped`` ones are
    kept apart, in source order, and reach only the credential provider."""

    credentials: tuple[RegistryCredential, ...]
    rejected: tuple[EntryProblem, ...]
    warnings: tuple[EntryProblem, ...]
    conflicts: tuple[EntryProblem, ...]
    scoped: tuple[ScopedCredential, ...] = ()

    @property
    def held_registries(self) -> frozenset[str]:
        """Registries with a rejected entry and no good one: keep what the node has for them."""
        good = {c.registry for c in self.credentials}
        return frozenset(p.registry for p in self.rejected if p.registry and p.registry not in good)


def _decode_text(data: bytes, source: str) -> str:
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(source, f"input is {len(data)} bytes, more than the {MAX_INPUT_BYTES} limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(source, f"input is not UTF-8 (byte {exc.start})") from None


def _load_json(text: str, source: str) -> Any:
    try:
        # Lone surrogates are judged per entry (_parse_entry): one bad password rejects one registry.
        return loads_json(text, surrogates="keep")
    except DecodeError as exc:
        raise InputError(source, str(exc)) from None


def _entries(document: Any, source: str, fmt: Format) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise InputError(source, "top level is not a JSON object")
    if fmt == "auto":
        if "auths" not in document and not all(isinstance(v, dict) for v in document.values()):
            raise InputError(source, "no 'auths' object, and not a .dockercfg map of registry entries")
        fmt = "dockerconfigjson" if "auths" in document else "dockercfg"
    if fmt == "dockerconfigjson":
        auths = document.get("auths")
        if auths is None:
            raise InputError(source, "no 'auths' object (is this a .dockercfg?)")
        if not isinstance(auths, dict):
            raise InputError(source, "'auths' is not a JSON object")
        return auths
    return document


def _parse_entry(key: str, value: Any, source: str) -> tuple[RegistryCredential, list[str]]:
    """Build one credential or raise ValueError with a reason that names no secret."""
    warnings: list[str] = []
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"key is longer than {MAX_KEY_BYTES} bytes")
    try:
        registry = normalise_key(key)
    except InvalidRegistry as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(value, dict):
        raise ValueError("entry is not a JSON object")
    fields: dict[str, str] = {}
    for name, item in value.items():
        canonical = name.lower()
        if canonical not in _STRING_FIELDS or item is None:
            continue  # null: Go (the kubelet) decodes it into a string as empty, so it is absent
        if not isinstance(item, str):
            raise ValueError(f"field '{canonical}' is not a string")
        if has_surrogate(item):
            raise ValueError(f"field '{canonical}' holds a lone UTF-16 surrogate (not valid Unicode text)")
        fields[canonical] = item
    auth = fields.get("auth", "")
    if auth:
        user, password = decode_auth(auth)
        given_user, given_password = fields.get("username"), fields.get("password")
        if (given_user is not None and given_user != user) or (
            given_password is not None and given_password != password
        ):
            warnings.append("username/password disagree with auth; the kubelet uses auth")
    credential = RegistryCredential(key=key, registry=registry, source=source, **fields)
    if credential.token_only:
        warnings.append("only identitytoken/registrytoken set: the kubelet ignores this entry")
    elif not (auth or credential.username or credential.password):
        raise ValueError("entry has no credentials (no auth, username or password)")
    return credential, warnings


def parse_docker_config(data: bytes, *, source: str, fmt: Format = "auto") -> ParseResult:
    """Parse a docker config document; reject bad entries alone, bad documents as a whole."""
    document = _load_json(_decode_text(data, source), source)
    entries = _entries(document, source, fmt)
    if len(entries) > MAX_ENTRIES:
        raise InputError(source, f"{len(entries)} registries, more than the {MAX_ENTRIES} limit")
    credentials: list[RegistryCredential] = []
    rejected: list[EntryProblem] = []
    warnings: list[EntryProblem] = []
    seen_secrets: set[str] = set()
    for key, value in entries.items():
        seen_secrets.update(_secret_strings(value))
        try:
            credential, notes = _parse_entry(key, value, source)
        except ValueError as exc:
            try:
                registry: str | None = normalise_key(key)
            except InvalidRegistry:
                registry = None
            rejected.append(EntryProblem(key=key, registry=registry, reason=str(exc), source=source))
            continue
        credentials.append(credential)
        warnings.extend(
            EntryProblem(key=key, registry=credential.registry, reason=note, source=source) for note in notes
        )
    return ParseResult(source, tuple(credentials), tuple(rejected), tuple(warnings), frozenset(seen_secrets))


def _secret_strings(entry: Any) -> set[str]:
    found: set[str] = set()
    if not isinstance(entry, dict):
        return found
    for name, value in entry.items():
        if name.lower() in SECRET_FIELDS and isinstance(value, str) and value:
            found.add(value)
            if name.lower() == "auth":
                with contextlib.suppress(ValueError):
                    found.add(decode_auth(value)[1])
    return found


NAMESPACES_ANNOTATION = "nodeagent.io/namespaces"
NODE_SELECTOR_ANNOTATION = "nodeagent.io/node-selector"
SECRET_ANNOTATIONS = (NAMESPACES_ANNOTATION, NODE_SELECTOR_ANNOTATION)
"""The annotations of a source Secret nodeagent reads; any other ``nodeagent.io/`` key is a warning
(a misspelt ``nodeagent.io/namespace`` would otherwise make a scoped Secret node-wide unsaid)."""


def unknown_annotations(annotations: Any, *, source: str) -> tuple[EntryProblem, ...]:
    """A warning for every ``nodeagent.io/`` annotation nodeagent does not read, naming the closest
    known one."""
    if not isinstance(annotations, Mapping):
        return ()
    problems = []
    for key in sorted(str(k) for k in annotations):
        if key.startswith("nodeagent.io/") and key not in SECRET_ANNOTATIONS:
            names = [known.split("/", 1)[1] for known in SECRET_ANNOTATIONS]
            close = difflib.get_close_matches(key.split("/", 1)[1], names, n=1, cutoff=0.7)
            hint = f" (did you mean 'nodeagent.io/{close[0]}'?)" if close else ""
            hint = hint or f" (nodeagent reads {', '.join(SECRET_ANNOTATIONS)})"
            reason = f"unknown annotation {safe_key(key)!s} is ignored{hint}"
            problems.append(EntryProblem(key="*", registry=None, reason=reason, source=source))
    return tuple(problems)


_NAMESPACE_GLOB = re.compile(r"[a-z0-9*]([-a-z0-9*]{0,61}[a-z0-9*])?")


MAX_SCOPE_NAMES = 10_000
"""Namespace names one ``nodeagent.io/namespaces`` annotation may hold: a bound on what one Secret
can make every node and every plugin run carry (one Secret within the API's limits could name
60,000, a 32 MiB file when the list was copied per entry)."""
MAX_SCOPE_GLOBS = 100
"""Globs one annotation may hold: each is matched on every pull of a scoped image."""


def parse_namespaces(value: Any) -> tuple[str, ...]:
    """The ``nodeagent.io/namespaces`` annotation: comma-separated namespace names or ``*`` globs.
    Raises ValueError naming what is wrong (an empty list, a name no namespace can have, more names
    or globs than :data:`MAX_SCOPE_NAMES` / :data:`MAX_SCOPE_GLOBS`)."""
    if not isinstance(value, str):
        raise ValueError("is not a string")
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not names:
        raise ValueError("names no namespace (give names or globs such as 'team-a, ci-*')")
    globs = sum("*" in name for name in names)
    if len(names) - globs > MAX_SCOPE_NAMES or globs > MAX_SCOPE_GLOBS:
        raise ValueError(
            f"names {len(names) - globs} namespaces and {globs} globs; at most {MAX_SCOPE_NAMES} and "
            f"{MAX_SCOPE_GLOBS} (use globs such as 'team-*', or split the Secret); its scoping is not applied"
        )
    for name in names:
        if not _NAMESPACE_GLOB.fullmatch(name):
            raise ValueError(f"{name[:64]!r} is not a namespace name or a '*' glob of one")
    return names


def parse_secret(secret: Mapping[str, Any], *, source: str) -> ParseResult:
    """Parse a Secret object (``type`` and base64 ``data``) of a docker config type; a Secret
    annotated ``nodeagent.io/namespaces`` yields credentials scoped to those namespaces."""
    metadata = secret.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    namespaces = None
    if isinstance(annotations, Mapping) and NAMESPACES_ANNOTATION in annotations:
        try:
            namespaces = parse_namespaces(annotations[NAMESPACES_ANNOTATION])
        except ValueError as exc:
            raise InputError(source, f"annotation {NAMESPACES_ANNOTATION} {exc}") from None
    secret_type = secret.get("type")
    if secret_type not in SECRET_TYPES:
        raise InputError(source, f"Secret type {safe_key(str(secret_type))!s} is not a docker config type")
    data_key, fmt = SECRET_TYPES[str(secret_type)]
    data = secret.get("data") or {}
    if not isinstance(data, Mapping) or not isinstance(data.get(data_key), str):
        raise InputError(source, f"Secret has no '{data_key}' key")
    try:
        raw = base64.b64decode(data[data_key], validate=True)
    except (binascii.Error, ValueError):
        raise InputError(source, f"Secret key '{data_key}' is not valid base64") from None
    result = parse_docker_config(raw, source=source, fmt=fmt)
    warnings = result.warnings + unknown_annotations(annotations, source=source)
    return dataclasses.replace(result, namespaces=namespaces or None, warnings=warnings)


def merge_credentials(results: Sequence[ParseResult] | Iterable[ParseResult]) -> MergeResult:
    """Merge sources in order: a later source wins per registry, and the conflict is reported."""
    merged: dict[str, RegistryCredential] = {}
    rejected: list[EntryProblem] = []
    warnings: list[EntryProblem] = []
    conflicts: list[EntryProblem] = []
    scoped: list[ScopedCredential] = []
    for result in results:
        rejected.extend(result.rejected)
        warnings.extend(result.warnings)
        if result.namespaces:
            scoped.extend(ScopedCredential(c, result.namespaces) for c in result.credentials)
            continue
        for credential in result.credentials:
            previous = merged.get(credential.registry)
            if previous is not None:
                where = "another key in the same source" if previous.source == credential.source else previous.source
                conflicts.append(
                    EntryProblem(
                        key=credential.key,
                        registry=credential.registry,
                        reason=f"same registry as {safe_key(previous.key)} in {where}; this one wins",
                        source=credential.source,
                    )
                )
            merged[credential.registry] = credential
    return MergeResult(tuple(merged.values()), tuple(rejected), tuple(warnings), tuple(conflicts), tuple(scoped))
