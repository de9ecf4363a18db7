"""Regression tests for the red team's findings (issue 14), one or more per item, each on the
whole pass where the finding was about the whole pass. Each failed on the main branch before the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodeagent.config import ContainerdSettings, SyncSettings
from nodeagent.errors import InputError, SettingsError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import parse_docker_config, safe_key
from nodeagent.model.registries import InvalidRegistry, validate_registry_host
from nodeagent.model.registry_settings import parse_registry_settings
from nodeagent.reconcile import cleanup, sync
from nodeagent.targets.containerd import go_toml_v1_problems
from tests.conftest import b64, docker_config

V2_DOTTED = """version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
  configs."foreign.io".auth.username = "fu"
  configs."foreign.io".auth.password = "fp"
"""
V2_INLINE = """version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  configs = { "foreign.io" = { auth = { username = "fu", password = "fp" } } }
"""


def _containerd_node(host_root: Path, config: str) -> Path:
    path = host_root / "etc/containerd/config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config)
    return path


def _settings(host_root: Path, *, auth: bool = True, registry_config: str | None = None) -> SyncSettings:
    return SyncSettings(
        host_root=str(host_root),
        containerd=ContainerdSettings(config="/etc/containerd/config.toml", auth=auth),
        registry_config=registry_config,
    )


def _sources(entries: dict[str, Any]) -> list[Any]:
    return [parse_docker_config(json.dumps({"auths": entries}).encode(), source="secret")]


def _kubelet_auths(host_root: Path) -> dict[str, Any]:
    return dict(json.loads((host_root / "var/lib/kubelet/config.json").read_bytes())["auths"])


# -- 1. IPv6 hosts never reach containerd's TOML files -----------------------------------------------
def test_ipv6_secret_key_stays_out_of_config_toml(host_root: Path) -> None:
    """An IPv6 registry from a Secret reaches config.json, is skipped for config.toml with a warning,
    and config.toml gets no table containerd 1.6 would refuse."""
    config = _containerd_node(host_root, 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n')
    before = config.read_bytes()
    report = sync(
        HostFS(host_root),
        _settings(host_root),
        _sources({"[fd00::10]:5000": {"username": "u", "password": "p"}}),
    )
    assert (["[fd00::10]:5000"], before) == (list(_kubelet_auths(host_root)), config.read_bytes())
    assert ["[fd00::10]:5000"] == [p.key for p in report.warnings]


@pytest.mark.parametrize(
    "table",
    [
        '[registries."harbor.example"]\nmirrors = ["http://[::1]:5998"]\n',
        '[registries."[fd00::10]:5000"]\nskip_verify = true\n',
        f'[registries."{"a" * 63}.{"b" * 63}.{"c" * 63}.{"d" * 61}:5000"]\nskip_verify = true\n',
    ],
)
def test_registry_settings_refuse_hosts_containerd_cannot_carry(table: str) -> None:
    """IPv6 mirrors or registries (go-toml v1 table keys) and host names too long for a directory
    are rejected alone and named; the file still loads."""
    load = parse_registry_settings(table.encode() + b'[registries."ok.example"]\nskip_verify = true\n', source="r")
    assert (["ok.example"], 1) == (list(load.registries), len(load.rejected))


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('[host."http://[::1]:5998"]\ncapabilities = ["pull"]\n', True),
        ('[plugins.x.registry.configs."[fd00::10]:5000".auth]\nusername = "u"\n', True),
        ('[[a."x]y"]]\nb = 1\n', True),
        ('[host]\n"http://[::1]:5998" = { capabilities = ["pull"] }\n', False),
        ('host."http://[::1]:5998".capabilities = ["pull"]\n', False),
        ('[host."https://r.example"]\ncapabilities = ["pull"]\nclient = [["/a", "/b"]]\n', False),
    ],
)
def test_go_toml_v1_model(text: str, refused: bool) -> None:
    """The run-time model of containerd 1.6's parser refuses ']' or '[' in table headers only
    (tests/test_containerd_parsers.py compares it with the real parsers)."""
    assert refused == bool(go_toml_v1_problems(text))


# -- 2. config.toml with dotted keys or inline tables -------------------------------------------------
@pytest.mark.parametrize("config", [V2_DOTTED, V2_INLINE], ids=["dotted", "inline"])
def test_odd_config_toml_layout_is_refused_not_corrupted(host_root: Path, config: str) -> None:
    """A config.toml whose registry.configs uses dotted keys or an inline table is left byte for byte
    (a conflict names the file), config.json is still written, and a second pass does the same."""
    path = _containerd_node(host_root, config)
    for _ in range(2):
        report = sync(HostFS(host_root), _settings(host_root), _sources({"r.example": {"auth": b64("u:p")}}))
        assert config.encode() == path.read_bytes()
        assert ["/etc/containerd/config.toml"] == [p.source for p in report.conflicts]
        assert ["r.example"] == list(_kubelet_auths(host_root))
    cleanup(HostFS(host_root), _settings(host_root))
    assert config.encode() == path.read_bytes()


# -- 3. lone surrogates ---------------------------------------------------------------------------------
def test_surrogate_in_secret_rejects_that_entry_only(host_root: Path) -> None:
    """A password with a lone surrogate rejects that registry alone (named), the rest applies."""
    data = b'{"auths": {"bad.example": {"username": "u", "password": "x\\ud800"}, "ok.example": {"auth": "dTpw"}}}'
    result = parse_docker_config(data, source="secret")
    report = sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), [result])
    assert (["bad.example"], ["ok.example"]) == ([p.key for p in report.rejected], list(_kubelet_auths(host_root)))


def test_surrogate_in_node_file_is_read_as_go_reads_it(host_root: Path) -> None:
    """The node's own entry with a lone surrogate (which the kubelet reads as U+FFFD) is kept, as
    the kubelet reads it, and the agent's entry is added."""
    config = host_root / "var/lib/kubelet/config.json"
    config.write_bytes(b'{"auths": {"own.example": {"auth": "bjpv", "email": "x\\ud800y"}}}')
    sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), _sources({"r.example": {"auth": b64("u:p")}}))
    auths = _kubelet_auths(host_root)
    assert ("x\ufffdy", ["own.example", "r.example"]) == (auths["own.example"]["email"], sorted(auths))


