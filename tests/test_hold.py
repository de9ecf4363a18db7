"""A source of unknown state holds only its own entries, in every target: while one Secret is
missing or unreadable (the agent passes ``hold_all``), a rotation, a new registry and a re-scoping
of another source reach config.json, the provider's credentials file and containerd's
config.toml, and the unknown source's entries stay. The class of bug: the provider's credentials
file took ``hold_all`` for "write nothing" (install-provider's meaning), so it froze while any
source was unknown, and dropped the unknown source's scoped entries besides."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from nodeagent.config import ContainerdSettings, ProviderSettings, SyncSettings
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import ParseResult, parse_secret
from nodeagent.reconcile import sync
from nodeagent.targets.provider import entry_scope
from tests.conftest import b64, docker_config


def _secret(name: str, entries: dict[str, tuple[str, str]], namespaces: str | None = None) -> ParseResult:
    annotations = {"nodeagent.io/namespaces": namespaces} if namespaces else {}
    secret = {
        "metadata": {"name": name, "namespace": "ns", "annotations": annotations},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(docker_config(entries).decode())},
    }
    return parse_secret(secret, source=f"secret:ns/{name}")


def _config_json(root: Path) -> dict[str, str]:
    auths = json.loads((root / "var/lib/kubelet/config.json").read_text())["auths"]
    return {key: entry["auth"] for key, entry in auths.items()}


def _provider(root: Path) -> dict[str, str]:
    document = json.loads((root / "var/lib/nodeagent/provider-credentials.json").read_text())
    return {e["key"]: b64(f"{e['username']}:{e['password']}") for e in document["entries"]}


def _config_toml(root: Path) -> dict[str, str]:
    document = tomllib.loads((root / "etc/containerd/config.toml").read_text())
    configs = document["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["configs"]
    return {host: c["auth"]["auth"] for host, c in configs.items()}  # the agent writes ``auth`` as it came


TARGETS: dict[str, Callable[[Path], dict[str, str]]] = {
    "config.json": _config_json,
    "provider credentials": _provider,
    "containerd config.toml": _config_toml,
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_one_unknown_source_holds_only_its_own(host_root: Path, target: str) -> None:
    """Source A unknown (hold_all), source B rotated and grown: B's changes reach the target; A's stay."""
    (host_root / "etc/containerd").mkdir(parents=True)
    (host_root / "etc/containerd/config.toml").write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n')
    provider = ProviderSettings(
        bin_dir="/usr/libexec/kubernetes/credential-providers",
        config_path="/etc/kubernetes/credential-providers",
        ecr=False,
        credentials=True,
    )
    settings = SyncSettings(host_root=str(host_root), provider=provider, containerd=ContainerdSettings(auth=True))
    read = TARGETS[target]
    a = _secret("a", {"a.example.com": ("ua", "pa-1")})
    b = _secret("b", {"b.example.com": ("ub", "pb-1")})
    sync(HostFS(host_root), settings, [a, b])
    assert {"a.example.com", "b.example.com"} <= {k.split("[")[0] for k in read(host_root)}
    b2 = _secret("b", {"b.example.com": ("ub", "pb-2"), "c.example.com": ("uc", "pc-1")})
    sync(HostFS(host_root), settings, [b2], hold_all=True)  # a's state unknown: it holds
    seen = read(host_root)
    assert b64("ub:pb-2") == seen["b.example.com"]
    assert b64("uc:pc-1") == seen["c.example.com"]
    assert b64("ua:pa-1") == seen["a.example.com"]


def test_an_unknown_source_keeps_its_scoped_entries_and_others_rescope(host_root: Path) -> None:
    """The provider's file: an unknown source's scoped entry stays with its scope while another
    source's scope changes."""
    provider = ProviderSettings(
        bin_dir="/usr/libexec/kubernetes/credential-providers",
        config_path="/etc/kubernetes/credential-providers",
        ecr=False,
        credentials=True,
    )
    settings = SyncSettings(host_root=str(host_root), provider=provider)
    a = _secret("a", {"a.example.com": ("ua", "pa-1")}, namespaces="team-a")
    b = _secret("b", {"b.example.com": ("ub", "pb-1")}, namespaces="team-b")
    sync(HostFS(host_root), settings, [a, b])
    b2 = _secret("b", {"b.example.com": ("ub", "pb-1")}, namespaces="team-b, team-c")
    sync(HostFS(host_root), settings, [b2], hold_all=True)
    document = json.loads((host_root / "var/lib/nodeagent/provider-credentials.json").read_text())
    scopes = {e["key"]: entry_scope(e, document["scopes"]) for e in document["entries"]}
    assert {"a.example.com": ("team-a",), "b.example.com": ("team-b", "team-c")} == scopes
