"""Hostile and broken input never crashes the agent, never yields a file the kubelet rejects,
never writes outside the agent's own files, and always names the bad entry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import SyncSettings
from nodeagent.errors import InputError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import ParseResult, parse_docker_config
from nodeagent.reconcile import sync
from tests.conftest import FIGURES, b64
from tests.real_parsers import kubelet_read_config

CORPUS = Path(__file__).resolve().parent / "corpus"
RAW_TOKENS = {
    "@huge-int@": "1" * 5000,
    "@nan@": "NaN",
    "@inf@": "-Infinity",
    "@big-float@": "1e999",
    "@deep@": "[" * 200 + "]" * 200,
}
"""Placeholders the generators put in strings, replaced in the JSON text by tokens json.dumps
cannot produce (the classes that once crashed every agent: issue 14, items 3 and 4)."""
FOREIGN = {"auths": {"foreign.example.com": {"auth": b64("node:own")}}, "credsStore": "desktop"}
tried = {"corpus": 0, "documents": 0, "bytes": 0}


def _record() -> None:
    FIGURES["hostile inputs tried"] = (
        f"{tried['corpus']} corpus files, {tried['documents']} generated documents, "
        f"{tried['bytes']} random byte strings"
    )


def _record() -> None:
    FIGURES["hostile inputs tried"] = (
        f"{tried['corpus']} corpus files, {tried['documents']} generated documents, "
        f"{tried['bytes']} random byte strings"
    )


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check_sync(host_root: Path, data: bytes) -> ParseResult | None:
    """Sync ``data`` over a node with a foreign config.json; check every safety property."""
    config = host_root / "var/lib/kubelet/config.json"
    config.write_text(json.dumps(FOREIGN))
    before = config.read_bytes()
    try:
        result = parse_docker_config(data, source="hostile")
    except InputError:
        assert before == config.read_bytes()
        return None
    sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), [result])
    creds = {c.key: c for c in kubelet_read_config(config.read_bytes())}  # the kubelet accepts it
    assert "foreign.example.com" in creds or any(c.registry == "foreign.example.com" for c in result.credentials)
    allowed = {
        "var",
        "var/lib",
        "var/lib/kubelet",
        "var/lib/kubelet/config.json",
        "var/lib/nodeagent",
        "var/lib/nodeagent/state.json",
        "var/lib/nodeagent/lock",
    }
    assert _tree(host_root) <= allowed
    for problem in result.rejected:
        assert problem.key is not None and problem.reason
    return result


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus(name: str, host_root: Path) -> None:
    """Every hand-written hostile case is handled: rejected as a whole or entry by entry, safely."""
    tried["corpus"] += 1
    _record()
    _check_sync(host_root, (CORPUS / name).read_bytes())


def test_hostile_keys_named_and_rejected(host_root: Path) -> None:
    """Keys with '..', '/', NUL, newlines, quotes, bad ports or non-ASCII are rejected by name; good ones apply."""
    result = _check_sync(host_root, (CORPUS / "hostile-keys.json").read_bytes())
    assert result is not None
    assert {"ok.example.com", "[::1]:5000", "xn--bcher-kva.example"} == {c.key for c in result.credentials}
    assert 11 == len(result.rejected)


def test_duplicate_keys_last_wins_like_go(host_root: Path) -> None:
    """With duplicate JSON keys the last one wins, as in the kubelet's Go decoder."""
    result = _check_sync(host_root, (CORPUS / "duplicate-keys.json").read_bytes())
    assert result is not None
    assert ("u", "second") == (lambda c: (c.username, c.password))(
        {c.key: c for c in kubelet_read_config((host_root / "var/lib/kubelet/config.json").read_bytes())}[
            "r.example.com"
        ]
    )


_hostile_text = st.one_of(
    st.text(max_size=40),
    # lone UTF-16 surrogates: json.dumps writes them as \ud800 escapes, which json.loads accepts
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3),
    st.builds(lambda a, b: f"{a}\ud800{b}", st.text(max_size=4), st.text(max_size=4)),
    st.sampled_from(list(RAW_TOKENS)),
    st.sampled_from(["..", "/", "\x00", "\n", '"', "'", "[", "]", "=", "\\", "{}", "%00", "a" * 3000, "é", "::1"]),
    st.builds(lambda a, b: f"{a}.example.com{b}", st.text(max_size=8), st.text(max_size=8)),
)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _hostile_text)
_json = st.recursive(
    _json_scalar,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_hostile_text, children, max_size=4)),
    max_leaves=20,
)
_entry = st.one_of(
    _json,
    st.fixed_dictionaries(
        {},
        optional={
            "auth": st.one_of(
                _hostile_text, st.builds(lambda u, p: b64(f"{u}:{p}"), st.text(max_size=8), st.text(max_size=8))
            ),
            "username": _json_scalar,
            "password": _json_scalar,
            "identitytoken": _hostile_text,
            "email": _hostile_text,
        },
    ),
)
_document = st.one_of(
    st.fixed_dictionaries({"auths": st.dictionaries(_hostile_text, _entry, max_size=6)}),
    st.dictionaries(_hostile_text, _entry, max_size=6),
    _json,
)


def dump_hostile(document: Any) -> bytes:
    """JSON text of a generated document, with each raw-token placeholder string replaced by a token
    json.dumps cannot write: a 5,000-digit integer, NaN/Infinity, nesting past every limit."""
    text = json.dumps(document)
    for placeholder, raw in RAW_TOKENS.items():
        text = text.replace(json.dumps(placeholder), raw)
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_document)
def test_generated_documents(document: Any, host_root: Path) -> None:
    """Generated JSON documents with hostile keys and values (surrogates, huge integers, NaN,
    Infinity, deep nesting among them) are handled safely: rejected whole or per entry, never a crash."""
    tried["documents"] += 1
    _check_sync(host_root, dump_hostile(document))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_bytes(data: bytes, host_root: Path) -> None:
    """Random bytes are rejected as a whole (or parsed), never crash, never break the node's file."""
    tried["bytes"] += 1
    _record()
    _check_sync(host_root, data)


def test_nothing_outside_the_host_root(tmp_path: Path) -> None:
    """Even with hostile keys, nothing is created outside the host root."""
    outside_before = set(os.listdir(tmp_path))
    host_root = tmp_path / "host"
    (host_root / "var/lib/kubelet").mkdir(parents=True)
    _check_sync(host_root, (CORPUS / "hostile-keys.json").read_bytes())
    assert outside_before | {"host"} == set(os.listdir(tmp_path))
