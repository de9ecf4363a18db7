"""nodeagent-credential-provider: every registry's credentials through the kubelet's exec-plugin
path, judged by the kubelet's own plugin manager (k8s 1.34.4, tests/harness/kubelet): what it
gets for an image equals what its keyring gets from the same credentials in config.json; a
rotation is the answer to the very next pull; namespace-scoped Secrets reach only pods of those
namespaces, and never config.json."""

from __future__ import annotations

import base64
import fnmatch
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import ProviderSettings, SyncSettings
from nodeagent.ecr import plugin
from nodeagent.errors import InputError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import ParseResult, parse_docker_config, parse_namespaces, parse_secret
from nodeagent.reconcile import sync
from nodeagent.targets.provider import SCOPED_PLUGIN_NAME, STATIC_PLUGIN_NAME, catch_all_images, render_credentials_file
from tests.conftest import FIGURES, b64
from tests.real_parsers import (
    KubeletPlugins,
    kubelet_check_provider_config,
    kubelet_keyring_lookup,
    kubelet_provide,
)

BIN = "/usr/libexec/kubernetes/credential-providers"
CONFIG = "/etc/kubernetes/credential-providers"
API = "credentialprovider.kubelet.k8s.io/v1"


def _source(entries: dict[str, str], name: str = "s") -> ParseResult:
    config = {"auths": {key: {"auth": b64(f"user-{password}:{password}")} for key, password in entries.items()}}
    return parse_docker_config(json.dumps(config).encode(), source=name)


def _scoped(entries: dict[str, str], namespaces: str) -> ParseResult:
    config = {"auths": {key: {"auth": b64(f"user-{password}:{password}")} for key, password in entries.items()}}
    secret = {
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": "scoped",
            "namespace": "nodeagent",
            "annotations": {"nodeagent.io/namespaces": namespaces},
        },
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }
    return parse_secret(secret, source="secret:nodeagent/scoped")


PROVIDER_FILE_OF_THE_NODE = {
    "apiVersion": "kubelet.config.k8s.io/v1",
    "kind": "CredentialProviderConfig",
    "providers": [
        {
            "name": "ecr-credential-provider",
            "matchImages": ["*.dkr.ecr.*.amazonaws.com"],
            "defaultCacheDuration": "12h",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        }
    ],
}


class Node:
    """A sandbox node with the credential provider installed by the agent."""

    def __init__(self, root: Path, **provider: Any) -> None:
        self.root = root / "host"
        (self.root / "var/lib/kubelet").mkdir(parents=True, exist_ok=True)
        self.provider = ProviderSettings(bin_dir=BIN, config_path=CONFIG, ecr=False, credentials=True, **provider)
        self.settings = SyncSettings(host_root=str(self.root), provider=self.provider)

    def sync(self, *sources: ParseResult, hold_all: bool = False) -> None:
        sync(HostFS(self.root), self.settings, list(sources), hold_all=hold_all)
        # The plugin runs on this machine, not in a chroot: point its --credentials at the sandbox.
        config = self.config_path
        document = yaml.safe_load(config.read_text())
        for entry in document["providers"]:
            entry["args"] = [str(self.root) + a if a.startswith("/") else a for a in entry["args"]]
        config.write_text(yaml.safe_dump(document))

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG.lstrip("/") / "nodeagent-ecr.yaml"

    @property
    def bin_dir(self) -> Path:
        return self.root / BIN.lstrip("/")

    def config_json(self) -> bytes:
        return (self.root / "var/lib/kubelet/config.json").read_bytes()


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


CURRENT = {"nbf": 1_000_000_000, "exp": 4_102_444_800}
"""Time claims of a token current from 2001 to 2100: no test depends on the clock's reading."""


def _pod_token(namespace: str) -> str:
    """The claims of a token the kubelet gets for a pod (TokenRequest bound to the pod)."""
    return _jwt({
        "aud": ["nodeagent"], "sub": f"system:serviceaccount:{namespace}:default", **CURRENT,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": "default", "uid": "u"},
                          "pod": {"name": "p", "uid": "pu"}, "node": {"name": "node-a", "uid": "nu"}},
    })  # fmt: skip


