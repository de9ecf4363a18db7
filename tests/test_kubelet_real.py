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
from nodeagent.errors import TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import parse_docker_config
from nodeagent.reconcile import sync
from nodeagent.targets.provider import PLUGIN_NAME, ecr_entry, render_provider_config
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
    "name-a-list": {"providers": [{**PROVIDER, "name": ["own-plugin"]}]},
    "name-an-object": {"providers": [{**PROVIDER, "name": {"a": 1}}]},
    "name-a-number": {"providers": [{**PROVIDER, "name": 5}]},
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
        render = render_provider_config(
            entries=[ecr_entry(["--state-dir", "/s"])], current=text.encode(), record=None, path=str(path)
        )
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


# -- generated config.json files: nodeagent's reading against the kubelet's ---------------------------
class _Obj(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs, so a generated file can repeat a key."""


def _json(value: Any) -> str:
    if isinstance(value, _Obj):
        return "{" + ", ".join(f"{json.dumps(k)}: {_json(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    return json.dumps(value)


def _repeats(value: Any) -> bool:
    if isinstance(value, _Obj):
        keys = [k for k, _ in value]
        return len(set(keys)) != len(keys) or any(_repeats(v) for _, v in value)
    return isinstance(value, list) and any(_repeats(v) for v in value)


_HOST = st.one_of(
    st.builds(lambda a, b: f"{a}.{b}.example", _LABEL, _LABEL),
    st.builds(lambda a: f"{a.upper()}.Example.com", _LABEL),
    st.sampled_from(["*.example.com", "r.*.example", "docker.io", "index.docker.io", "localhost", "[::1]", "[fd00::10]",
                     "127.0.0.1", "r1.example", "R1.example"]),
)  # fmt: skip
_GEN_KEY = st.builds(
    lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
    st.sampled_from(["", "https://", "http://"]),
    _HOST,
    st.sampled_from(["", ":5000", ":443"]),
    st.sampled_from(["", "/", "/v1/", "/v2/", "/v2/team", "/team", "/team/app", "/v1"]),
)
_USERPASS = st.builds(lambda u, p: f"{u}:{p}", _LABEL, st.text(alphabet="abc:=+/ é", max_size=6))


def _odd_auth(text: str, how: str) -> str:
    padded = base64.b64encode(text.encode()).decode()
    return {
        "padded": padded,
        "unpadded": padded.rstrip("="),
        "newlines": padded[:3] + "\n" + padded[3:] + "\r\n",
        "space": padded + " ",
        "url-safe": padded.replace("+", "-").replace("/", "_"),
        "extra-pad": padded.rstrip("=") + "=",
        "no-colon": base64.b64encode(text.replace(":", "").encode()).decode(),
        "garbage": "%%" + padded,
    }[how]


_AUTH = st.builds(
    _odd_auth,
    _USERPASS,
    st.one_of(
        st.sampled_from(["padded", "unpadded", "newlines"]),  # read by the kubelet
        st.sampled_from(["space", "url-safe", "extra-pad", "no-colon", "garbage"]),  # fail the whole file
    ),
)
_STRING = st.text(alphabet="abcé:", max_size=5)
_FIELD_VALUE = st.one_of(*[_STRING] * 6, st.none(), st.integers(-5, 5), st.booleans(), st.just([]), st.just(_Obj()))
_ENTRY_FIELD = st.one_of(
    st.tuples(st.sampled_from(["auth", "auth", "Auth", "AUTH"]), st.one_of(_AUTH, st.none(), st.just(""))),
    st.tuples(st.sampled_from(["username", "password", "email", "Username", "PASSWORD"]), _FIELD_VALUE),
    st.tuples(st.sampled_from(["identitytoken", "registrytoken", "other"]), _FIELD_VALUE),
)


def _pairs(items: st.SearchStrategy[tuple[str, Any]], max_size: int) -> st.SearchStrategy[_Obj]:
    """Objects whose keys repeat in one case of four."""
    unique = st.lists(items, max_size=max_size, unique_by=lambda pair: pair[0])
    return st.one_of(unique, unique, unique, st.lists(items, max_size=max_size)).map(_Obj)


_ENTRY = _pairs(_ENTRY_FIELD, 4)
_AUTHS = _pairs(st.tuples(_GEN_KEY, st.one_of(*[_ENTRY] * 6, st.none(), st.just("x"))), 4)
_DOCUMENT = st.builds(
    lambda auths, extra: _Obj([("auths", auths), *extra]),
    _AUTHS,
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["Auths", "AUTHS", "auths"]), st.one_of(_AUTHS, st.none(), st.just([]))),
            st.tuples(st.just("HttpHeaders"), st.one_of(st.just(_Obj([("X-A", "b")])), st.just(_Obj([("X", 1)])))),
            st.tuples(st.sampled_from(["credsStore", "currentContext"]), st.just("desktop")),
        ),
        max_size=2,
    ),
)
_FIXED_IMAGES = ["nginx", "library/nginx", "foo/bar:1", "docker.io/library/nginx", "index.docker.io/foo/bar",
                 "localhost/app", "localhost:5000/team/app", "[::1]:5000/app", "[fd00::10]/team/app:1",
                 "127.0.0.1:5000/team/x", "r1.example/team/app@sha256:" + "a" * 64]  # fmt: skip
_GEN_IMAGE = st.one_of(
    st.sampled_from(_FIXED_IMAGES),
    st.builds(
        lambda host, port, path, tag: f"{host}{port}/{path}{tag}".replace("*", "x"),
        _HOST,
        st.sampled_from(["", ":5000", ":443"]),
        st.sampled_from(["app", "team/app", "v1/app", "teamx/app"]),
        st.sampled_from(["", ":1", "@sha256:" + "0" * 64]),
    ),
)
generated = {"files": 0, "rejected": 0, "refused": 0, "lookups": 0}


@settings(max_examples=400, deadline=None)
@given(document=_DOCUMENT, images=st.lists(_GEN_IMAGE, min_size=1, max_size=3))
def test_config_json_reading_agrees_with_the_kubelet(document: _Obj, images: list[str]) -> None:
    """For generated node config.json files (keys with schemes, paths, ports, globs, case, IPv4/IPv6,
    /v1/ and /v2/; odd auth padding and newlines; null and non-string fields; field-name case;
    repeated keys), nodeagent's reading agrees with the kubelet's own code: it calls a file bad
    (and will not write it) exactly when the kubelet ignores it, reads every entry's credential as
    the kubelet does, and doctor --image's model returns what the kubelet's keyring returns."""
    from nodeagent.model.decoding import DecodeError, loads_json
    from nodeagent.model.keyring import kubelet_key, lookup
    from nodeagent.targets.kubelet import entry_credential, kubelet_entries, kubelet_problems, render_kubelet_config
    from tests.real_parsers import KubeletRejects, kubelet_keyring_lookup, kubelet_read_config

    text = _json(document).encode()
    generated["files"] += 1
    FIGURES["generated config.json files judged by the kubelet's own code"] = (
        f"{generated['files']} files ({generated['rejected']} rejected by the kubelet, {generated['refused']} with "
        f"repeated keys refused by nodeagent), {generated['lookups']} image lookups compared with doctor's model"
    )
    try:
        kubelet: dict[str, tuple[str, str]] | None = {
            c.key: (c.username, c.password) for c in kubelet_read_config(text)
        }
    except KubeletRejects:
        kubelet = None
        generated["rejected"] += 1
    try:
        parsed = loads_json(text, surrogates="replace", duplicates=False)
    except DecodeError:
        assert _repeats(document)  # the only reason a generated file is unreadable: nodeagent never edits it
        generated["refused"] += 1
        return
    assert (kubelet is None) == bool(kubelet_problems(parsed))
    if kubelet is None:
        return
    ours = {key: entry_credential(entry) for key, entry in kubelet_entries(parsed).items()}
    assert kubelet == ours
    # Merging the agent's credential into this node file: refused only for a second spelling of
    # 'auths'; otherwise the kubelet reads the agent's entry and every node entry as before.
    source = json.dumps({"auths": {"agent.example": {"auth": b64("agent:pw")}}}).encode()
    try:
        render = render_kubelet_config(
            desired=parse_docker_config(source, source="s").credentials, current=text, record=None, path="p"
        )
    except TargetError:
        assert [n for n in parsed if n.lower() == "auths" and n != "auths"]
    else:
        assert render.content is not None
        merged = {c.key: (c.username, c.password) for c in kubelet_read_config(render.content)}
        assert {**{k: v for k, v in ours.items() if k != "agent.example"}, "agent.example": ("agent", "pw")} == merged
    for image in images:
        generated["lookups"] += 1
        matches, _ = lookup(image, list(ours))
        expected = kubelet_keyring_lookup(text, image)
        found = [ours[m.key] for m in matches]
        indexed = [kubelet_key(m.key) for m in matches]
        if len(set(indexed)) == len(indexed):
            assert expected == found
        else:  # raw keys the kubelet indexes alike come in Go's map order (random): compare as multisets
            assert sorted(expected) == sorted(found)
