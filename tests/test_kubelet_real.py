"""What nodeagent writes for the kubelet, judged by the kubelet's own credential code (k8s.io/kubernetes
v1.34.4 through tests/harness/kubelet): config.json through its keyring, the installed
credential-provider plugin through its plugin manager, CredentialProviderConfig files through its
strict loader and validation."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import ProviderSettings, SyncSettings
from nodeagent.credentials import parse_docker_config
from nodeagent.errors import TargetError
from nodeagent.hostfs import HostFS
from nodeagent.reconcile import sync
from nodeagent.targets.provider import PLUGIN_NAME, render_provider_config
from tests.conftest import FIGURES, b64
from tests.real_parsers import kubelet_check_provider_config, kubelet_lookup, kubelet_provide

checked = {"lookups": 0, "configs": 0}


def _record() -> None:
    FIGURES["judged by the kubelet's own code"] = (
        f"{checked['lookups']} keyring lookups on written config.json files, "
        f"{checked['configs']} CredentialProviderConfig loads"
    )


_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
_KEY = st.one_of(
    st.builds(lambda a, b: f"{a}.{b}.example", _LABEL, _LABEL),
    st.builds(lambda a, p: f"{a}.example:{p}", _LABEL, st.sampled_from([443, 5000])),
    st.builds(lambda a, path: f"https://{a}.example/{path}", _LABEL, _LABEL),
    st.builds(lambda a: f"{a.upper()}.Example.com", _LABEL),
    st.sampled_from(["[::1]:5000", "[fd00::10]:5000", "127.0.0.1:5000"]),
)


def _image_for(key: str) -> str:
    value = key.removeprefix("https://").removeprefix("http://")
    return f"{value.rstrip('/')}/team/app:1"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(_KEY, min_size=1, max_size=4, unique_by=str.lower))
def test_written_config_json_is_read_by_the_kubelet(tmp_path_factory: Any, keys: list[str]) -> None:
    """Every credential the agent writes is what the kubelet's keyring returns for an image of that
    registry, next to the node's own entry, which it still returns for its registry."""
    host_root = tmp_path_factory.mktemp("host")
    kubelet = host_root / "var/lib/kubelet"
    kubelet.mkdir(parents=True)
    (kubelet / "config.json").write_text(json.dumps({"auths": {"own.node.example": {"auth": b64("node:own")}}}))
    entries = {key: {"auth": b64(f"user{i}:pw{i}")} for i, key in enumerate(keys)}
    sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), [parse_docker_config(
        json.dumps({"auths": entries}).encode(), source="s")])  # fmt: skip
    for i, key in enumerate(keys):
        checked["lookups"] += 1
        assert (f"user{i}", f"pw{i}") in kubelet_lookup(kubelet, _image_for(key))
    assert [("node", "own")] == kubelet_lookup(kubelet, "own.node.example/app:1")
    _record()


def test_docker_hub_short_names_reach_the_docker_io_key(tmp_path: Path) -> None:
    """nginx is docker.io/library/nginx to the kubelet: a docker.io key written by the agent serves it."""
    host_root = tmp_path / "host"
    kubelet = host_root / "var/lib/kubelet"
    kubelet.mkdir(parents=True)
    source = json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:hubpw")}}}).encode()
    sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), [parse_docker_config(source, source="s")])
    assert [("hub", "hubpw")] == kubelet_lookup(kubelet, "nginx")


def test_installed_plugin_serves_through_the_kubelets_plugin_manager(tmp_path: Path) -> None:
    """install-provider writes a config the kubelet loads, and the kubelet's plugin manager, running
    the installed plugin as the kubelet does, gets the cached ECR token for an ECR image."""
    host_root = tmp_path / "host"
    (host_root / "var/lib/kubelet").mkdir(parents=True)
    state = tmp_path / "state"
    state.mkdir()
    password = "SENTINEL-kubelet-ecr"
    token = base64.b64encode(f"AWS:{password}".encode()).decode()
    (state / "ecr-tokens.json").write_text(
        json.dumps({"version": 1, "tokens": {"us-east-1": {"token": token, "expiresAt": time.time() + 6 * 3600}}})
    )
    provider = ProviderSettings(
        bin_dir="/usr/libexec/kubernetes/credential-providers",
        config_path="/etc/kubernetes/credential-provider/config.yaml",
        state_dir=str(state),  # the plugin's own paths are host paths; here the test's directory
        socket=str(tmp_path / "none.sock"),
    )
    sync(HostFS(host_root), SyncSettings(host_root=str(host_root), provider=provider), [], hold_all=True)
    config = host_root / "etc/kubernetes/credential-provider/config.yaml"
    bin_dir = host_root / "usr/libexec/kubernetes/credential-providers"
    checked["configs"] += 1
    _record()
    loaded = kubelet_check_provider_config(config)
    assert (0, "") == (loaded.returncode, loaded.stderr)
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1"
    assert [("AWS", password)] == kubelet_provide(config, bin_dir, image)


