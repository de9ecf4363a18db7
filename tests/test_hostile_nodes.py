"""Whole passes over hostile *node* files and registry settings: the node's own config.json and
containerd config.toml in every layout TOML allows (tables, dotted keys, inline tables), with
surrogates, huge numbers and IPv6/zone-ID hosts, and registry settings with hosts containerd cannot
carry. The pass never crashes; every file it leaves is one its reader accepts (config.json by the
kubelet model, config.toml by containerd's own loader); a file it cannot edit safely stays byte for
byte; the kubelet's config.json still gets the credentials."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import ContainerdSettings, SyncSettings
from nodeagent.errors import NodeagentError, TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import parse_docker_config
from nodeagent.model.registry_settings import parse_registry_settings
from nodeagent.reconcile import cleanup, sync
from nodeagent.targets.containerd import go_toml_v1_problems
from tests.conftest import FIGURES, b64
from tests.real_parsers import containerd_config_dump, kubelet_read_config

PLUGIN = "io.containerd.grpc.v1.cri"
tried = {"config.json": 0, "config.toml": 0, "dumped": 0}

_host = st.sampled_from(
    ["r.example", "foreign.io", "node.example:5000", "[fd00::10]:5000", "[::1]", "a" * 60 + ".example", "x.y.z"]
)
_value = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["x\\ud800y", "\\u0000", "]", "[", '\\"', "é"]),
)


def _toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string for these values


def _auth_lines(host: str, user: str, layout: str) -> str:
    key = _toml_str(host)
    if layout == "tables":
        return f"[plugins.{_toml_str(PLUGIN)}.registry.configs.{key}.auth]\n  username = {_toml_str(user)}\n"
    if layout == "dotted":
        return f"[plugins.{_toml_str(PLUGIN)}.registry]\n  configs.{key}.auth.username = {_toml_str(user)}\n"
    inline = f"{{ {key} = {{ auth = {{ username = {_toml_str(user)} }} }} }}"
    return f"[plugins.{_toml_str(PLUGIN)}.registry]\n  configs = {inline}\n"


@st.composite
def _config_toml(draw: Any) -> str:
    parts = ["version = 2\n"]
    if draw(st.booleans()):
        parts.append(f"n = {draw(st.sampled_from(['1' * 5000, '99999999999999999999', 'nan', '-inf', '7']))}\n")
    layout = draw(st.sampled_from(["tables", "dotted", "inline", "none"]))
    if layout != "none":
        parts.append(_auth_lines(draw(_host), draw(st.sampled_from(["fu", "x", "é"])), layout))
    if draw(st.booleans()):
        parts.append(f"[plugins.{_toml_str(PLUGIN)}.containerd]\n  snapshotter = 'overlayfs'\n")
    return "".join(parts)


def _registries(hosts: list[str], mirrors: list[str]) -> bytes:
    lines = []
    for host in hosts:
        lines.append(f"[registries.{_toml_str(host)}]\nskip_verify = true\n")
        if mirrors:
            lines.append(f"mirrors = {json.dumps(mirrors)}\n")
    return "".join(lines).encode()


def _record() -> None:
    FIGURES["hostile node files tried"] = (
        f"{tried['config.json']} config.json, {tried['config.toml']} config.toml "
        f"({tried['dumped']} loaded by containerd config dump)"
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    config=_config_toml(),
    secret_hosts=st.lists(_host, min_size=1, max_size=3, unique=True),
    setting_hosts=st.lists(_host, max_size=2, unique=True),
    mirrors=st.lists(st.sampled_from(["https://m.example", "http://[::1]:5998", "https://[fe80::1%25x]"]), max_size=2),
)
def test_hostile_containerd_nodes(
    tmp_path_factory: Any, config: str, secret_hosts: list[str], setting_hosts: list[str], mirrors: list[str]
) -> None:
    """Whatever the node's config.toml layout and the Secret's hosts, a pass (and cleanup) leaves
    config.toml byte for byte or a file containerd 1.6 loads; hosts.toml files pass containerd's
    rules; config.json always gets the valid credentials."""
    host_root = tmp_path_factory.mktemp("host")
    (host_root / "var/lib/kubelet").mkdir(parents=True)
    path = host_root / "etc/containerd/config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(config)
    settings_ = SyncSettings(
        host_root=str(host_root),
        containerd=ContainerdSettings(config="/etc/containerd/config.toml", auth=True),
    )
    registries = parse_registry_settings(_registries(setting_hosts, mirrors), source="r")
    secret = json.dumps({"auths": {h: {"auth": b64("u:p")} for h in secret_hosts}}).encode()
    sources = [parse_docker_config(secret, source="s")]
    fs = HostFS(host_root)
    report = sync(fs, settings_, sources, registry_settings=registries)
    tried["config.toml"] += 1
    _check_config_toml(path, config)
    for hosts_toml in (host_root / "etc/containerd").rglob("hosts.toml"):
        assert [] == go_toml_v1_problems(hosts_toml.read_text())
    written = {c.key for c in kubelet_read_config((host_root / "var/lib/kubelet/config.json").read_bytes())}
    assert {c.key for c in sources[0].credentials} == written
    assert all(p.reason for p in report.conflicts + report.warnings + report.rejected)
    cleanup(fs, settings_)
    _check_config_toml(path, config)
    _record()


def _check_config_toml(path: Path, original: str) -> None:
    now = path.read_text()
    if now == original:
        return
    assert [] == go_toml_v1_problems(now)
    tomllib.loads(now)
    tried["dumped"] += 1
    dump = containerd_config_dump(path)  # fails under CI when containerd is missing, skips elsewhere
    assert 0 == dump.returncode, dump.stderr[-300:]


@st.composite
def _node_config_json(draw: Any) -> bytes:
    entry = {"auth": b64("node:own"), "email": draw(_value)}
    document: dict[str, Any] = {"auths": {draw(_host): entry}}
    if draw(st.booleans()):
        document["HttpHeaders"] = {"X-A": draw(_value)}
    text = json.dumps(document)
    extra = draw(
        st.sampled_from(["", ', "n": ' + "1" * 5000, ', "f": NaN', ', "d": ' + "[" * 200 + "]" * 200, ', "k": 7'])
    )
    return (text[:-1] + extra + "}").encode("utf-8", "surrogatepass")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(node_file=_node_config_json(), hosts=st.lists(_host, min_size=1, max_size=3, unique=True))
def test_hostile_node_config_json(tmp_path_factory: Any, node_file: bytes, hosts: list[str]) -> None:
    """The node's own config.json with surrogates, huge numbers, NaN or deep nesting: the pass
    writes a file the kubelet accepts (the node's entries kept as the kubelet reads them), or
    refuses the target (TargetError) and leaves the file byte for byte."""
    host_root = tmp_path_factory.mktemp("host")
    path = host_root / "var/lib/kubelet/config.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(node_file)
    secret = json.dumps({"auths": {h: {"auth": b64("u:p")} for h in hosts}}).encode()
    tried["config.json"] += 1
    _record()
    try:
        sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), [parse_docker_config(secret, source="s")])
    except TargetError:
        assert node_file == path.read_bytes()
        return
    keys = {c.key for c in kubelet_read_config(path.read_bytes())}
    assert set(hosts) <= keys


def _flat(document: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    items: list[tuple[tuple[str, ...], Any]] = []
    for key, value in document.items():
        items += _flat(value, (*prefix, key)) if isinstance(value, dict) else [((*prefix, key), value)]
    return items


def _dotted(document: dict[str, Any], depth: int) -> str:
    """The same document with every key path written as dotted keys under tables ``depth`` deep
    (what an administrator's reformatting, or another tool, may leave)."""
    by_table: dict[tuple[str, ...], list[tuple[tuple[str, ...], Any]]] = {}
    for path, value in _flat(document):
        head = path[: min(depth, len(path) - 1)]
        by_table.setdefault(head, []).append((path[len(head) :], value))
    lines = []
    for head, pairs in by_table.items():
        if head:
            lines.append("[" + ".".join(json.dumps(h) for h in head) + "]")
        lines += [".".join(json.dumps(k) for k in rest) + " = " + json.dumps(value) for rest, value in pairs]
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    node_hosts=st.lists(st.sampled_from(["r.example", "node.example"]), max_size=2, unique=True),
    secret_hosts=st.lists(st.sampled_from(["r.example", "other.example"]), min_size=1, max_size=2, unique=True),
    depth=st.integers(0, 6),
)
def test_a_config_toml_rewritten_in_dotted_keys_never_crashes_release(
    tmp_path_factory: Any, node_hosts: list[str], secret_hosts: list[str], depth: int
) -> None:
    """After the agent wrote its credentials, config.toml is rewritten in dotted keys (containerd
    reads it the same): a pass whose containerd set becomes empty and cleanup raise nothing but
    the project's errors; a file they cannot edit stays as it is, its ledger record and backup
    are kept (the node's own credential can still be restored), and cleanup names the conflict."""
    from nodeagent.model.ledger import Ledger

    host_root = tmp_path_factory.mktemp("host")
    (host_root / "var/lib/kubelet").mkdir(parents=True)
    path = host_root / "etc/containerd/config.toml"
    path.parent.mkdir(parents=True)
    node = "".join(_auth_lines(h, "node-user", "tables") for h in node_hosts)
    path.write_text("version = 2\n" + node)
    settings_ = SyncSettings(host_root=str(host_root), containerd=ContainerdSettings(auth=True))
    secret = json.dumps({"auths": {h: {"auth": b64("u:p")} for h in secret_hosts}}).encode()
    fs = HostFS(host_root)
    sync(fs, settings_, [parse_docker_config(secret, source="s")])
    document = tomllib.loads(path.read_text())
    version = document.pop("version")
    path.write_text(f"version = {version}\n" + _dotted(document, depth))
    rewritten = path.read_text()
    ledger_path = host_root / "var/lib/nodeagent/state.json"
    record = Ledger.load(ledger_path.read_bytes(), source="l").files.get("/etc/containerd/config.toml")
    for step in ("empty pass", "cleanup"):
        try:
            report = sync(fs, settings_, []) if step == "empty pass" else cleanup(fs, settings_)
        except NodeagentError:
            continue
        if path.read_text() == rewritten:
            if record is not None:  # not released: what restores the node is kept
                kept = Ledger.load(ledger_path.read_bytes(), source="l").files.get("/etc/containerd/config.toml")
                assert record == kept, step
                assert not record.backup or (host_root / record.backup.lstrip("/")).exists()
                assert any(c.source == "/etc/containerd/config.toml" for c in report.conflicts), step
        else:
            _check_config_toml(path, rewritten)
    tried["config.toml"] += 1
    _record()


def test_cleanup_that_cannot_release_exits_4_and_names_the_file(tmp_path: Path) -> None:
    """The CLI: cleanup of a config.toml it cannot edit exits 4 and names the file; a second
    cleanup after the file is made editable again restores the node's own credential."""
    import subprocess
    import sys

    host_root = tmp_path / "host"
    (host_root / "var/lib/kubelet").mkdir(parents=True)
    path = host_root / "etc/containerd/config.toml"
    path.parent.mkdir(parents=True)
    original = "version = 2\n" + _auth_lines("r.example", "node-user", "tables")
    path.write_text(original)
    source = tmp_path / "creds.json"
    source.write_text(json.dumps({"auths": {"r.example": {"auth": b64("u:p")}, "other.example": {"auth": b64("o:p")}}}))
    base = [sys.executable, "-m", "nodeagent"]
    common = ["--host-root", str(host_root), "--containerd-auth", "--log-format", "json"]
    subprocess.run([*base, "sync", "--from-file", str(source), *common], check=True, capture_output=True)
    agent_version = path.read_text()
    document = tomllib.loads(agent_version)
    path.write_text("version = 2\n" + _dotted({k: v for k, v in document.items() if k != "version"}, 1))
    result = subprocess.run([*base, "cleanup", *common[:2], "--log-format", "json"], capture_output=True, text=True)
    assert 4 == result.returncode, result.stderr
    assert "cleanup_conflict" in result.stdout + result.stderr
    assert "/etc/containerd/config.toml" in result.stdout + result.stderr
    path.write_text(agent_version)  # the administrator puts the tables back
    again = subprocess.run([*base, "cleanup", *common[:2]], capture_output=True, text=True)
    assert 0 == again.returncode, again.stderr
    assert original == path.read_text()