checked = {"images": 0}

_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True)
_KEY = st.one_of(
    st.builds(lambda a: f"{a}.example.com", _LABEL),
    st.builds(lambda a: f"{a}.example.com:5000", _LABEL),
    st.builds(lambda a, p: f"{a}.example.com:{p}", _LABEL, st.sampled_from(["0080", "080", "00443", "05000", "65535"])),
    st.builds(lambda a, p: f"https://{a}.example.com/{p}", _LABEL, _LABEL),
    st.builds(lambda a: f"*.{a}.example", _LABEL),
    st.sampled_from(["docker.io", "https://index.docker.io/v1/", "10.0.0.1:5000", "localhost:5000", "ghcr.io"]),
)
_IMAGES = ["nginx", "team/app:1", "docker.io/library/nginx", "ghcr.io/org/app", "10.0.0.1:5000/x/y",
           "localhost:5000/app", "x.a.example/app", "a.example.com/app@sha256:" + "0" * 64]  # fmt: skip


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(_KEY, min_size=1, max_size=5, unique=True), extra=st.lists(_KEY, max_size=2))
def test_provider_answers_as_the_kubelet_reads_config_json(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str], extra: list[str]
) -> None:
    """For every image, the kubelet's plugin manager running the installed plugin gets exactly the
    credentials the kubelet's keyring gets from the same credentials in config.json."""
    node = Node(tmp_path_factory.mktemp("node"))
    node.sync(_source({key: f"pw{i}" for i, key in enumerate(keys)}))
    images = sorted({*_IMAGES, *(plugin.keyring_key(k).replace("*", "x") + "/app" for k in keys + extra)})
    for image in images:
        checked["images"] += 1
        expected = kubelet_keyring_lookup(node.config_json(), image)
        assert sorted(expected) == sorted(kubelet_provide(node.config_path, node.bin_dir, image)), image
    FIGURES["credential provider judged by the kubelet's plugin manager"] = f"{checked['images']} image lookups"


def test_installed_config_is_loaded_by_the_kubelet(tmp_path: Path) -> None:
    """The provider entries (catch-all matchImages with the sources' ports; with ServiceAccount
    tokens, the scoped entry first with tokenAttributes under v1, then the node-wide one without)
    are a config the kubelet loads, with both plugins in the bin dir."""
    node = Node(tmp_path, audience="nodeagent", ports=(8443,))
    node.sync(_source({"r.example.com:5000": "a"}))
    result = kubelet_check_provider_config(node.config_path, node.bin_dir)
    assert (0, "") == (result.returncode, result.stderr)
    scoped, static = yaml.safe_load(node.config_path.read_text())["providers"]
    assert (SCOPED_PLUGIN_NAME, STATIC_PLUGIN_NAME) == (scoped["name"], static["name"])
    for entry in (scoped, static):
        assert (API, "0s") == (entry["apiVersion"], entry["defaultCacheDuration"])
        assert {"*.*.*:5000", "*.*.*:8443", "*", "*.*.*.*.*.*.*"} <= set(entry["matchImages"])
    token = {"serviceAccountTokenAudience": "nodeagent", "cacheType": "ServiceAccount", "requireServiceAccount": False}
    assert (token, None) == (scoped["tokenAttributes"], static.get("tokenAttributes"))


def test_node_wide_credentials_are_served_during_an_api_outage(tmp_path: Path) -> None:
    """When the kubelet cannot get the pod's ServiceAccount token (the API server is down), its
    plugin manager skips the provider that asks for one; the node-wide provider asks for none and
    still answers, so --provider-only pulls keep working. Scoped credentials need the token."""
    node = Node(tmp_path, audience="nodeagent", config_json=False)
    node.sync(_source({"shared.example.com": "node"}), _scoped({"team.example.com": "SCOPED-secret"}, "team-a"))
    outage = {"service_account": "team-a/default", "token": ""}  # the token request fails
    assert [("user-node", "node")] == kubelet_provide(node.config_path, node.bin_dir, "shared.example.com/a", **outage)
    assert [] == kubelet_provide(node.config_path, node.bin_dir, "team.example.com/a", **outage)
    token = {"service_account": "team-a/default", "token": _pod_token("team-a")}
    assert [("user-SCOPED-secret", "SCOPED-secret")] == kubelet_provide(
        node.config_path, node.bin_dir, "team.example.com/a", **token
    )


