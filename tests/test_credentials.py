"""Parsing, validation and merging of docker config input."""

from __future__ import annotations

import base64
import json

import pytest

from nodeagent.errors import InputError
from nodeagent.model.credentials import (
    MAX_ENTRIES,
    MAX_INPUT_BYTES,
    merge_credentials,
    parse_docker_config,
    parse_secret,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _doc(auths: object) -> bytes:
    return json.dumps({"auths": auths}).encode()


def test_parses_dockerconfigjson() -> None:
    """Entries of a .dockerconfigjson become credentials keyed by the kubelet's normalised key."""
    result = parse_docker_config(
        _doc(
            {
                "https://index.docker.io/v1/": {"auth": _b64("u:p")},
                "r.example.com:5000": {"username": "a", "password": "b"},
            }
        ),
        source="s",
    )
    assert ["index.docker.io", "r.example.com:5000"] == [c.registry for c in result.credentials]
    assert ["https://index.docker.io/v1/", "r.example.com:5000"] == [c.key for c in result.credentials]
    assert () == result.rejected


def test_parses_legacy_dockercfg() -> None:
    """A bare map (.dockercfg) is read as the auths map."""
    result = parse_docker_config(json.dumps({"r.example.com": {"auth": _b64("u:p")}}).encode(), source="s")
    assert ["r.example.com"] == [c.registry for c in result.credentials]


def test_parses_secret_data() -> None:
    """A Secret's base64 data of either docker type parses; the type picks the data key."""
    data = _doc({"r.example.com": {"auth": _b64("u:p")}})
    secret = {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": base64.b64encode(data).decode()}}
    assert ["r.example.com"] == [c.registry for c in parse_secret(secret, source="ns/name").credentials]
    legacy = {
        "type": "kubernetes.io/dockercfg",
        "data": {
            ".dockercfg": base64.b64encode(json.dumps({"r.example.com": {"auth": _b64("u:p")}}).encode()).decode()
        },
    }
    assert ["r.example.com"] == [c.registry for c in parse_secret(legacy, source="ns/name").credentials]


@pytest.mark.parametrize(
    "secret",
    [
        {"type": "Opaque", "data": {".dockerconfigjson": ""}},
        {"type": "kubernetes.io/dockerconfigjson", "data": {}},
        {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!!!"}},
        {"type": "kubernetes.io/dockerconfigjson"},
    ],
)
def test_rejects_unusable_secret(secret: dict[str, object]) -> None:
    """A Secret of the wrong type, without its key or with bad base64 is rejected as a whole."""
    with pytest.raises(InputError):
        parse_secret(secret, source="ns/name")


def test_bad_entry_rejected_alone() -> None:
    """A bad entry is rejected and named; the good ones still apply."""
    result = parse_docker_config(
        _doc(
            {
                "good.example.com": {"auth": _b64("u:p")},
                "bad.example.com": {"auth": "SENTINEL-not-base64"},
                "nocolon.example.com": {"auth": _b64("SENTINELnocolon")},
                "number.example.com": {"password": 5},
                "empty.example.com": {},
                "bad host": {"auth": _b64("u:p")},
                "list.example.com": ["x"],
            }
        ),
        source="s",
    )
    assert ["good.example.com"] == [c.registry for c in result.credentials]
    rejected = {p.key: p for p in result.rejected}
    assert {
        "bad.example.com",
        "nocolon.example.com",
        "number.example.com",
        "empty.example.com",
        "bad host",
        "list.example.com",
    } == set(rejected)
    assert all("SENTINEL" not in str(p) for p in result.rejected)
    assert "bad.example.com" == rejected["bad.example.com"].registry
    assert rejected["bad host"].registry is None


def test_auth_wins_and_disagreement_warns() -> None:
    """When auth and username/password disagree, the entry is kept and a warning names it."""
    result = parse_docker_config(
        _doc({"r.example.com": {"auth": _b64("u:p"), "username": "other", "password": "x"}}), source="s"
    )
    assert 1 == len(result.credentials)
    assert ["r.example.com"] == [w.key for w in result.warnings]


def test_token_only_entry_kept_and_flagged() -> None:
    """An identitytoken-only entry is kept (containerd can use it) and flagged (the kubelet ignores it)."""
    result = parse_docker_config(_doc({"r.example.com": {"identitytoken": "tok-value"}}), source="s")
    assert [True] == [c.token_only for c in result.credentials]
    assert 1 == len(result.warnings)


def test_field_names_case_insensitive_like_go() -> None:
    """Field names match case-insensitively, as Go's encoding/json does for the kubelet."""
    result = parse_docker_config(_doc({"r.example.com": {"Username": "u", "PASSWORD": "p"}}), source="s")
    assert ("u", "p") == (result.credentials[0].username, result.credentials[0].password)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"auths": []}',
        b"\xff\xfe{}",
        b"[" * 100000 + b"]" * 100000,
        b"{" + b" " * MAX_INPUT_BYTES + b"}",
        b'{"credsStore": "desktop", "x": 1}',
    ],
)
def test_whole_input_rejected(data: bytes) -> None:
    """Input that cannot be read as a whole raises InputError."""
    with pytest.raises(InputError):
        parse_docker_config(data, source="s")


def test_too_many_entries_rejected() -> None:
    """More than MAX_ENTRIES registries is rejected as a whole."""
    auths = {f"r{i}.example.com": {"auth": "dTpw"} for i in range(MAX_ENTRIES + 1)}
    with pytest.raises(InputError):
        parse_docker_config(_doc(auths), source="s")


def test_long_key_rejected_alone() -> None:
    """A key over 2,048 bytes is rejected on its own."""
    key = "r.example.com/" + "a" * 2048
    result = parse_docker_config(_doc({key: {"auth": "dTpw"}, "ok.example.com": {"auth": "dTpw"}}), source="s")
    assert ["ok.example.com"] == [c.registry for c in result.credentials]
    assert [key] == [p.key for p in result.rejected]


def test_merge_later_source_wins() -> None:
    """Later sources win per registry; the conflict is reported, first-seen order is kept."""
    first = parse_docker_config(
        _doc({"a.example.com": {"auth": _b64("a:1")}, "b.example.com": {"auth": _b64("b:1")}}), source="one"
    )
    second = parse_docker_config(_doc({"https://a.example.com/v2/": {"auth": _b64("a:2")}}), source="two")
    merged = merge_credentials([first, second])
    assert ["a.example.com", "b.example.com"] == [c.registry for c in merged.credentials]
    assert "two" == merged.credentials[0].source
    assert [("two", "a.example.com")] == [(c.source, c.registry) for c in merged.conflicts]


def test_held_registries_are_rejected_without_replacement() -> None:
    """A registry whose only entry was rejected is held (the node keeps what it has)."""
    bad = parse_docker_config(_doc({"a.example.com": {"auth": "!!"}, "b.example.com": {"auth": "!!"}}), source="one")
    good = parse_docker_config(_doc({"b.example.com": {"auth": _b64("b:1")}}), source="two")
    assert frozenset({"a.example.com"}) == merge_credentials([bad, good]).held_registries


def test_repr_hides_secrets() -> None:
    """A credential's repr never shows a password, auth or token."""
    result = parse_docker_config(
        _doc({"r.example.com": {"auth": _b64("u:SENTINELPW"), "identitytoken": "SENTINELTOK"}}), source="s"
    )
    text = repr(result)
    assert "SENTINEL" not in text
    assert _b64("u:SENTINELPW") not in text
    assert {"SENTINELPW", "SENTINELTOK", _b64("u:SENTINELPW")} <= result.secret_values
