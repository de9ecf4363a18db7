"""Registry keys, hosts and auth values are read exactly as the kubelet reads them."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.model.registries import InvalidRegistry, decode_auth, normalise_key, validate_registry_host
from tests.real_parsers import KubeletRejects, kubelet_keyring_lookup, kubelet_read_config


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("index.docker.io", "index.docker.io"),
        ("http://registry.example.com", "registry.example.com"),
        ("registry.example.com:5000", "registry.example.com:5000"),
        ("registry.example.com/v2/", "registry.example.com"),
        ("registry.example.com/v2/team/app", "registry.example.com/team/app"),
        ("registry.example.com/v1", "registry.example.com/v1"),
        ("registry.example.com/team", "registry.example.com/team"),
        ("registry.example.com/", "registry.example.com"),
        ("*.example.com", "*.example.com"),
        ("*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com"),
        ("10.0.0.1:5000/x", "10.0.0.1:5000/x"),
        ("[fd00::1]:5000", "[fd00::1]:5000"),
    ],
)
def test_normalise_key_matches_kubelet(key: str, expected: str) -> None:
    """Keys normalise as the kubelet keyring files them: the kubelet's own keyring serves an image
    under the normalised key from a config.json holding the raw key."""
    assert expected == normalise_key(key)
    content = json.dumps({"auths": {key: {"username": "u", "password": "p"}}}).encode()
    assert [("u", "p")] == kubelet_keyring_lookup(content, expected.replace("*", "x") + "/app:1")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "reg.example.com:0",
        "reg.example.com:65536",
        "reg.example.com:http",
        "reg example.com",
        "reg.example.com/a b",
        "reg.example.com\x00",
        "reg.example.com\n",
        "reg.example.com/../etc",
        "ftp://reg.example.com",
        "HTTPS://reg.example.com",
        "fd00::1",
        "[fd00::zz]",
        "réseau.example.com",
        "reg..example.com",
        "reg.example.com/x?y=1",
        "a" * 2049,
    ],
)
def test_normalise_key_rejects(key: str) -> None:
    """Keys no image could match, or that smuggle control characters, are rejected."""
    with pytest.raises(InvalidRegistry):
        normalise_key(key)


@pytest.mark.parametrize(
    "host",
    ["registry.example.com", "registry.example.com:5000", "10.1.2.3", "10.1.2.3:443", "[::1]:5000", "[fd00::1]", "a"],
)
def test_strict_host_accepts(host: str) -> None:
    """DNS names, IPv4 and bracketed IPv6, each with an optional port, pass the strict validator."""
    assert host == validate_registry_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "..",
        "../etc",
        "a/b",
        "reg.example.com/",
        "a\\b",
        "*.example.com",
        "reg.example.com:0",
        "reg.example.com:99999",
        "-bad.example.com",
        "bad-.example.com",
        "a..b",
        "a\x00b",
        "a b",
        "a\tb",
        "a\x7fb",
        "999.1.1.1",
        "::1",
        "[::1",
        "[::1]x",
        "under_score.example.com",
        "ü.example.com",
        "x" * 64 + ".com",
    ],
)
def test_strict_host_rejects(host: str) -> None:
    """Anything that could escape a directory or is not a host name is refused."""
    with pytest.raises(InvalidRegistry):
        validate_registry_host(host)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (base64.b64encode(b"user:pass").decode(), ("user", "pass")),
        (base64.b64encode(b"user:pa:ss").decode(), ("user", "pa:ss")),
        (base64.b64encode(b"u:p").decode().rstrip("="), ("u", "p")),
        ("dXNlcjpw\nYXNz", ("user", "pass")),
        (base64.b64encode(b":").decode(), ("", "")),
    ],
)
def test_decode_auth_accepts(auth: str, expected: tuple[str, str]) -> None:
    """Padded and unpadded base64 of user:pass decode, as in the kubelet."""
    assert expected == decode_auth(auth)


@pytest.mark.parametrize(
    "auth",
    ["not base64!", base64.b64encode(b"nocolon").decode(), "dXNlcjpwYXNz=", "dXNl=cjpwYXNz", "abcde", " dXNlcjpwYXNz"],
)
def test_decode_auth_rejects(auth: str) -> None:
    """Values the kubelet cannot decode are rejected, and the error never includes them."""
    with pytest.raises(ValueError) as info:
        decode_auth(auth)
    assert auth.strip() not in str(info.value)


@given(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r :", min_size=1, max_size=40)
)
def test_decode_auth_agrees_with_the_kubelet(auth: str) -> None:
    """For any non-empty string (an empty auth is not decoded at all), the agent accepts an auth
    exactly when the kubelet's own decoder does, and reads the same user and password."""
    try:
        (entry,) = kubelet_read_config(json.dumps({"auths": {"r.example": {"auth": auth}}}).encode())
        kubelet: tuple[str, str] | None = (entry.username, entry.password)
    except KubeletRejects:
        kubelet = None
    try:
        ours: tuple[str, str] | None = decode_auth(auth)
    except ValueError:
        ours = None
    assert kubelet == ours