# -- 4. huge integers, NaN, deep nesting ------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b'{"auths": {}, "n": 1' + b"1" * 5000 + b"}",
        b'{"auths": {"r.example": {"auth": "dTpw", "n": NaN}}}',
        b'{"auths": {}, "f": 1e999}',
        b'{"auths": {}, "x": ' + b"[" * 150 + b"]" * 150 + b"}",
    ],
    ids=["huge-int", "nan", "inf", "deep"],
)
def test_unreadable_numbers_reject_the_source(data: bytes) -> None:
    """Numbers Python cannot hold faithfully, and deep nesting, reject the source with a reason."""
    with pytest.raises(InputError):
        parse_docker_config(data, source="secret")


@pytest.mark.parametrize(
    "config", ["version = 2\nx = 1" + "1" * 5000 + "\n", "version = 2\nx = " + "[" * 5000 + "]" * 5000 + "\n"]
)
def test_unreadable_config_toml_leaves_containerd_alone(host_root: Path, config: str) -> None:
    """A node config.toml with a 5,000-digit integer or deep nesting is reported, left alone, and
    config.json is still written."""
    path = _containerd_node(host_root, config)
    report = sync(HostFS(host_root), _settings(host_root), _sources({"r.example": {"auth": b64("u:p")}}))
    assert (config.encode(), ["r.example"]) == (path.read_bytes(), list(_kubelet_auths(host_root)))
    assert ["/etc/containerd/config.toml"] == [p.source for p in report.conflicts]


def test_huge_int_in_registry_settings_is_a_settings_error() -> None:
    """A registries.toml with a 5,000-digit integer is a SettingsError (kept last good when reloaded)."""
    with pytest.raises(SettingsError):
        parse_registry_settings(b'[registries."r.example"]\nx = 1' + b"1" * 5000 + b"\n", source="r")


