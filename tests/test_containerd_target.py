"""containerd target: detection, hosts.toml, config.toml auth (in place and drop-in), conflicts, cleanup.

Renderers are tested as data: rendered TOML is parsed back with tomllib.
"""

from __future__ import annotations

import base64
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.config import ContainerdSettings, SyncSettings
from nodeagent.errors import SettingsError, TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import RegistryCredential, parse_docker_config
from nodeagent.model.ledger import Ledger
from nodeagent.model.registry_settings import RegistrySettings, SettingsLoad, parse_registry_settings
from nodeagent.reconcile import cleanup, sync
from nodeagent.targets.containerd import (
    MANAGED_HEADER,
    auth_hosts,
    detect_setup,
    is_managed,
    render_config_auth,
    render_hosts_files,
)
from tests.conftest import docker_config
from tests.tls import make_ca_and_server

V2 = """# the node's own config
version = 2
root = "/var/lib/containerd"  # keep this comment

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
    [plugins."io.containerd.grpc.v1.cri".registry.configs."node.example".auth]
      username = "node"
      password = "node-password"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
"""
V3 = """version = 3
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
"""


def _cred(key: str, user: str = "u", password: str = "p") -> RegistryCredential:
    result = parse_docker_config(docker_config({key: (user, password)}), source="test")
    return result.credentials[0]


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _parse(content: bytes | None) -> dict[str, Any]:
    assert content is not None
    return tomllib.loads(content.decode())


# -- detection ---------------------------------------------------------------------------------
def test_detect_v2() -> None:
    """A version 2 config: the grpc.v1.cri plugin and its config_path roots (':'-separated)."""
    text = V2.replace('"/etc/containerd/certs.d"', '"/etc/containerd/certs.d:/etc/docker/certs.d"')
    setup = detect_setup("/etc/containerd/config.toml", text.encode())
    assert (2, "io.containerd.grpc.v1.cri") == (setup.version, setup.plugin)
    assert ("/etc/containerd/certs.d", "/etc/docker/certs.d") == setup.roots
    assert setup.dropin_dir is None


def test_detect_v3_defaults_and_imports() -> None:
    """A version 3 config without config_path gets containerd 2.2's default roots; conf.d is seen."""
    setup = detect_setup("/etc/containerd/config.toml", V3.encode())
    assert ("io.containerd.cri.v1.images", ("/etc/containerd/certs.d", "/etc/docker/certs.d")) == (
        setup.plugin,
        setup.roots,
    )
    assert "/etc/containerd/conf.d" == setup.dropin_dir


def test_detect_v2_without_config_path() -> None:
    """A version 2 config without config_path reads no hosts.toml."""
    assert () == detect_setup("/c", b'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n').roots


@pytest.mark.parametrize("text", [b"root = '/x'\n", b"version = 4\n", b"version = [\n", b"\xff"])
def test_detect_refuses_unknown(text: bytes) -> None:
    """Version 1 (no version), unknown versions and broken TOML are refused, never guessed."""
    with pytest.raises(TargetError):
        detect_setup("/etc/containerd/config.toml", text)


# -- hosts.toml ----------------------------------------------------------------------------------
def test_hosts_toml_with_ca_client_and_mirrors(tmp_path: Path) -> None:
    """server is the registry (top level); mirrors are [host] entries tried first; files sit next to hosts.toml."""
    ca, cert, key = make_ca_and_server(tmp_path)
    settings = RegistrySettings(
        host="harbor.internal:8443",
        ca=ca.read_bytes(),
        client_cert=cert.read_bytes(),
        client_key=key.read_bytes(),
        mirrors=("https://mirror.internal:5000",),
        override_path=True,
    )
    files, warnings = render_hosts_files(settings, root="/etc/containerd/certs.d", credential=None)
    directory = "/etc/containerd/certs.d/harbor.internal:8443"
    assert {f"{directory}/{n}" for n in ("hosts.toml", "ca.crt", "client.cert", "client.key")} == set(files)
    assert ([], 0o644, 0o600) == (warnings, files[f"{directory}/ca.crt"][1], files[f"{directory}/client.key"][1])
    content, mode = files[f"{directory}/hosts.toml"]
    assert is_managed(content) and 0o644 == mode
    document = _parse(content)
    assert "https://harbor.internal:8443" == document["server"]
    assert f"{directory}/ca.crt" == document["ca"]
    assert [[f"{directory}/client.cert", f"{directory}/client.key"]] == document["client"]
    mirror = document["host"]["https://mirror.internal:5000"]
    assert (["pull", "resolve"], True, f"{directory}/ca.crt") == (
        mirror["capabilities"],
        mirror["override_path"],
        mirror["ca"],
    )
    # the registry is the top level only (containerd tries server last; a [host] entry too would be tried twice)
    assert (["https://mirror.internal:5000"], ["pull", "resolve", "push"]) == (
        list(document["host"]),
        document["capabilities"],
    )


