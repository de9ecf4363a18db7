"""The one strict decoding step for every untrusted JSON, TOML and YAML document.

Secrets, mounted files, the node's own files (``config.json``, containerd's ``config.toml``, the
kubelet's ``CredentialProviderConfig``), the registry settings, the ledger and socket requests all
come through here. Python's parsers fail in ways that are not their documented error type, and
each of those once crashed the agent on every node:

* an integer of more than 4,300 digits raises a bare ``ValueError`` (the int-string limit), in
  ``json``, ``tomllib``, ``tomlkit`` and PyYAML alike;
* deep nesting raises ``RecursionError``;
* ``json`` accepts ``NaN``/``Infinity`` and reads ``1e999`` as ``inf``, which it then writes back as
  ``Infinity``: not JSON for any other reader;
* ``json`` accepts a lone UTF-16 surrogate (``"\\ud800"``), a ``str`` that cannot be encoded, so the
  failure comes later, when the agent writes or logs it.

Every one of these becomes :class:`DecodeError` here, a ``ValueError`` whose message names what is
wrong and never any of the content, so callers map it to their existing per-source or per-entry
rejection. Pure: no I/O; tomlkit and PyYAML are imported on use.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tomlkit import TOMLDocument

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_NUMBER_DIGITS",
    "DecodeError",
    "has_surrogate",
    "loads_json",
    "loads_toml",
    "loads_yaml",
    "parse_toml_document",
]

MAX_DEPTH = 100
"""Deepest nesting accepted. Real files nest 5 levels; 100 stays far from Python's recursion limit
in every later step (copying, dumping, redacting), whatever the caller's stack depth."""

MAX_NODES = 1_000_000
"""Most values in one document (YAML aliases can make a small file huge when walked)."""

MAX_NUMBER_DIGITS = 400
"""Longest number accepted: float64, what Go reads numbers into, has at most 309 integer digits."""

Surrogates = Literal["reject", "replace", "keep"]

_SURROGATE = re.compile("[\ud800-\udfff]")


class DecodeError(ValueError):
    """A document cannot be used; the message names why (and where, by key), never a value."""


