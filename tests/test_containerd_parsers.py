"""Every TOML file nodeagent writes for containerd, judged by containerd's own parsers (the hosts
loader of containerd 1.6.20 through the Go harness, and Debian's ``containerd config dump``), and
the run-time model of those parsers (``go_toml_v1_problems``) compared with the real ones."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.model.credentials import parse_docker_config
from nodeagent.model.registry_settings import RegistrySettings
from nodeagent.targets.containerd import (
    ContainerdSetup,
    detect_setup,
    go_toml_v1_problems,
    render_config_auth,
    render_hosts_files,
)
from tests.conftest import FIGURES, docker_config
from tests.real_parsers import containerd_config_dump, containerd_hosts
from tests.tls import make_ca_and_server

checked = {"hosts": 0, "config": 0, "model": 0}


def _record() -> None:
    FIGURES["files judged by containerd's own parsers"] = (
        f"{checked['hosts']} hosts.toml (containerd 1.6.20 hosts loader), {checked['config']} config.toml "
        f"(containerd config dump), {checked['model']} model-vs-real comparisons"
    )


# -- the run-time model against the real parsers -------------------------------------------------
URLS = [
    "https://r.example",
    "http://[::1]:5998",
    "https://[fd00::10]:5000/v2",
    "https://r.example/a]b",
    "https://r.example/a[b",
]
"""URLs Go's url.Parse accepts (containerd parses each host key as a URL after the TOML)."""


def _hosts_document(url: str, form: str) -> str:
    if form == "table":
        return f'server = "https://reg.example"\n[host."{url}"]\n  capabilities = ["pull"]\n'
    if form == "inline":
        return f'server = "https://reg.example"\n[host]\n  "{url}" = {{ capabilities = ["pull"] }}\n'
    if form == "dotted":
        return f'server = "https://reg.example"\nhost."{url}".capabilities = ["pull"]\n'
    header = f'[host."{url}".header]\n  X-A = "b"\n'
    return f'server = "https://reg.example"\n{header}[host."{url}"]\n  capabilities = ["pull"]\n'


@pytest.mark.parametrize("form", ["table", "inline", "dotted", "header-table"])
@pytest.mark.parametrize("url", URLS)
def test_model_agrees_with_containerds_hosts_loader(tmp_path: Path, url: str, form: str) -> None:
    """go_toml_v1_problems refuses exactly the hosts.toml layouts containerd 1.6 fails to read."""
    text = _hosts_document(url, form)
    tomllib.loads(text)  # every case is valid TOML: only containerd's parser tells them apart
    (tmp_path / "reg.example").mkdir()
    (tmp_path / "reg.example/hosts.toml").write_text(text)
    real = containerd_hosts(tmp_path, "reg.example")
    checked["model"] += 1
    _record()
    assert bool(real["errors"]) == bool(go_toml_v1_problems(text))


@pytest.mark.parametrize("key", ["r.example", "r.example:5000", "[fd00::10]:5000", "[::1]"])
@pytest.mark.parametrize("form", ["table", "inline"])
def test_model_agrees_with_containerds_config_loader(tmp_path: Path, key: str, form: str) -> None:
    """go_toml_v1_problems refuses exactly the config.toml layouts containerd 1.6 will not start with."""
    if form == "table":
        text = f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs."{key}".auth]\n  username = "u"\n'
    else:
        text = (
            f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs]\n'
            f'  "{key}" = {{ auth = {{ username = "u" }} }}\n'
        )
    path = tmp_path / "config.toml"
    path.write_text(text)
    checked["model"] += 1
    _record()
    assert (containerd_config_dump(path).returncode != 0) == bool(go_toml_v1_problems(text))


# -- hosts.toml as rendered, read by containerd's loader -------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, bytes]:
    ca, cert, key = make_ca_and_server(tmp_path_factory.mktemp("pki"))
    return ca.read_bytes(), cert.read_bytes(), key.read_bytes()