def test_docker_hub_server() -> None:
    """Docker Hub's directory is docker.io and its server registry-1.docker.io."""
    files, _ = render_hosts_files(
        RegistrySettings(host="docker.io", mirrors=("https://mirror.gcr.io",)), root="/r", credential=None
    )
    assert "https://registry-1.docker.io" == _parse(files["/r/docker.io/hosts.toml"][0])["server"]


def test_header_mode() -> None:
    """header mode sends the Basic credential as a static header to the registry and to the mirrors
    marked credentials = true only; the file is then 0600."""
    settings = RegistrySettings(
        host="basic.example",
        containerd_auth="header",
        mirrors=("https://m.example", "https://trusted.example"),
        credential_mirrors=frozenset({"https://trusted.example"}),
    )
    files, warnings = render_hosts_files(settings, root="/r", credential=_cred("basic.example", "bu", "bp"))
    content, mode = files["/r/basic.example/hosts.toml"]
    document = _parse(content)
    expected = {"Authorization": f"Basic {_basic('bu', 'bp')}"}
    assert (0o600, expected, expected, None, []) == (
        mode,
        document["header"],
        document["host"]["https://trusted.example"]["header"],
        document["host"]["https://m.example"].get("header"),
        warnings,
    )
    assert {} == document["host"]["https://m.example"].get("header", {}) and "host" in document


def test_header_mode_without_credential_warns() -> None:
    """header mode with no credential for the host writes no header and says so."""
    files, warnings = render_hosts_files(
        RegistrySettings(host="basic.example", containerd_auth="header"), root="/r", credential=None
    )
    assert "header" not in _parse(files["/r/basic.example/hosts.toml"][0])
    assert 1 == len(warnings)


# -- which hosts get config.toml credentials ---------------------------------------------------------
def test_auth_hosts_mapping() -> None:
    """Docker Hub -> registry-1.docker.io; a mirror gets its registry's credential only when marked
    credentials = true (unless named itself); path keys and IPv6 hosts are skipped with a warning;
    header/none registries are left out."""
    credentials = [
        _cred("https://index.docker.io/v1/", "hub", "hubpw"),
        _cred("harbor.example", "h", "hpw"),
        _cred("mirror-own.example", "m", "mpw"),
        _cred("ghcr.io/org", "g", "gpw"),
        _cred("basic.example", "b", "bpw"),
        _cred("none.example", "n", "npw"),
        _cred("[fd00::10]:5000", "v6", "v6pw"),
    ]
    registries = {
        "harbor.example": RegistrySettings(
            host="harbor.example",
            mirrors=("https://mirror.example:5000", "https://mirror-own.example", "https://public-cache.example"),
            credential_mirrors=frozenset({"https://mirror.example:5000", "https://mirror-own.example"}),
        ),
        "basic.example": RegistrySettings(host="basic.example", containerd_auth="header"),
        "none.example": RegistrySettings(host="none.example", containerd_auth="none"),
    }
    desired, skipped = auth_hosts(credentials, registries)
    assert {
        "registry-1.docker.io": ({"auth": _basic("hub", "hubpw")}, "docker.io"),
        "harbor.example": ({"auth": _basic("h", "hpw")}, "harbor.example"),
        "mirror.example:5000": ({"auth": _basic("h", "hpw")}, "harbor.example"),
        "mirror-own.example": ({"auth": _basic("m", "mpw")}, "mirror-own.example"),
    } == desired
    assert ["ghcr.io/org", "[fd00::10]:5000"] == [p.key for p in skipped]