def test_huge_int_in_node_config_json_refuses_the_target(host_root: Path) -> None:
    """The node's own config.json with a 5,000-digit number: refused, byte for byte kept."""
    config = host_root / "var/lib/kubelet/config.json"
    config.write_bytes(b'{"auths": {}, "n": 1' + b"1" * 5000 + b"}")
    before = config.read_bytes()
    with pytest.raises(Exception) as caught:
        sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), _sources({"r.example": {"auth": "dTpw"}}))
    assert ("TargetError", before) == (type(caught.value).__name__, config.read_bytes())


# -- 14. credentials in a registry key's URL --------------------------------------------------------------
def test_userinfo_in_key_is_rejected_and_masked() -> None:
    """A key with user:password@ is rejected, and never shown with the password."""
    result = parse_docker_config(
        docker_config({"https://robot:s3cr3t-pw@registry.example.com": ("u", "p")}), source="s"
    )
    shown = [str(p) for p in result.rejected] + [safe_key(p.key) for p in result.rejected]
    assert (1, []) == (len(result.rejected), [s for s in shown if "s3cr3t-pw" in s])


# -- 15. IPv6 zone IDs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ['[fe80::1%"x]', "[fe80::1%eth0]:5000", "[fe80::1%25eth0]"])
def test_zone_ids_are_refused(host: str) -> None:
    """IPv6 zone IDs never pass the host validator (they would become directory names and TOML keys)."""
    with pytest.raises(InvalidRegistry):
        validate_registry_host(host)


# -- 7. the node's provider config keeps its mode and bytes; show masks env ----------------------------
PRIVATE_PROVIDER_CONFIG = """apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  # the node's own provider, with a secret in its env
  - name: own-plugin
    matchImages: ["own.example"]
    defaultCacheDuration: 1h
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - name: OWN_TOKEN
        value: s3cr3t-env-value
"""


def _provider_settings(host_root: Path, config: str) -> SyncSettings:
    from nodeagent.config import ProviderSettings

    return SyncSettings(
        host_root=str(host_root),
        provider=ProviderSettings(bin_dir="/usr/libexec/kubernetes/credential-providers", config_path=config),
    )


def test_private_provider_config_keeps_mode_and_bytes(host_root: Path) -> None:
    """install-provider into a 0600 config keeps it 0600; cleanup puts back the node's bytes exactly
    (comments included) and its mode."""
    path = host_root / "etc/kubernetes/credential-provider/config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(PRIVATE_PROVIDER_CONFIG)
    path.chmod(0o600)
    own = host_root / "usr/libexec/kubernetes/credential-providers/own-plugin"  # the node's own plugin
    own.parent.mkdir(parents=True)
    own.write_text("#!/bin/sh\nexit 1\n")
    own.chmod(0o755)
    settings = _provider_settings(host_root, "/etc/kubernetes/credential-provider/config.yaml")
    sync(HostFS(host_root), settings, [], hold_all=True)
    assert (0o600, "nodeagent-ecr-credential-provider") == (
        path.stat().st_mode & 0o777,
        __import__("yaml").safe_load(path.read_text())["providers"][-1]["name"],
    )
    cleanup(HostFS(host_root), settings)
    assert (PRIVATE_PROVIDER_CONFIG, 0o600) == (path.read_text(), path.stat().st_mode & 0o777)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_show_masks_provider_env_values(suffix: str) -> None:
    """show/dry-run render a provider config with env values masked, env names kept."""
    from nodeagent.model.decoding import loads_yaml
    from nodeagent.reconcile import redact_document

    document = loads_yaml(PRIVATE_PROVIDER_CONFIG)
    content = json.dumps(document).encode() if suffix == "json" else PRIVATE_PROVIDER_CONFIG.encode()
    shown = redact_document(content, path=f"/etc/kubernetes/credential-provider/config.{suffix}")
    assert ("s3cr3t-env-value" in shown, "OWN_TOKEN" in shown) == (False, True)


