"""The kubelet target renders config.json: merge, never clobber, never produce a file the kubelet rejects."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.errors import TargetError
from nodeagent.model.credentials import RegistryCredential, merge_credentials, parse_docker_config
from nodeagent.model.ledger import FileRecord
from nodeagent.model.registries import normalise_key
from nodeagent.targets.kubelet import render_kubelet_config
from tests.conftest import b64, docker_config
from tests.real_parsers import kubelet_read_config

PATH = "/var/lib/kubelet/config.json"


def _creds(entries: dict[str, tuple[str, str]]) -> tuple[RegistryCredential, ...]:
    return merge_credentials([parse_docker_config(docker_config(entries), source="test")]).credentials


def _render(
    desired: tuple[RegistryCredential, ...], current: Any, record: FileRecord | None = None, held: tuple[str, ...] = ()
) -> tuple[Any, FileRecord]:
    raw = None if current is None else json.dumps(current).encode()
    result = render_kubelet_config(desired=desired, current=raw, record=record, path=PATH, held=held)
    return (None if result.content is None else json.loads(result.content)), result.record


def test_writes_into_empty_node() -> None:
    """With no file, the result holds exactly the managed entries and the kubelet accepts it."""
    doc, record = _render(_creds({"r.example.com": ("u", "p")}), None)
    assert {"auths": {"r.example.com": {"auth": b64("u:p")}}} == doc
    assert {"r.example.com": "r.example.com"} == record.owned
    assert record.created
    assert [("u", "p")] == [(c.username, c.password) for c in kubelet_read_config(json.dumps(doc).encode())]


def test_keeps_foreign_entries_and_top_level_keys() -> None:
    """Foreign auths entries and unknown top-level keys survive the merge unchanged."""
    current = {
        "auths": {"foreign.example.com": {"auth": b64("f:f")}},
        "credsStore": "desktop",
        "HttpHeaders": {"User-Agent": "x"},
    }
    doc, record = _render(_creds({"r.example.com": ("u", "p")}), current)
    assert current["auths"]["foreign.example.com"] == doc["auths"]["foreign.example.com"]
    assert ("desktop", {"User-Agent": "x"}) == (doc["credsStore"], doc["HttpHeaders"])
    assert not record.created


def test_replaced_foreign_entry_parked_and_restored() -> None:
    """A foreign entry for the same registry is parked in the ledger and comes back when unmanaged."""
    original = {"auth": b64("node:own")}
    current = {"auths": {"https://r.example.com/v1/": original}}
    doc, record = _render(_creds({"r.example.com": ("u", "p")}), current)
    assert {"r.example.com"} == set(doc["auths"])
    assert {"https://r.example.com/v1/": original} == record.originals
    restored, after = _render((), doc, record)
    assert current == restored
    assert ({}, {}) == (after.owned, after.originals)


def test_removed_credential_removed_from_node() -> None:
    """A registry dropped from the sources is removed; foreign entries stay."""
    current = {"auths": {"foreign.example.com": {"auth": b64("f:f")}}}
    doc, record = _render(_creds({"a.example.com": ("u", "p"), "b.example.com": ("u", "p")}), current)
    doc, record = _render(_creds({"a.example.com": ("u", "p")}), doc, record)
    assert {"foreign.example.com", "a.example.com"} == set(doc["auths"])
    assert {"a.example.com": "a.example.com"} == record.owned


def test_created_file_deleted_when_empty() -> None:
    """A file the agent created is deleted when nothing is left in it."""
    doc, record = _render(_creds({"r.example.com": ("u", "p")}), None)
    assert (None, {}) == (_render((), doc, record)[0], _render((), doc, record)[1].owned)


def test_foreign_file_never_deleted() -> None:
    """A file the node had keeps existing (with its own content) after the agent leaves."""
    current: dict[str, Any] = {"auths": {}}
    doc, record = _render(_creds({"r.example.com": ("u", "p")}), current)
    assert {"auths": {}} == _render((), doc, record)[0]


def test_held_registry_keeps_managed_entry() -> None:
    """A registry whose new source entry was rejected keeps the entry already on the node."""
    doc, record = _render(_creds({"r.example.com": ("u", "p")}), None)
    doc2, record2 = _render((), doc, record, held=("r.example.com",))
    assert doc == doc2
    assert record.owned == record2.owned


@pytest.mark.parametrize(
    "bad_entry",
    [{"auth": "SENTINEL!!"}, {"auth": b64("SENTINELnocolon")}, {"username": 1}, "string-entry"],
)
def test_refuses_file_kubelet_would_reject(bad_entry: Any) -> None:
    """A foreign entry that breaks the whole file stops the write; the error names it, not its value."""
    current = {"auths": {"broken.example.com": bad_entry}}
    with pytest.raises(TargetError) as info:
        _render(_creds({"r.example.com": ("u", "p")}), current)
    assert "broken.example.com" in str(info.value)
    assert "SENTINEL" not in str(info.value)


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"auths": "x"}', b"\xff"])
def test_refuses_unparseable_existing_file(raw: bytes) -> None:
    """An existing file that is not a config.json object is never overwritten."""
    with pytest.raises(TargetError):
        render_kubelet_config(desired=_creds({"r.example.com": ("u", "p")}), current=raw, record=None, path=PATH)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_host = st.builds(lambda a, b: f"{a}.{b}", _label, st.sampled_from(["example.com", "corp.example", "io"]))
_key = st.one_of(_host, _host.map(lambda h: f"https://{h}/v1/"), _host.map(lambda h: f"{h}:5000/team"))
_secret = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_entry = st.builds(lambda u, p: {"auth": b64(f"{u}:{p}")}, _label, _secret)
_foreign_doc = st.fixed_dictionaries(
    {"auths": st.dictionaries(_key, _entry, max_size=6)},
    optional={"credsStore": st.just("desktop"), "HttpHeaders": st.just({"X-Meta": "1"}), "experimental": st.booleans()},
)
_desired = st.dictionaries(_key, st.tuples(_label, _secret), max_size=6)


@settings(max_examples=200, deadline=None)
@given(foreign=_foreign_doc, first=_desired, second=_desired)
def test_foreign_files_survive_every_merge(
    foreign: dict[str, Any], first: dict[str, tuple[str, str]], second: dict[str, tuple[str, str]]
) -> None:
    """For any foreign file and any two desired sets: every result parses under the kubelet's rules,
    holds exactly the desired credentials for managed registries, and leaving restores the original."""
    creds1, creds2 = _creds(first), _creds(second)
    doc, record = _render(creds1, foreign)
    doc, record = _render(creds2, doc, record)
    loaded = {c.key: (c.username, c.password) for c in kubelet_read_config(json.dumps(doc).encode())}
    for cred in creds2:
        assert second[cred.key] == loaded[cred.key]
    managed = {c.registry for c in creds2}
    for key, entry in foreign["auths"].items():
        if normalise_key(key) not in managed:
            assert entry == doc["auths"][key]
    restored, after = _render((), doc, record)
    assert foreign == restored
    assert ({}, {}) == (after.owned, after.originals)


@pytest.mark.parametrize(
    "current",
    [
        b'{"auths": {"a.example": {"auth": 5, "auth": "dTpw"}}}',  # Go fails on the first, Python sees the last
        b'{"auths": {"a.example": {"auth": "JSU="}}, "auths": {"b.example": {}}}',  # Go merges the two maps
        b'{"auths": {}, "Auths": {"a.example": {"auth": "dTpw"}}}',  # a second spelling the kubelet merges
    ],
)
def test_refuses_node_files_go_reads_differently(current: bytes) -> None:
    """A node file with a repeated key, or a second spelling of 'auths', is left alone: Go (the
    kubelet) reads such a file differently from Python, so no merge into it could be trusted."""
    with pytest.raises(TargetError):
        render_kubelet_config(desired=_creds({"r.example.com": ("u", "p")}), current=current, record=None, path=PATH)