def test_rotation_is_the_answer_to_the_next_pull(tmp_path: Path) -> None:
    """Within one kubelet (one plugin cache), the pull after a rotation gets the new credential."""
    node = Node(tmp_path)
    node.sync(_source({"r.example.com": "old"}))
    kubelet = KubeletPlugins(node.config_path, node.bin_dir)
    try:
        assert [("user-old", "old")] == kubelet.lookup("r.example.com/app")
        node.sync(_source({"r.example.com": "new"}))
        assert [("user-new", "new")] == kubelet.lookup("r.example.com/app")
    finally:
        kubelet.close()


def test_scoped_credentials_reach_only_their_namespaces(tmp_path: Path) -> None:
    """A Secret annotated nodeagent.io/namespaces is served by the provider to pods of those
    namespaces (read from the ServiceAccount token the kubelet passes), to no other pod and
    without a token to none, and it is never written to config.json."""
    node = Node(tmp_path, audience="nodeagent")
    node.sync(_source({"shared.example.com": "node"}), _scoped({"team.example.com": "SCOPED-secret"}, "team-a, ci-*"))
    assert b"SCOPED" not in node.config_json()

    def pull(namespace: str | None, image: str) -> list[tuple[str, str]]:
        if namespace is None:
            return kubelet_provide(node.config_path, node.bin_dir, image)
        account = f"{namespace}/default"
        return kubelet_provide(
            node.config_path, node.bin_dir, image, service_account=account, token=_pod_token(namespace)
        )

    scoped = [("user-SCOPED-secret", "SCOPED-secret")]
    assert (scoped, scoped, [], []) == (
        pull("team-a", "team.example.com/app"),
        pull("ci-42", "team.example.com/app"),
        pull("team-b", "team.example.com/app"),
        pull(None, "team.example.com/app"),
    )
    assert [("user-node", "node")] == pull("team-b", "shared.example.com/app")


def test_provider_only_leaves_config_json_to_the_node(tmp_path: Path) -> None:
    """With --provider-only the agent's credentials are served by the provider alone."""
    node = Node(tmp_path, config_json=False)
    (node.root / "var/lib/kubelet/config.json").write_text(json.dumps({"auths": {"own.example": {"auth": b64("o:p")}}}))
    node.sync(_source({"r.example.com": "a"}))
    assert ["own.example"] == list(json.loads(node.config_json())["auths"])
    assert [("user-a", "a")] == kubelet_provide(node.config_path, node.bin_dir, "r.example.com/app")


@pytest.mark.parametrize("config_json", [True, False])
def test_a_source_of_unknown_state_keeps_what_the_provider_serves(tmp_path: Path, config_json: bool) -> None:
    """While a source is unreadable (hold_all), the provider keeps serving every node-wide entry it
    had, with or without config.json: the hold is the provider's own, not borrowed from config.json."""
    node = Node(tmp_path, config_json=config_json)
    node.sync(_source({"r.example.com": "a"}))
    node.sync(hold_all=True)
    assert [("user-a", "a")] == kubelet_provide(node.config_path, node.bin_dir, "r.example.com/app")