# -- config.toml in place ----------------------------------------------------------------------------
def test_config_auth_keeps_everything_else() -> None:
    """Auth tables are added with tomlkit: comments, order and other settings survive; a foreign
    table for the same host is parked in the ledger record and put back on release."""
    setup = detect_setup("/c", V2.encode())
    desired = {
        "node.example": ({"auth": _basic("a", "b")}, "node.example"),
        "new.example": ({"auth": _basic("c", "d")}, "new.example"),
    }
    render = render_config_auth(current=V2.encode(), setup=setup, desired=desired, record=None, path="/c")
    text = render.content.decode() if render.content else ""
    assert "# keep this comment" in text and text.startswith("# the node's own config")
    document = _parse(render.content)
    cri = document["plugins"]["io.containerd.grpc.v1.cri"]
    assert {
        "node.example": {"auth": {"auth": _basic("a", "b")}},
        "new.example": {"auth": {"auth": _basic("c", "d")}},
    } == (cri["registry"]["configs"])
    assert ("overlayfs", "/etc/containerd/certs.d") == (
        cri["containerd"]["snapshotter"],
        cri["registry"]["config_path"],
    )
    assert {"node.example": {"username": "node", "password": "node-password"}} == render.record.originals
    released = render_config_auth(
        current=render.content or b"", setup=setup, desired={}, record=render.record, path="/c"
    )
    assert tomllib.loads(V2) == _parse(released.content)


def test_config_auth_v3_creates_tables() -> None:
    """A version 3 config gets the tables under io.containerd.cri.v1.images."""
    setup = detect_setup("/c", b"version = 3\n")
    render = render_config_auth(
        current=b"version = 3\n",
        setup=setup,
        desired={"r.example": ({"auth": "eA=="}, "r.example")},
        record=None,
        path="/c",
    )
    assert {"auth": "eA=="} == _parse(render.content)["plugins"]["io.containerd.cri.v1.images"]["registry"]["configs"][
        "r.example"
    ]["auth"]


# -- planning through sync() on a sandbox host -----------------------------------------------------
@pytest.fixture
def node(host_root: Path) -> Path:
    (host_root / "etc/containerd").mkdir(parents=True)
    (host_root / "etc/containerd/config.toml").write_text(V2)
    return host_root


def _settings(host_root: Path, **containerd: Any) -> SyncSettings:
    return SyncSettings(host_root=str(host_root), containerd=ContainerdSettings(**containerd))


def _regs(text: str) -> SettingsLoad:
    return parse_registry_settings(text.encode(), source="regs.toml")


def _sources(entries: dict[str, tuple[str, str]]) -> list[Any]:
    return [parse_docker_config(docker_config(entries), source="secret")]


BASIC = '[registries."basic.example"]\ncontainerd_auth = "header"\n'
REGS = '[registries."harbor.example"]\nmirrors = [{ url = "https://mirror.example", credentials = true }]\n' + BASIC


def test_sync_writes_hosts_and_auth_and_cleanup_restores_bytes(node: Path) -> None:
    """hosts.toml per registry with settings, auth in config.toml with a backup first; cleanup
    restores containerd's config byte for byte and removes the directories it created."""
    fs = HostFS(node)
    settings = _settings(node, auth=True)
    sources = _sources({"harbor.example": ("h", "hpw"), "basic.example": ("b", "bpw")})
    report = sync(fs, settings, sources, registry_settings=_regs(REGS))
    assert report.containerd_auth_changed
    certs = node / "etc/containerd/certs.d"
    assert {"harbor.example", "basic.example"} == set(os.listdir(certs))
    configs = _parse((node / "etc/containerd/config.toml").read_bytes())["plugins"]["io.containerd.grpc.v1.cri"][
        "registry"
    ]["configs"]
    assert {"harbor.example", "mirror.example", "node.example"} == set(configs)
    assert V2.encode() == (node / "var/lib/nodeagent/containerd-config.toml.orig").read_bytes()
    again = sync(fs, settings, sources, registry_settings=_regs(REGS))
    assert ([], False) == (again.written, again.containerd_auth_changed)
    cleanup(fs, settings)
    assert V2.encode() == (node / "etc/containerd/config.toml").read_bytes()
    assert not (node / "var/lib/nodeagent/containerd-config.toml.orig").exists()
    assert not certs.exists()  # the agent created certs.d itself, so it goes too