_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
_PORT = st.sampled_from([0, 5000])
_HOST = st.builds(lambda a, b, port: f"{a}.{b}" + (f":{port}" if port else ""), _LABEL, _LABEL, _PORT)
_MIRROR = st.tuples(
    st.sampled_from(["https", "http"]), _HOST, st.sampled_from(["", "/v2/cache", "/path"]), st.booleans()
).map(lambda t: (f"{t[0]}://{t[1]}{t[2]}", t[3]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    host=st.one_of(_HOST, st.just("docker.io")),
    mirrors=st.lists(_MIRROR, max_size=3, unique_by=lambda m: m[0]),
    tls=st.sampled_from(["none", "ca", "ca+client", "skip"]),
    override=st.booleans(),
    header=st.booleans(),
)
def test_rendered_hosts_toml_is_read_by_containerd(
    tmp_path_factory: pytest.TempPathFactory,
    pki: tuple[bytes, bytes, bytes],
    host: str,
    mirrors: list[tuple[str, bool]],
    tls: str,
    override: bool,
    header: bool,
) -> None:
    """Any settings render a hosts.toml containerd 1.6 reads without error: mirrors first, in
    order, then the registry; the Basic header only on the registry and the mirrors marked so."""
    header = header and host != "docker.io"
    settings_ = RegistrySettings(
        host=host,
        ca=pki[0] if tls.startswith("ca") else None,
        client_cert=pki[1] if tls == "ca+client" else None,
        client_key=pki[2] if tls == "ca+client" else None,
        skip_verify=tls == "skip",
        mirrors=tuple(m for m, _ in mirrors),
        credential_mirrors=frozenset(m for m, credentials in mirrors if credentials),
        override_path=override,
        containerd_auth="header" if header else "config",
    )
    root = tmp_path_factory.mktemp("certs.d")
    credential = parse_docker_config(docker_config({host: ("u", "p")}), source="t").credentials[0]
    files, _ = render_hosts_files(settings_, root=str(root), credential=credential)
    for path, (content, _mode) in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(content)
    real = containerd_hosts(root, host)
    checked["hosts"] += 1
    _record()
    assert [] == real["errors"]
    server = "registry-1.docker.io" if host == "docker.io" else host
    expected = [_as_real(m, override, credentials, header) for m, credentials in mirrors]
    expected.append({"host": server, "scheme": "https", "path": "/v2", "capabilities": ["pull", "resolve", "push"],
                     "headers": ["Authorization"] if header else []})  # fmt: skip
    assert expected == real["hosts"]


def _as_real(url: str, override: bool, credentials: bool, header: bool) -> dict[str, Any]:
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    path = "/" + path if path else ""
    # containerd appends /v2 unless override_path (or the path already ends in /v2)
    real_path = path if override else (path if path.endswith("/v2") else path + "/v2")
    return {
        "host": netloc,
        "scheme": scheme,
        "path": real_path,
        "capabilities": ["pull", "resolve"],
        "headers": ["Authorization"] if header and credentials else [],
    }


# -- config.toml as edited, loaded by containerd ---------------------------------------------------
BASES = [
    'version = 2\nroot = "/var/lib/containerd"\n',
    'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "registry.k8s.io/pause:3.9"\n'
    '  [plugins."io.containerd.grpc.v1.cri".registry]\n    config_path = "/etc/containerd/certs.d"\n'
    '    [plugins."io.containerd.grpc.v1.cri".registry.configs."node.example".auth]\n      username = "node"\n',
    "# comment\nversion = 2\n[plugins]\n"
    '  [plugins."io.containerd.grpc.v1.cri".containerd]\n    snapshotter = "overlayfs"\n',
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(BASES),
    hosts=st.lists(st.one_of(_HOST, st.just("node.example")), min_size=1, max_size=4, unique=True),
    token=st.booleans(),
)
def test_edited_config_toml_is_loaded_by_containerd(
    tmp_path_factory: pytest.TempPathFactory, base: str, hosts: list[str], token: bool
) -> None:
    """Any set of credentials edited into a node's version 2 config.toml gives a file containerd 1.6
    loads, with exactly those auth tables (and the node's other settings)."""
    setup: ContainerdSetup = detect_setup("/c", base.encode())
    auth = base64.b64encode(b"u:p").decode()
    desired = {h: ({"identitytoken": "t"} if token else {"auth": auth}, h) for h in hosts}
    render = render_config_auth(current=base.encode(), setup=setup, desired=desired, record=None, path="/c")
    assert render.content is not None
    path = tmp_path_factory.mktemp("containerd") / "config.toml"
    path.write_bytes(render.content)
    dump = containerd_config_dump(path)
    checked["config"] += 1
    _record()
    assert 0 == dump.returncode, dump.stderr[-500:]
    configs = tomllib.loads(dump.stdout)["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["configs"]
    field = "identitytoken" if token else "auth"
    assert {h: desired[h][0][field] for h in hosts} == {h: configs[h]["auth"][field] for h in hosts}