@pytest.mark.parametrize("other_provider", [True, False])
def test_cleanup_removes_the_provider_while_the_kubelet_still_starts(tmp_path: Path, other_provider: bool) -> None:
    """cleanup takes the credentials file away, and the plugin and our provider file too when the
    kubelet's directory keeps another provider; when ours is the only one, the kubelet would not
    start without it (an empty directory), so both stay, inert, and cleanup says so. Judged by the
    kubelet's own loader on the directory and the bin dir left behind."""
    from nodeagent.reconcile import cleanup
    from tests.real_parsers import kubelet_check_provider_config

    node = Node(tmp_path)
    directory = node.root / CONFIG.lstrip("/")
    if other_provider:
        directory.mkdir(parents=True)
        (directory / "00-node.yaml").write_text(yaml.safe_dump(PROVIDER_FILE_OF_THE_NODE))
        node.bin_dir.mkdir(parents=True)
        (node.bin_dir / "ecr-credential-provider").write_text("#!/bin/sh\nexit 1\n")
        (node.bin_dir / "ecr-credential-provider").chmod(0o755)
    node.sync(_source({"r.example.com": "a"}))
    files = [node.bin_dir / STATIC_PLUGIN_NAME, node.config_path]
    credentials = node.root / "var/lib/nodeagent/provider-credentials.json"
    assert [True, True, True] == [f.exists() for f in [*files, credentials]]
    report = cleanup(HostFS(node.root), node.settings)
    assert not credentials.exists()
    assert [not other_provider] * 2 == [f.exists() for f in files]
    assert (not other_provider) == any("so the kubelet still starts" in w.reason for w in report.warnings)
    check = kubelet_check_provider_config(directory, node.bin_dir)
    assert 0 == check.returncode, check.stderr


@pytest.mark.parametrize("api", plugin.API_VERSIONS)
def test_plugin_answers_every_api_version(tmp_path: Path, api: str) -> None:
    """The response carries the request's apiVersion, cacheKeyType Image and cacheDuration 0s."""
    path = tmp_path / "credentials.json"
    entry = {"key": "r.example.com", "username": "u", "password": "p", "scope": None}
    path.write_text(json.dumps({"version": plugin.CREDENTIALS_VERSION, "scopes": [], "entries": [entry]}))
    path.chmod(0o600)
    out = io.StringIO()
    request = json.dumps({"apiVersion": api, "kind": "CredentialProviderRequest", "image": "r.example.com/app"})
    assert 0 == plugin.run(io.StringIO(request), out, ["--credentials", str(path)])
    assert {"apiVersion": api, "kind": "CredentialProviderResponse", "cacheKeyType": "Image", "cacheDuration": "0s",
            "auth": {"r.example.com": {"username": "u", "password": "p"}}} == json.loads(out.getvalue())  # fmt: skip


@pytest.mark.parametrize("content", [None, b"{", b'{"version": 3, "entries": []}', b"[]", b'{"version": 2}'])
def test_plugin_without_a_usable_file_says_so_in_one_line(tmp_path: Path, content: bytes | None) -> None:
    """A missing or foreign credentials file: exit 1, nothing on stdout, one line on stderr."""
    path = tmp_path / "credentials.json"
    if content is not None:
        path.write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    request = json.dumps({"apiVersion": API, "kind": "CredentialProviderRequest", "image": "r.example.com/app"})
    assert (1, "", 1) == (
        plugin.run(io.StringIO(request), out, ["--credentials", str(path)], err),
        out.getvalue(),
        err.getvalue().count("\n"),
    )


@pytest.mark.parametrize(
    ("token", "namespace"),
    [
        (_pod_token("team-a"), "team-a"),
        (_jwt({"sub": "system:serviceaccount:ci-1:builder", **CURRENT}), "ci-1"),
        (_jwt({"sub": "system:serviceaccount:ci-1:builder"}), None),  # no exp: not a token the kubelet got
        (_jwt({"sub": "system:node:node-a"}), None),
        ("not-a-jwt", None),
        ("a.%%%.c", None),
        (_jwt({"kubernetes.io": ["x"]}), None),
        (None, None),
    ],
)
def test_token_namespace(token: Any, namespace: str | None) -> None:
    """The namespace comes from a current token's kubernetes.io claim (else its sub)."""
    assert namespace == plugin.token_namespace(token, now=2_000_000_000)


