"""An independent model of how the kubelet reads ``config.json``: the test oracle.

Written from the kubelet's source as summarised in ../shared/design.md ("Facts about the
kubelet"), deliberately without importing anything from ``nodeagent``, so that a bug in the
agent's parser cannot hide itself in the tests:

* ``pkg/credentialprovider/config.go``: ``DockerConfigJSON{Auths, HttpHeaders}`` decoded with Go's
  ``encoding/json`` (field names matched case-insensitively; a type mismatch fails the whole
  file); each entry decodes ``username``, ``password``, ``email``, ``auth`` as strings and, when
  ``auth`` is non-empty, decodes it with ``StdEncoding`` if it ends in ``=`` else
  ``RawStdEncoding`` (both skip ``\\r``/``\\n``) and splits on the first ``:``; any failure makes
  the whole file invalid;
* ``pkg/credentialprovider/keyring.go``: keys get ``https://`` when schemeless; the host plus a path
  with a leading ``/v1/`` or ``/v2/`` cut to ``/`` (a path of ``/`` dropped) is the keyring key.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class KubeletRejects(Exception):
    """The kubelet would ignore this whole file and move on to the next search path."""


@dataclass(frozen=True)
class Cred:
    key: str
    username: str
    password: str


def _go_decode(field: str) -> bytes:
    data = field.replace("\r", "").replace("\n", "")
    if field.strip().endswith("="):
        if len(data) % 4 or not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", data):
            raise KubeletRejects("illegal base64 data")
        return base64.b64decode(data, validate=True)
    if not re.fullmatch(r"[A-Za-z0-9+/]*", data) or len(data) % 4 == 1:
        raise KubeletRejects("illegal base64 data")
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def _field(obj: dict[str, Any], name: str) -> Any:
    # Go: exact match preferred, else case-insensitive; for duplicates the last one decoded wins.
    found = None
    for key, value in obj.items():
        if key.lower() == name:
            found = value
    return found


def parse_config_json(content: bytes) -> list[Cred]:
    """Every credential the kubelet would load from this file, or raise KubeletRejects."""
    try:
        doc = json.loads(content)
    except ValueError as exc:
        raise KubeletRejects("not JSON") from exc
    if not isinstance(doc, dict):
        raise KubeletRejects("not an object")
    headers = _field(doc, "httpheaders")
    if headers is not None and not (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())):
        raise KubeletRejects("HttpHeaders is not map[string]string")
    auths = _field(doc, "auths")
    if auths is None:
        return []
    if not isinstance(auths, dict):
        raise KubeletRejects("auths is not an object")
    creds = []
    for key, entry in auths.items():
        if entry is None:
            creds.append(Cred(key, "", ""))
            continue
        if not isinstance(entry, dict):
            raise KubeletRejects(f"entry {key!r} is not an object")
        values = {}
        for name in ("username", "password", "email", "auth"):
            value = _field(entry, name)
            if value is not None and not isinstance(value, str):
                raise KubeletRejects(f"entry {key!r} field {name} is not a string")
            values[name] = value or ""
        username, password = values["username"], values["password"]
        if values["auth"]:
            user_pass = _go_decode(values["auth"]).decode("utf-8", "replace")
            if ":" not in user_pass:
                raise KubeletRejects(f"entry {key!r} auth has no ':'")
            username, password = user_pass.split(":", 1)
        creds.append(Cred(key, username, password))
    return creds


def keyring_key(key: str) -> str:
    """The keyring key the kubelet files a ``config.json`` key under."""
    value = key if key.startswith(("https://", "http://")) else "https://" + key
    parsed = urlsplit(value)
    path = parsed.path
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return parsed.netloc + path if path and path != "/" else parsed.netloc
