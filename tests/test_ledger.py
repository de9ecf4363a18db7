"""The ledger: one typed record per target, version 2, and the migration of version 1 ledgers
(tested on a node synced by the version 1 code: tests/ledgers/v1-node.json)."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.errors import InputError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.ledger import (
    RECORD_TYPES,
    ConfigTomlRecord,
    HostsTomlRecord,
    KubeletRecord,
    Ledger,
    PluginRecord,
    ProviderConfigRecord,
    ProviderCredentialsRecord,
)
from nodeagent.reconcile import cleanup, sync

CORPUS = Path(__file__).parent / "ledgers"
STAGES = json.loads((CORPUS / "v1-node.json").read_text())
LEDGER = "/var/lib/nodeagent/state.json"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("ledger_generator", CORPUS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def _ledger(tree: dict[str, Any]) -> Ledger:
    return Ledger.load(base64.b64decode(tree[LEDGER][1]), source=LEDGER)


def _entries_of(path: str, content: str) -> Any:
    """The provider's credentials file by what it serves (version 1 and 2 files store scopes
    differently: the same entries and scopes compare equal); any other file as it is."""
    from nodeagent.targets.provider import entry_scope

    if not path.endswith("/provider-credentials.json"):
        return content
    document = json.loads(base64.b64decode(content))
    return [
        (e["key"], e["registry"], e["username"], e["password"], entry_scope(e, document.get("scopes") or []))
        for e in document["entries"]
    ]


def _without_ledger(tree: dict[str, Any]) -> dict[str, Any]:
    """The tree without the ledger, the plugin files as this version installs them (a pass
    upgrades the plugin the agent owns: its bytes are this version's plugin), the credentials
    file by what it serves (its format is version 2 now)."""
    from nodeagent.targets.provider import plugin_bytes

    plugin = base64.b64encode(plugin_bytes()).decode()
    return {
        path: [mode, plugin] if "/credential-providers/nodeagent-" in path else [mode, _entries_of(path, content)]
        for path, (mode, content) in tree.items()
        if path != LEDGER
    }


def test_the_fixture_is_a_version_1_ledger_with_every_record_kind() -> None:
    raw = json.loads(base64.b64decode(STAGES["synced"][LEDGER][1]))
    assert 1 == raw["version"]
    assert set(RECORD_TYPES) == {r["target"] for r in raw["files"].values()}


def test_version_1_records_load_as_typed_records_and_lose_nothing() -> None:
    """Every field of every version 1 record is in the typed record, and survives version 2."""
    raw = json.loads(base64.b64decode(STAGES["synced"][LEDGER][1]))
    ledger = _ledger(STAGES["synced"])
    assert 1 == ledger.version
    for path, old in raw["files"].items():
        record = ledger.files[path]
        assert type(record) is RECORD_TYPES[old["target"]]
        assert (old["created"], old["owned"], old["originals"], old.get("backup", ""), old.get("digest", "")) == (
            record.created, record.owned, record.originals, record.backup, record.digest,
        )  # fmt: skip
    again = Ledger.load(ledger.dump(), source="v2")
    assert (2, ledger.files, ledger.revision) == (json.loads(ledger.dump())["version"], again.files, again.revision)


def test_version_2_names_what_each_record_owns() -> None:
    files = json.loads(_ledger(STAGES["synced"]).dump())["files"]
    kubelet = files["/var/lib/kubelet/config.json"]
    hosts = files["/etc/containerd/certs.d/docker.io/hosts.toml"]
    config = files["/etc/containerd/config.toml"]
    providers = files["/etc/kubernetes/credential-providers.yaml"]
    assert ("kubelet", "index.docker.io") == (kubelet["kind"], kubelet["entries"]["https://index.docker.io/v1/"])
    assert {"kind": "containerd-hosts", "registry": "docker.io", "created_dir": True, "created_root": False} == hosts
    assert {"registry-1.docker.io": "docker.io", "registry.example.com": "registry.example.com"} == config["auths"]
    assert ["nodeagent-credential-provider", "nodeagent-ecr-credential-provider"] == providers["providers"]
    assert {"kind": "provider-credentials", "created": True, "installed": True} == files[
        "/var/lib/nodeagent/provider-credentials.json"
    ]


NODE_PLUGIN = "usr/libexec/kubernetes/credential-providers/ecr-credential-provider"
"""The node's own plugin its provider config names: the recorded node lacks it, and the agent
changes no provider config the kubelet would refuse (a missing plugin binary), so it is added
here and left out of the comparisons."""


def _node(tmp_path: Path, stage: str) -> Path:
    host = tmp_path / "host"
    GEN.restore(host, STAGES[stage])
    (host / NODE_PLUGIN).write_text("#!/bin/sh\nexit 1\n")
    (host / NODE_PLUGIN).chmod(0o755)
    return host


def _snapshot(host: Path) -> dict[str, Any]:
    return {path: entry for path, entry in GEN.snapshot(host).items() if path != "/" + NODE_PLUGIN}


def test_cleanup_of_a_version_1_node_restores_what_the_version_1_code_did(tmp_path: Path) -> None:
    host = _node(tmp_path, "synced")
    cleanup(HostFS(str(host)), GEN.settings(host))
    assert STAGES["cleaned"] == _snapshot(host)


def test_a_pass_on_a_version_1_node_does_what_the_version_1_code_did(tmp_path: Path) -> None:
    """The next sync migrates the ledger (version 2 on disk, the same records) and changes the
    node's files exactly as the version 1 code did; cleanup after it restores the node the same."""
    host = _node(tmp_path, "synced")
    sync(HostFS(str(host)), GEN.settings(host), GEN.sources(2), registry_settings=GEN.registries())
    after = _snapshot(host)
    assert _without_ledger(STAGES["resynced"]) == _without_ledger(after)
    migrated = _ledger(after)
    assert (2, _ledger(STAGES["resynced"]).files) == (migrated.version, migrated.files)
    cleanup(HostFS(str(host)), GEN.settings(host))
    assert STAGES["recleaned"] == _snapshot(host)


# -- every record shape version 1 wrote, generated -------------------------------------------------
_NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-:/", min_size=1, max_size=20)
_MAP = st.dictionaries(_NAME, _NAME, max_size=4)
_ORIGINALS = st.dictionaries(_NAME, st.dictionaries(_NAME, _NAME, max_size=2), max_size=3)
_DIGEST = st.sampled_from(["", "ab" * 32, "ab" * 32 + " " + "cd" * 32])
_PATH = st.sampled_from(["", "/var/lib/nodeagent/containerd-config.toml.orig"])


def _v1(target: str, created: bool, owned: Any, originals: Any = None, backup: str = "", digest: str = "") -> Any:
    body = {"target": target, "created": created, "owned": owned, "originals": originals or {}}
    body.update({k: v for k, v in (("backup", backup), ("digest", digest)) if v})
    return body


V1_RECORDS = st.one_of(
    st.builds(_v1, st.just("kubelet"), st.booleans(), _MAP, _ORIGINALS),
    st.builds(_v1, st.just("containerd-config"), st.booleans(), _MAP, _ORIGINALS, _PATH, _DIGEST),
    st.builds(
        _v1,
        st.just("containerd-hosts"),
        st.just(True),
        st.builds(
            lambda r, d, root: {
                "registry": r,
                **({"dir": "created"} if d else {}),
                **({"root": "created"} if root else {}),
            },
            _NAME,
            st.booleans(),
            st.booleans(),
        ),
    ),
    st.builds(_v1, st.just("provider-plugin"), st.booleans(), st.sampled_from([{}, dict(PluginRecord.OWNED)])),
    st.builds(
        _v1,
        st.just("provider-credentials"),
        st.booleans(),
        st.sampled_from([{}, dict(ProviderCredentialsRecord.OWNED)]),
    ),
    st.builds(
        _v1,
        st.just("provider-config"),
        st.booleans(),
        st.dictionaries(_NAME, st.just("provider"), max_size=3),
        _ORIGINALS,
        _PATH,
        _DIGEST,
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_NAME, V1_RECORDS, max_size=6))
def test_every_version_1_shape_migrates_without_loss(files: dict[str, Any]) -> None:
    v1 = json.dumps({"version": 1, "revision": "r", "files": files}).encode()
    ledger = Ledger.load(v1, source="v1")
    for path, old in files.items():
        record = ledger.files[path]
        assert (old["target"], old["created"], old["owned"], old["originals"]) == (
            record.target, record.created, record.owned, record.originals,
        )  # fmt: skip
        assert (old.get("backup", ""), old.get("digest", "")) == (record.backup, record.digest)
    assert ledger.files == Ledger.load(ledger.dump(), source="v2").files


@pytest.mark.parametrize(
    ("record", "named"),
    [
        (_v1("containerd-hosts", True, {"registry": "r", "dir": "kept"}), "dir and root"),
        (_v1("containerd-hosts", True, {"dir": "created"}), "registry"),
        (_v1("provider-plugin", True, {"something": "else"}), "something"),
        (_v1("kubelet", False, {}, backup="/x"), "backup"),
        (_v1("nodeagent-future", False, {}), "nodeagent-future"),
        (_v1("kubelet", "yes", {}), "created"),
    ],
)
def test_a_record_no_version_wrote_is_an_error_naming_it(record: Any, named: str) -> None:
    v1 = json.dumps({"version": 1, "files": {"/some/file": record}}).encode()
    with pytest.raises(InputError) as caught:
        Ledger.load(v1, source="/var/lib/nodeagent/state.json")
    assert "/some/file" in str(caught.value) and named in str(caught.value)


@pytest.mark.parametrize("version", [0, 3, "2", True, None])
def test_an_unknown_version_is_an_error(version: Any) -> None:
    with pytest.raises(InputError, match="unknown ledger version"):
        Ledger.load(json.dumps({"version": version, "files": {}}).encode(), source="state.json")


def test_each_record_type_round_trips() -> None:
    records = [
        KubeletRecord(created=True, owned={"k": "r"}, originals={"k": {"auth": "x"}}),
        ConfigTomlRecord(owned={"h": "r"}, originals={"h": {"username": "u"}}, backup="/b", digest="d"),
        HostsTomlRecord(owned={"registry": "r", "root": "created"}),
        PluginRecord(created=True, owned=dict(PluginRecord.OWNED)),
        ProviderCredentialsRecord(created=True, owned=dict(ProviderCredentialsRecord.OWNED)),
        ProviderConfigRecord(owned={"p": "provider"}, originals={"p": {"name": "p"}}, backup="/b", digest="d"),
    ]
    ledger = Ledger(files={f"/f{i}": r for i, r in enumerate(records)}, revision="x")
    assert ledger.files == Ledger.load(ledger.dump(), source="v2").files