def test_cleanup_after_foreign_edit_removes_only_agent_tables(node: Path) -> None:
    """When someone edits config.toml after the agent, cleanup keeps their edit and removes only
    the agent's tables (the backup is no longer "the file without nodeagent")."""
    fs = HostFS(node)
    settings = _settings(node, auth=True)
    sync(fs, settings, _sources({"harbor.example": ("h", "hpw")}))
    config = node / "etc/containerd/config.toml"
    config.write_text(config.read_text().replace("pause:3.9", "pause:3.10"))
    cleanup(fs, settings)
    document = _parse(config.read_bytes())
    cri = document["plugins"]["io.containerd.grpc.v1.cri"]
    assert ("registry.k8s.io/pause:3.10", ["node.example"]) == (cri["sandbox_image"], list(cri["registry"]["configs"]))


def test_unmanaged_hosts_toml_is_never_touched(node: Path) -> None:
    """A hosts.toml without the header stays byte-identical, through sync and cleanup; reported."""
    own = node / "etc/containerd/certs.d/harbor.example/hosts.toml"
    own.parent.mkdir(parents=True)
    own.write_bytes(b'server = "https://harbor.example"\n# the node\'s own\n')
    fs = HostFS(node)
    settings = _settings(node)
    report = sync(fs, settings, [], registry_settings=_regs(REGS))
    assert ["harbor.example"] == [p.key for p in report.conflicts]
    cleanup(fs, settings)
    assert b'server = "https://harbor.example"\n# the node\'s own\n' == own.read_bytes()


def test_taking_over_a_managed_file(node: Path) -> None:
    """Deleting the header line hands the file to the node: the agent stops managing that directory."""
    fs = HostFS(node)
    settings = _settings(node)
    sync(fs, settings, [], registry_settings=_regs(REGS))
    hosts = node / "etc/containerd/certs.d/harbor.example/hosts.toml"
    hosts.write_bytes(hosts.read_bytes().split(b"\n", 1)[1])
    report = sync(fs, settings, [], registry_settings=_regs('[registries."other.example"]\nskip_verify = true\n'))
    assert hosts.exists() and not is_managed(hosts.read_bytes())
    assert "/etc/containerd/certs.d/harbor.example/hosts.toml" not in report.removed
    ledger = Ledger.load(fs.read(settings.ledger_path), source="ledger")
    assert not any("harbor.example" in p for p in ledger.files)


def test_registry_dropped_from_settings_is_removed(node: Path) -> None:
    """A registry removed from the settings file loses its hosts.toml and directory."""
    fs = HostFS(node)
    settings = _settings(node)
    sync(fs, settings, [], registry_settings=_regs(REGS))
    report = sync(
        fs, settings, [], registry_settings=_regs('[registries."basic.example"]\ncontainerd_auth = "header"\n')
    )
    assert "/etc/containerd/certs.d/harbor.example/hosts.toml" in report.removed
    assert ["basic.example"] == os.listdir(node / "etc/containerd/certs.d")


def test_v3_with_conf_d_uses_a_drop_in(node: Path) -> None:
    """containerd 2.x with a conf.d import: credentials go to the agent's own drop-in; config.toml is untouched."""
    config = node / "etc/containerd/config.toml"
    config.write_text(V3)
    fs = HostFS(node)
    settings = _settings(node, auth=True)
    sync(fs, settings, _sources({"r.example": ("u", "p")}))
    dropin = node / "etc/containerd/conf.d/nodeagent.toml"
    assert V3 == config.read_text()
    assert dropin.read_bytes().startswith(MANAGED_HEADER.encode()) and 0o600 == dropin.stat().st_mode & 0o777
    document = _parse(dropin.read_bytes())
    assert 3 == document["version"]
    assert {"auth": _basic("u", "p")} == (
        document["plugins"]["io.containerd.cri.v1.images"]["registry"]["configs"]["r.example"]["auth"]
    )
    cleanup(fs, settings)
    assert not dropin.exists()