@pytest.mark.parametrize(
    ("claims", "now", "served"),
    [
        ({"nbf": 100, "exp": 700}, 400, True),
        ({"nbf": 100, "exp": 700}, 700 + plugin.TOKEN_LEEWAY, False),  # expired
        ({"nbf": 100, "exp": 700}, 100 - plugin.TOKEN_LEEWAY - 1, False),  # not yet valid
        ({"exp": 700}, 400, True),
        ({"nbf": 100}, 400, False),  # no exp
        ({"nbf": 100, "exp": "700"}, 400, False),
        ({"nbf": 100, "exp": True}, 400, False),
    ],
)
def test_an_expired_token_gets_no_scoped_credentials(claims: dict[str, Any], now: float, served: bool) -> None:
    """exp and nbf are checked (with a small leeway for clock difference): an expired token's
    namespace is not believed, so the request gets node-wide credentials only."""
    token = _jwt({"sub": "system:serviceaccount:team-a:default", **claims})
    assert ("team-a" if served else None) == plugin.token_namespace(token, now=now)


@pytest.mark.parametrize("value", ["", " , ", "Team", "a_b", "x" * 64, 5])
def test_bad_namespaces_annotation_is_rejected(value: Any) -> None:
    """A namespaces annotation that names no namespace is a clear error, not a node-wide credential."""
    with pytest.raises(ValueError):
        parse_namespaces(value)
    with pytest.raises(InputError):
        _scoped({"r.example.com": "p"}, value) if isinstance(value, str) else parse_secret(
            {"type": "kubernetes.io/dockerconfigjson", "metadata": {"annotations": {"nodeagent.io/namespaces": value}},
             "data": {".dockerconfigjson": ""}}, source="s")  # fmt: skip


def _scoped_credential(scope: tuple[str, ...]) -> Any:
    from nodeagent.model.credentials import RegistryCredential, ScopedCredential

    credential = RegistryCredential(
        key="r.example.com", registry="r.example.com", username="u", password="p", source="s"
    )
    return ScopedCredential(credential, scope)


def test_a_scope_beyond_the_bounds_is_rejected_whole() -> None:
    """More names or globs than one annotation may hold: the Secret's scoping is refused (the
    source is invalid: its last good content stays, and it is named), never truncated."""
    from nodeagent.model.credentials import MAX_SCOPE_GLOBS, MAX_SCOPE_NAMES

    assert MAX_SCOPE_NAMES == len(parse_namespaces(",".join(f"ns-{i}" for i in range(MAX_SCOPE_NAMES))))
    for value in (
        ",".join(f"ns-{i}" for i in range(MAX_SCOPE_NAMES + 1)),
        ",".join(f"team-{i}-*" for i in range(MAX_SCOPE_GLOBS + 1)),
    ):
        with pytest.raises(InputError):
            _scoped({"r.example.com": "p"}, value)


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=8),
    globs=st.lists(st.sampled_from(["team-*", "*-ci", "a*"]), max_size=2),
    namespace=st.text(alphabet="ab-\n0*", max_size=12),
)
def test_a_stored_scope_serves_exactly_its_namespaces(names: list[str], globs: list[str], namespace: str) -> None:
    """The scope as the file stores it (names once, framed by newlines) serves a namespace exactly
    when the annotation's names or globs do, whatever the namespace the token claims (no match
    across two names, none for a name no pod can have)."""
    scope = (*dict.fromkeys(names), *dict.fromkeys(globs))
    document = json.loads(render_credentials_file(credentials=[], scoped=[_scoped_credential(scope)], current=None))
    (entry,) = document["entries"]
    valid = plugin.NAMESPACE.fullmatch(namespace) is not None
    expected = valid and (namespace in names or any(fnmatch.fnmatchcase(namespace, g) for g in globs))
    served = plugin._served(entry, document["scopes"], namespace if valid else None)
    assert expected == served


def test_catch_all_covers_ports_exactly() -> None:
    """One glob per label count, repeated for each port: the kubelet matches ports exactly."""
    images = catch_all_images([5000])
    assert "*:5000" in images and "*.*.*.*.*.*.*.*.*.*:5000" in images
    assert not any(":" in p for p in catch_all_images([]))