def has_surrogate(text: str) -> bool:
    """Whether a string holds a lone UTF-16 surrogate (it cannot be encoded as UTF-8)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8 (byte {exc.start})") from None


_Path = tuple[str, "_Path"] | None
"""Where a value sits: (key, parent's path), built only as cheap links; spelled out on error."""


def _where(link: _Path) -> str:
    parts: list[str] = []
    while link is not None:
        parts.append(link[0])
        link = link[1]
    parts.reverse()
    # a key with user info ("https://robot:pw@host") must not carry its password into a message
    parts = ["***@" + p.rsplit("@", 1)[1] if "@" in p else p for p in parts]
    shown = "/".join(json.dumps(p, ensure_ascii=True)[1:-1][:60] for p in parts[:6])
    return f" at '{shown}'" if parts else ""


def _walk(document: Any, *, surrogates: Surrogates, finite: bool = True) -> Any:
    """Check depth, size and strings iteratively; with ``replace``, return a copy with each lone
    surrogate replaced by U+FFFD (what Go's encoding/json does, so what the kubelet reads)."""
    nodes = 0
    surrogate_seen = False
    stack: list[tuple[Any, int, _Path]] = [(document, 0, None)]
    while stack:
        value, depth, link = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise DecodeError(f"more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise DecodeError(f"nested more than {MAX_DEPTH} levels{_where(link)}")
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and has_surrogate(key):
                    if surrogates == "reject":
                        raise DecodeError(f"a key holds a lone UTF-16 surrogate{_where(link)}")
                    surrogate_seen = True
                stack.append((item, depth + 1, (str(key), link)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (str(i), link)) for i, item in enumerate(value))
        elif isinstance(value, str):
            if has_surrogate(value):
                if surrogates == "reject":
                    raise DecodeError(f"a string holds a lone UTF-16 surrogate{_where(link)}")
                surrogate_seen = True
        elif finite and isinstance(value, float) and not math.isfinite(value):
            raise DecodeError(f"a number is not finite{_where(link)}")
    return _replace_surrogates(document) if surrogates == "replace" and surrogate_seen else document


def _replace_surrogates(value: Any) -> Any:
    # Depth is bounded by _walk (MAX_DEPTH), so recursion is safe here.
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if has_surrogate(value) else value
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise DecodeError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS + 10:
        raise DecodeError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    value = float(text)
    if not math.isfinite(value):
        raise DecodeError("a number is too large for a 64-bit float")
    return value


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not a JSON value")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        repeated = ""
        for key, _ in pairs:
            if key in seen:
                repeated = key
                break
            seen.add(key)
        # A field name is safe to show; a registry key might carry more than a name.
        named = f" {repeated!r}" if re.fullmatch(r"[A-Za-z]{1,32}", repeated) else ""
        raise DecodeError(f"an object repeats the key{named} (Go's decoder reads repeated keys differently)")
    return document


def loads_json(data: bytes | str, *, surrogates: Surrogates = "reject", duplicates: bool = True) -> Any:
    """Parse JSON strictly (standard JSON only, bounded numbers and depth).

    ``surrogates``: ``reject`` a lone UTF-16 surrogate anywhere; ``replace`` it with U+FFFD, as
    Go does (for node files the kubelet reads); ``keep`` it for the caller to judge per entry.
    ``duplicates=False`` rejects an object that repeats a key: for node files, where Go (the
    kubelet) decodes every occurrence (a type error in any fails the file, a repeated map field
    is merged) while Python keeps only the last.
    """
    text = _text(data)
    hook = None if duplicates else _unique_pairs
    try:
        document = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant, object_pairs_hook=hook
        )
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        # exc.msg and the position only; never the document text.
        raise DecodeError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError:
        raise DecodeError("not valid JSON (a value cannot be converted)") from None
    return _walk(document, surrogates=surrogates)


def loads_toml(data: bytes | str) -> dict[str, Any]:
    """Parse TOML strictly with the standard library (read-only uses)."""
    text = _text(data)
    try:
        document = tomllib.loads(text, parse_float=_parse_float_toml)
    except DecodeError:
        raise
    except tomllib.TOMLDecodeError as exc:
        raise DecodeError(f"not valid TOML ({exc})") from None
    except RecursionError:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels") from None
    except ValueError:  # the int-string limit: tomllib calls int() on any length
        raise DecodeError(f"a number has more than {MAX_NUMBER_DIGITS} digits") from None
    _check_toml_ints(document)
    return dict(_walk(document, surrogates="reject", finite=False))


def _parse_float_toml(text: str) -> float:
    # TOML's nan/inf are valid (containerd's go-toml reads them too); only bound the length.
    if len(text) > MAX_NUMBER_DIGITS + 10:
        raise DecodeError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return float(text)


def _check_toml_ints(document: Any) -> None:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            raise DecodeError("an integer does not fit in 64 bits (TOML's integer range)")


def parse_toml_document(data: bytes | str) -> TOMLDocument:
    """Parse TOML with tomlkit for an edit that keeps comments and layout (strict as above).

    The document is first read with :func:`loads_toml`, so tomlkit only ever sees a file the
    strict reader accepts (tomlkit's own failures are not all TOMLKitError).
    """
    import tomlkit

    text = _text(data)
    loads_toml(text)
    try:
        return tomlkit.parse(text)
    except Exception as exc:  # tomlkit's failures on valid TOML are of any type
        raise DecodeError(f"tomlkit cannot edit this TOML ({type(exc).__name__})") from None


def loads_yaml(data: bytes | str) -> Any:
    """Parse YAML with PyYAML's safe loader, then apply the same bounds as JSON."""
    import yaml

    text = _text(data)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DecodeError(f"not valid YAML{where}") from None
    except RecursionError:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels") from None
    except ValueError:
        raise DecodeError(f"a number has more than {MAX_NUMBER_DIGITS} digits") from None
    return _walk(document, surrogates="reject")