def test_foreign_drop_in_is_refused(node: Path) -> None:
    """A conf.d/nodeagent.toml without the header is reported, not overwritten."""
    (node / "etc/containerd/config.toml").write_text(V3)
    (node / "etc/containerd/conf.d").mkdir()
    (node / "etc/containerd/conf.d/nodeagent.toml").write_text("# mine\n")
    report = sync(HostFS(node), _settings(node, auth=True), _sources({"r.example": ("u", "p")}))
    assert "# mine\n" == (node / "etc/containerd/conf.d/nodeagent.toml").read_text()
    assert 1 == len(report.conflicts)


def test_hold_all_keeps_auth(node: Path) -> None:
    """While a source is unknown (hold_all), the agent's config.toml credentials stay."""
    fs = HostFS(node)
    settings = _settings(node, auth=True)
    sync(fs, settings, _sources({"r.example": ("u", "p")}))
    before = (node / "etc/containerd/config.toml").read_bytes()
    report = sync(fs, settings, [], hold_all=True)
    assert (before, False) == ((node / "etc/containerd/config.toml").read_bytes(), report.containerd_auth_changed)


def test_hold_keeps_the_header(node: Path) -> None:
    """While the credential is held (source unknown, or its new entry rejected), a header-mode
    hosts.toml keeps its header instead of losing it."""
    fs = HostFS(node)
    settings = _settings(node)
    sync(fs, settings, _sources({"basic.example": ("b", "bpw")}), registry_settings=_regs(BASIC))
    hosts = node / "etc/containerd/certs.d/basic.example/hosts.toml"
    before = hosts.read_bytes()
    sync(fs, settings, [], hold_all=True, registry_settings=_regs(BASIC))
    assert before == hosts.read_bytes()
    bad = [parse_docker_config(b'{"auths": {"basic.example": {"auth": "%%%"}}}', source="secret")]
    sync(fs, settings, bad, registry_settings=_regs(BASIC))
    assert before == hosts.read_bytes()
    sync(fs, settings, [], registry_settings=_regs(BASIC))
    assert "header" not in _parse(hosts.read_bytes())


def test_auth_turned_off_releases(node: Path) -> None:
    """Turning --containerd-auth off restores containerd's config (hosts.toml management stays)."""
    fs = HostFS(node)
    sync(fs, _settings(node, auth=True), _sources({"r.example": ("u", "p")}))
    report = sync(fs, _settings(node, auth=False), _sources({"r.example": ("u", "p")}))
    assert (V2, True) == ((node / "etc/containerd/config.toml").read_text(), report.containerd_auth_changed)


def test_broken_containerd_config_does_not_block_kubelet(node: Path) -> None:
    """An unparseable containerd config is reported and left alone; config.json is still written."""
    (node / "etc/containerd/config.toml").write_text("version = [\n")
    report = sync(HostFS(node), _settings(node, auth=True), _sources({"r.example": ("u", "p")}))
    assert "/var/lib/kubelet/config.json" in report.written
    assert ("version = [\n", 1) == ((node / "etc/containerd/config.toml").read_text(), len(report.conflicts))


def test_no_config_path_is_reported(node: Path) -> None:
    """Registry settings on a containerd that reads no hosts.toml: reported per registry, nothing written."""
    (node / "etc/containerd/config.toml").write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n')
    report = sync(HostFS(node), _settings(node), [], registry_settings=_regs(REGS))
    assert {"harbor.example", "basic.example"} == {p.key for p in report.conflicts}
    assert not (node / "etc/containerd/certs.d").exists()


def test_auth_on_k3s_is_a_settings_error() -> None:
    """--containerd-auth on k3s/RKE2 fails at start: they regenerate config.toml."""
    with pytest.raises(SettingsError):
        ContainerdSettings(config="/var/lib/rancher/k3s/agent/etc/containerd/config.toml", auth=True)


def test_no_secret_in_problems(node: Path) -> None:
    """Problems name hosts and paths, never a password."""
    (node / "etc/containerd/config.toml").write_text("version = [\n")
    report = sync(HostFS(node), _settings(node, auth=True), _sources({"r.example": ("u", "SENTINEL-pw")}))
    assert all("SENTINEL" not in str(p) for p in report.conflicts + report.warnings)