def test_a_new_port_says_the_kubelet_needs_a_restart(tmp_path: Path) -> None:
    """Installing the provider, and a registry on a new port, change the provider config (the
    kubelet reads it only at start): the pass says a kubelet restart is needed; a rotation does not."""
    node = Node(tmp_path)

    def restart_needed(*sources: ParseResult) -> bool:
        return sync(HostFS(node.root), node.settings, list(sources)).kubelet_restart_needed

    assert (True, False, False, True) == (
        restart_needed(_source({"r.example.com": "a"})),
        restart_needed(_source({"r.example.com": "a"})),
        restart_needed(_source({"r.example.com": "rotated"})),
        restart_needed(_source({"r.example.com": "rotated", "s.example.com:5443": "b"})),
    )


def test_a_scoped_secret_without_the_provider_is_a_warning(tmp_path: Path) -> None:
    """Without --credential-provider a namespace-scoped Secret goes nowhere: the pass says so (a
    warning naming the registry), and config.json still never gets it."""
    root = tmp_path / "host"
    (root / "var/lib/kubelet").mkdir(parents=True)
    report = sync(
        HostFS(root), SyncSettings(host_root=str(root)), [_scoped({"team.example.com": "SCOPED-x"}, "team-a")]
    )
    assert ["team.example.com"] == [w.registry for w in report.warnings]
    assert not (root / "var/lib/kubelet/config.json").exists()


@pytest.mark.parametrize(
    ("mode", "owner", "answered"), [(0o600, 0, True), (0o666, 0, False), (0o640, 0, False), (0o600, 1, False)]
)
def test_plugin_serves_only_a_private_file_of_its_own_user(
    tmp_path: Path, mode: int, owner: int, answered: bool
) -> None:
    """A credentials file others can read or write, or another user's, is refused with one line."""
    import os

    if os.geteuid() != 0 and owner != 0:
        pytest.fail("this test changes a file's owner: it runs as root, as CI does")
    path = tmp_path / "credentials.json"
    entry = {"key": "r.example.com", "username": "u", "password": "p", "scope": None}
    path.write_text(json.dumps({"version": plugin.CREDENTIALS_VERSION, "scopes": [], "entries": [entry]}))
    path.chmod(mode)
    os.chown(path, os.geteuid() + owner, -1)
    out, err = io.StringIO(), io.StringIO()
    request = json.dumps({"apiVersion": API, "kind": "CredentialProviderRequest", "image": "r.example.com/app"})
    code = plugin.run(io.StringIO(request), out, ["--credentials", str(path)], err)
    assert (0 if answered else 1, 0 if answered else 1) == (code, err.getvalue().count("\n"))


@pytest.mark.parametrize(
    ("annotations", "warned"),
    [
        ({"nodeagent.io/namespace": "team-a"}, ["'nodeagent.io/namespaces'"]),
        ({"nodeagent.io/nodeselector": "pool=x"}, ["'nodeagent.io/node-selector'"]),
        ({"nodeagent.io/whatever": "x"}, ["nodeagent reads"]),
        ({"nodeagent.io/namespaces": "team-a", "other.io/namespace": "x"}, []),
    ],
)
def test_an_unknown_nodeagent_annotation_is_a_warning(annotations: dict[str, str], warned: list[str]) -> None:
    """A misspelt nodeagent.io/ annotation is named in a warning (with the closest known key),
    so a Secret meant to be scoped does not become node-wide unsaid; other prefixes are not ours."""
    data = base64.b64encode(json.dumps({"auths": {"r.example.com": {"auth": b64("u:p")}}}).encode()).decode()
    metadata = {"annotations": annotations}
    secret = {"type": "kubernetes.io/dockerconfigjson", "metadata": metadata, "data": {".dockerconfigjson": data}}
    result = parse_secret(secret, source="secret:ns/s")
    assert len(warned) == len(result.warnings)
    assert all(hint in w.reason for hint, w in zip(warned, result.warnings, strict=True))