# -- 10. header values are masked --------------------------------------------------------------------
HEADERS_JSON = b'{"auths": {}, "HttpHeaders": {"Authorization": "Bearer s3cr3t-h", "X-T": "s3cr3t-x"}}'
HEADERS_TOML = b'[host."https://r".header]\nX-Token = "s3cr3t-x"\nAuthorization = "Basic s3cr3t-h"\n'


@pytest.mark.parametrize(
    ("path", "content"),
    [("/var/lib/kubelet/config.json", HEADERS_JSON), ("/etc/containerd/certs.d/r/hosts.toml", HEADERS_TOML)],
)
def test_every_header_value_is_masked(path: str, content: bytes) -> None:
    """Every value under HttpHeaders (config.json) or a header table (hosts.toml) is masked."""
    from nodeagent.reconcile import redact_document

    shown = redact_document(content, key=b"k", path=path)
    assert ([], 2) == ([w for w in ("s3cr3t-h", "s3cr3t-x") if w in shown], shown.count("<redacted:"))


# -- 16. the kubeadm preset on a fresh node -------------------------------------------------------------
def test_kubeadm_preset_on_a_fresh_node_creates_the_config_directory(host_root: Path) -> None:
    """The kubeadm preset's config path is a directory (kubelet >= 1.34): on a node where it does not
    exist yet, the agent creates it and writes its own file inside, never a file of that name."""
    from nodeagent.config import PROVIDER_PRESETS

    _, config = PROVIDER_PRESETS["kubeadm"]
    sync(HostFS(host_root), _provider_settings(host_root, config), [], hold_all=True)
    directory = host_root / config.lstrip("/")
    assert (True, ["nodeagent-ecr.yaml"]) == (directory.is_dir(), sorted(p.name for p in directory.iterdir()))


# -- 11. one containerd quirk never fails the whole pass ------------------------------------------------
@pytest.mark.parametrize(
    "quirk",
    ["symlinked-config", "relative-config-path", "dotdot-config-path"],
)
def test_containerd_quirk_leaves_containerd_alone_and_writes_config_json(
    host_root: Path, tmp_path: Path, quirk: str
) -> None:
    """A symlinked config.toml, or a relative or '..' config_path: containerd is reported and left
    alone; the kubelet's config.json is still written and the pass does not fail."""
    containerd = host_root / "etc/containerd"
    containerd.mkdir(parents=True)
    config_path = {"relative-config-path": "certs.d", "dotdot-config-path": "/etc/containerd/../../tmp"}.get(
        quirk, "/etc/containerd/certs.d"
    )
    text = f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{config_path}"\n'
    if quirk == "symlinked-config":
        real = tmp_path / "real-config.toml"
        real.write_text(text)
        (containerd / "config.toml").symlink_to(real)
    else:
        (containerd / "config.toml").write_text(text)
    registries = parse_registry_settings(b'[registries."r.example"]\nskip_verify = true\n', source="r")
    report = sync(
        HostFS(host_root),
        _settings(host_root, auth=False),
        _sources({"r.example": {"auth": b64("u:p")}}),
        registry_settings=registries,
    )
    assert (["r.example"], ["/etc/containerd/config.toml"]) == (
        list(_kubelet_auths(host_root)),
        [p.source for p in report.conflicts],
    )
    assert not (host_root / "tmp").exists() and not (containerd / "certs.d").exists()


def test_decode_errors_never_show_user_info_of_a_key() -> None:
    """A decoding error located under a key with user:password@ names the key without the password."""
    data = b'{"auths": {"https://robot:s3cr3t-pw@r.example": {"auth": "x\\ud800"}}}'
    from nodeagent.model.decoding import DecodeError, loads_json

    with pytest.raises(DecodeError) as caught:
        loads_json(data)
    assert ("s3cr3t-pw" in str(caught.value), "r.example" in str(caught.value)) == (False, True)