def test_dry_run_and_show_mask_toml_secrets(node: Path) -> None:
    """The dry-run diff masks config.toml auth and hosts.toml Authorization values and hides keys."""
    from nodeagent.reconcile import diff_changes

    (node / "etc/containerd/config.toml").write_text(V2.replace("node-password", "SENTINEL-node"))
    settings = SyncSettings(host_root=str(node), dry_run=True, containerd=ContainerdSettings(auth=True))
    report = sync(
        HostFS(node),
        settings,
        _sources({"basic.example": ("b", "SENTINEL-pw"), "node.example": ("n", "SENTINEL-new")}),
        registry_settings=_regs(BASIC),
    )
    diff = diff_changes(report.changes)
    assert "hosts.toml" in diff and "config.toml" in diff and "<redacted:" in diff
    assert "SENTINEL" not in diff and _basic("b", "SENTINEL-pw") not in diff
    assert "username" in diff  # only secret fields are masked


_POOL = {
    "a.example": '[registries."a.example"]\nskip_verify = true\n',
    "b.example": '[registries."b.example"]\nmirrors = ["https://mirror-b.example"]\n',
    "c.example": '[registries."c.example"]\ncontainerd_auth = "header"\n',
    "d.example": "",  # credentials only: config.toml, no hosts.toml
}
_step = st.tuples(
    st.sets(st.sampled_from(sorted(_POOL))),  # registries in this pass
    st.booleans(),  # --containerd-auth
    st.integers(0, 3),  # password generation
    st.booleans(),  # someone edits config.toml after this pass
)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(_step, min_size=1, max_size=4))
def test_any_sequence_then_cleanup_gives_containerd_back(steps: list[tuple[set[str], bool, int, bool]]) -> None:
    """Any sequence of passes (registries coming and going, auth on and off, rotations, foreign
    edits of config.toml), then cleanup: the node's own hosts.toml is byte-identical, no file of
    the agent's is left, and config.toml is the original (byte for byte when nobody else edited
    it; otherwise as parsed, with the other edits kept)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "var/lib/kubelet").mkdir(parents=True)
        (root / "etc/containerd").mkdir(parents=True)
        config = root / "etc/containerd/config.toml"
        config.write_text(V2)
        own = root / "etc/containerd/certs.d/a.example/hosts.toml"
        own_bytes = None
        if steps[0][3]:  # sometimes the node has its own hosts.toml for a registry we configure
            own.parent.mkdir(parents=True)
            own_bytes = b'server = "https://a.example"\n[host."https://a.example"]\n'
            own.write_bytes(own_bytes)
        expected = V2
        fs = HostFS(root)
        for names, auth, generation, edit in steps:
            settings = _settings(root, auth=auth)
            regs = _regs("".join(_POOL[n] for n in sorted(names)))
            sync(fs, settings, _sources({n: ("u", f"pw-{generation}") for n in names}), registry_settings=regs)
            if edit:
                config.write_text(config.read_text().replace("overlayfs", f"overlayfs-{generation}", 1))
                expected = expected.replace("overlayfs", f"overlayfs-{generation}", 1)
        cleanup(fs, _settings(root))
        if expected == V2:
            assert V2 == config.read_text()
        assert tomllib.loads(expected) == _parse(config.read_bytes())
        leftover = sorted(str(p.relative_to(root)) for p in (root / "etc").rglob("*") if p.is_file())
        node_files = ["etc/containerd/certs.d/a.example/hosts.toml"] if own_bytes else []
        assert sorted(["etc/containerd/config.toml", *node_files]) == leftover
        if own_bytes is not None:
            assert own_bytes == own.read_bytes()


def test_failed_write_after_backup_keeps_the_original(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass whose config.toml write fails after the backup leaves the original in place (the
    failure is reported; config.json applies); the next pass edits it, and cleanup restores it."""
    from nodeagent.errors import HostFSError

    fs = HostFS(node)
    settings = _settings(node, auth=True)
    real_write = HostFS.write

    def failing(self: HostFS, host_path: str, data: bytes, *, mode: int = 0o600) -> bool:
        if host_path == "/etc/containerd/config.toml":
            raise HostFSError(host_path, "injected")
        return real_write(self, host_path, data, mode=mode)

    monkeypatch.setattr(HostFS, "write", failing)
    report = sync(fs, settings, _sources({"r.example": ("u", "p")}))  # containerd's failure is reported
    monkeypatch.setattr(HostFS, "write", real_write)
    assert ["/etc/containerd/config.toml"] == [p.source for p in report.conflicts]
    assert "r.example" in (node / "var/lib/kubelet/config.json").read_text()  # the kubelet's file applied
    assert V2 == (node / "etc/containerd/config.toml").read_text()
    sync(HostFS(node), settings, _sources({"r.example": ("u", "p")}))
    assert "r.example" in (node / "etc/containerd/config.toml").read_text()
    assert V2.encode() == (node / "var/lib/nodeagent/containerd-config.toml.orig").read_bytes()
    cleanup(HostFS(node), settings)
    assert V2 == (node / "etc/containerd/config.toml").read_text()