PROVIDER = {
    "name": "own-plugin",
    "matchImages": ["own.example"],
    "defaultCacheDuration": "1h",
    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
}
TOKEN_ATTRIBUTES = {"serviceAccountTokenAudience": "aud", "cacheType": "ServiceAccount", "requireServiceAccount": True}
PLUGIN_API = "credentialprovider.kubelet.k8s.io"
TOKENS = {"tokenAttributes": TOKEN_ATTRIBUTES}
NODE_CONFIGS = {
    "valid": {"providers": [PROVIDER]},
    "valid-token-attributes": {"providers": [{**PROVIDER, "tokenAttributes": TOKEN_ATTRIBUTES}]},
    "unknown-top-field": {"providers": [PROVIDER], "extra": 1},
    "unknown-provider-field": {"providers": [{**PROVIDER, "bogus": True}]},
    "unknown-env-field": {"providers": [{**PROVIDER, "env": [{"name": "A", "value": "b", "x": 1}]}]},
    "token-attributes-v1beta1": {"providers": [{**PROVIDER, "apiVersion": f"{PLUGIN_API}/v1beta1", **TOKENS}]},
    "token-attributes-v1alpha1": {"providers": [{**PROVIDER, "apiVersion": f"{PLUGIN_API}/v1alpha1", **TOKENS}]},
    "unknown-token-attribute": {"providers": [{**PROVIDER, "tokenAttributes": {**TOKEN_ATTRIBUTES, "x": 1}}]},
    "duplicate-names": {"providers": [PROVIDER, PROVIDER]},
}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize("case", sorted(NODE_CONFIGS))
def test_provider_config_refusals_match_the_kubelet(tmp_path: Path, case: str, fmt: str) -> None:
    """The agent merges into a node's CredentialProviderConfig exactly when the kubelet would load
    it, and what it writes, the kubelet loads too."""
    import yaml

    document = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig", **NODE_CONFIGS[case]}
    text = json.dumps(document) if fmt == "json" else yaml.safe_dump(document)
    path = tmp_path / f"config.{fmt}"
    path.write_text(text)
    kubelet_loads = 0 == kubelet_check_provider_config(path).returncode
    checked["configs"] += 1
    _record()
    try:
        render = render_provider_config(args=["--state-dir", "/s"], current=text.encode(), record=None, path=str(path))
    except TargetError:
        assert not kubelet_loads
        return
    assert kubelet_loads
    assert render.content is not None
    path.write_bytes(render.content)
    result = kubelet_check_provider_config(path)
    assert 0 == result.returncode, result.stderr
    assert PLUGIN_NAME in path.read_text()


NODE_FILES = {
    "valid": {"auths": {"other.example": {"auth": b64("o:p")}}},
    "null-email": {"auths": {"other.example": {"auth": b64("o:p"), "email": None}}},
    "null-username": {"auths": {"other.example": {"username": None, "password": "p"}}},
    "number-password": {"auths": {"other.example": {"username": "u", "password": 7}}},
    "undecodable-auth": {"auths": {"other.example": {"auth": "%%%"}}},
    "auth-without-colon": {"auths": {"other.example": {"auth": b64("nocolon")}}},
    "auths-not-object": {"auths": []},
    "headers-not-strings": {"auths": {}, "HttpHeaders": {"X": 1}},
    "upper-case-field": {"auths": {"other.example": {"AUTH": "%%%"}}},
    "unknown-fields": {"auths": {"other.example": {"auth": b64("o:p"), "extra": [1, {"a": None}]}}, "x": True},
}


@pytest.mark.parametrize("case", sorted(NODE_FILES))
def test_kubelet_file_rules_match_the_kubelet(tmp_path: Path, case: str) -> None:
    """The agent refuses to write a config.json (kubelet_problems) exactly when the kubelet would
    ignore the whole file: the kubelet finds no credential in a file it rejects."""
    from nodeagent.targets.kubelet import kubelet_problems

    document = {**NODE_FILES[case]}
    document.setdefault("auths", {})
    if isinstance(document["auths"], dict):
        document["auths"] = {**document["auths"], "probe.example": {"auth": b64("probe:pw")}}
    (tmp_path / "config.json").write_text(json.dumps(document))
    kubelet_reads = [("probe", "pw")] == kubelet_lookup(tmp_path, "probe.example/app:1")
    checked["lookups"] += 1
    _record()
    assert kubelet_reads == (not kubelet_problems(document))