def test_crash_after_config_write_keeps_the_original_backup(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first pass cut short after config.toml was written (the final ledger write fails) leaves
    the backup as the original: the next pass recognises its own file by the digests the ledger
    recorded before writing, and cleanup restores the original byte for byte."""
    from nodeagent.errors import HostFSError

    settings = _settings(node, auth=True)
    real_write = HostFS.write
    ledger_writes: list[str] = []

    def failing(self: HostFS, host_path: str, data: bytes, *, mode: int = 0o600) -> bool:
        if host_path == settings.ledger_path:
            ledger_writes.append(host_path)
            if len(ledger_writes) == 2:  # the final ledger, after every target file
                raise HostFSError(host_path, "injected")
        return real_write(self, host_path, data, mode=mode)

    monkeypatch.setattr(HostFS, "write", failing)
    with pytest.raises(HostFSError):
        sync(HostFS(node), settings, _sources({"r.example": ("u", "p")}))
    monkeypatch.setattr(HostFS, "write", real_write)
    assert "r.example" in (node / "etc/containerd/config.toml").read_text()
    sync(HostFS(node), settings, _sources({"r.example": ("u", "p2")}))
    assert V2.encode() == (node / "var/lib/nodeagent/containerd-config.toml.orig").read_bytes()
    cleanup(HostFS(node), settings)
    assert V2 == (node / "etc/containerd/config.toml").read_text()


def test_auth_only_on_a_config_without_config_path(node: Path) -> None:
    """--containerd-auth with no registry settings on a config that reads no hosts.toml: only the
    credentials are written (nothing about hosts.toml is needed, nothing fails)."""
    (node / "etc/containerd/config.toml").write_text("version = 2\n")
    report = sync(HostFS(node), _settings(node, auth=True), _sources({"r.example": ("u", "p")}))
    assert ((), True) == (report.conflicts, report.containerd_auth_changed)
    assert {"auth": _basic("u", "p")} == (
        _parse((node / "etc/containerd/config.toml").read_bytes())["plugins"]["io.containerd.grpc.v1.cri"]["registry"][
            "configs"
        ]["r.example"]["auth"]
    )


def test_namespace_scoped_credentials_never_reach_containerd(node: Path) -> None:
    """A Secret scoped with nodeagent.io/namespaces serves only the credential provider: neither
    config.toml auth nor a hosts.toml Basic header gets it (containerd would serve every pod)."""
    import base64
    import dataclasses

    scoped = dataclasses.replace(
        parse_docker_config(docker_config({"basic.example": ("b", "SCOPED-only"), "harbor.example": ("h", "SCOPED-2")}),
                            source="scoped"), namespaces=("team-a",),
    )  # fmt: skip
    sync(HostFS(node), _settings(node, auth=True), [*_sources({"other.example": ("o", "op")}), scoped],
         registry_settings=_regs(REGS))  # fmt: skip
    written = b"".join(p.read_bytes() for p in node.rglob("*") if p.is_file())
    assert b"SCOPED" not in written
    assert base64.b64encode(b"b:SCOPED-only") not in written
