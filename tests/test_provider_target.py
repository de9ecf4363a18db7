"""The credential-provider target: plugin file and CredentialProviderConfig merge, install and cleanup."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.config import ProviderSettings, SyncSettings
from nodeagent.errors import TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.reconcile import cleanup, sync
from nodeagent.targets.provider import PLUGIN_NAME, ecr_entry, match_images, plugin_bytes, render_provider_config

ARGS = ["--state-dir", "/var/lib/nodeagent", "--socket", "/run/nodeagent/agent.sock"]
AWS_PROVIDER = {
    "name": "ecr-credential-provider",
    "matchImages": ["*.dkr.ecr.*.amazonaws.com"],
    "defaultCacheDuration": "12h",
    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
}


def _config(path: str, current: Any, fmt: str = "yaml") -> tuple[Any, Any]:
    raw = None if current is None else (json.dumps(current) if fmt == "json" else yaml.safe_dump(current)).encode()
    render = render_provider_config(entries=[ecr_entry(ARGS)], current=raw, record=None, path=path)
    assert render.content is not None
    loaded = json.loads(render.content) if fmt == "json" else yaml.safe_load(render.content)
    return loaded, render


def test_new_config_has_our_provider() -> None:
    """A fresh config is a valid CredentialProviderConfig with our provider, v1 protocol and 6h default."""
    doc, _ = _config("/etc/kubernetes/credential-providers.yaml", None)
    assert ("kubelet.config.k8s.io/v1", "CredentialProviderConfig") == (doc["apiVersion"], doc["kind"])
    (ours,) = doc["providers"]
    assert (PLUGIN_NAME, "credentialprovider.kubelet.k8s.io/v1", "6h", ARGS) == (
        ours["name"],
        ours["apiVersion"],
        ours["defaultCacheDuration"],
        ours["args"],
    )


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_other_providers_kept_and_restored(fmt: str) -> None:
    """Existing providers (EKS's own) stay; removal gives back the original document."""
    original = {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [AWS_PROVIDER],
    }
    path = f"/etc/eks/image-credential-provider/config.{fmt}"
    doc, render = _config(path, original, fmt)
    assert ["ecr-credential-provider", PLUGIN_NAME] == [p["name"] for p in doc["providers"]]
    removed = render_provider_config(entries=None, current=render.content, record=render.record, path=path)
    assert removed.content is not None
    assert original == (json.loads(removed.content) if fmt == "json" else yaml.safe_load(removed.content))


def test_foreign_provider_with_our_name_parked() -> None:
    """A provider already named like ours is parked in the ledger and restored on removal."""
    theirs = {**AWS_PROVIDER, "name": PLUGIN_NAME}
    original = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig", "providers": [theirs]}
    doc, render = _config("/c.yaml", original)
    assert [ARGS] == [p.get("args") for p in doc["providers"]]
    assert theirs == render.record.originals[PLUGIN_NAME]
    removed = render_provider_config(entries=None, current=render.content, record=render.record, path="/c.yaml")
    assert removed.content is not None and original == yaml.safe_load(removed.content)


@pytest.mark.parametrize("current", [b"providers: [", b"- a list", b'{"kind": "Pod"}', b'{"providers": {}}'])
def test_unusable_config_refused(current: bytes) -> None:
    """A config that is not a CredentialProviderConfig is never overwritten."""
    with pytest.raises(TargetError):
        render_provider_config(entries=[ecr_entry(ARGS)], current=current, record=None, path="/c.yaml")


def test_match_images_cover_every_host_form() -> None:
    """matchImages has a glob for each host form the plugin recognises (same number of labels)."""
    from nodeagent.ecr.plugin import parse_ecr_host

    hosts = [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
        "123456789012.dkr-ecr.us-east-1.on.aws",
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
        "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
        "public.ecr.aws",
        "ecr-public.aws.com",
    ]
    import fnmatch

    for host in hosts:
        assert parse_ecr_host(host) is not None
        labels = host.split(".")
        assert any(
            len(p.split(".")) == len(labels)
            and all(fnmatch.fnmatchcase(h, g) for h, g in zip(labels, p.split("."), strict=True))
            for p in match_images()
        ), host


def _settings(host_root: Path, config: str = "/etc/eks/image-credential-provider/config.json") -> SyncSettings:
    provider = ProviderSettings(bin_dir="/etc/eks/image-credential-provider", config_path=config)
    return SyncSettings(host_root=str(host_root), provider=provider)


def test_install_and_cleanup_on_a_node(host_root: Path) -> None:
    """Install writes the plugin (0755) and merges the config; cleanup leaves the node as it was."""
    config = host_root / "etc/eks/image-credential-provider/config.json"
    config.parent.mkdir(parents=True)
    original = {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [AWS_PROVIDER],
    }
    config.write_text(json.dumps(original))
    (config.parent / "ecr-credential-provider").write_text("#!/bin/sh\nexit 1\n")  # the node's own plugin
    (config.parent / "ecr-credential-provider").chmod(0o755)
    settings = _settings(host_root)
    sync(HostFS(host_root), settings, [], hold_all=True)
    plugin = host_root / "etc/eks/image-credential-provider" / PLUGIN_NAME
    assert plugin_bytes() == plugin.read_bytes()
    assert 0o755 == stat.S_IMODE(plugin.stat().st_mode)
    assert [AWS_PROVIDER["name"], PLUGIN_NAME] == [p["name"] for p in json.loads(config.read_text())["providers"]]
    fs = HostFS(host_root)
    sync(fs, settings, [], hold_all=True)
    assert 0 == fs.stats.writes
    sync(HostFS(host_root), SyncSettings(host_root=str(host_root)), [])  # a plain sync leaves it installed
    assert plugin.exists()
    cleanup(HostFS(host_root), settings)
    assert not plugin.exists()
    assert original == json.loads(config.read_text())


def test_config_directory_gets_a_file_of_its_own(host_root: Path) -> None:
    """When the configured path is a directory (kubelet >= 1.34), the agent adds its own file there."""
    (host_root / "etc/kubernetes/credential-providers").mkdir(parents=True)
    settings = _settings(host_root, "/etc/kubernetes/credential-providers")
    sync(HostFS(host_root), settings, [], hold_all=True)
    own = host_root / "etc/kubernetes/credential-providers/nodeagent-ecr.yaml"
    assert [PLUGIN_NAME] == [p["name"] for p in yaml.safe_load(own.read_text())["providers"]]
    report = cleanup(HostFS(host_root), settings)
    assert own.exists()  # the only provider: without it the kubelet would not start (an empty directory)
    assert ["/etc/kubernetes/credential-providers"] == [w.source for w in report.warnings]


def test_no_provider_config_the_kubelet_would_refuse(host_root: Path) -> None:
    """A node config whose own plugin binary is missing (the kubelet would not start with it):
    the agent leaves the config and its plugin as they are and names why."""
    config = host_root / "etc/eks/image-credential-provider/config.json"
    config.parent.mkdir(parents=True)
    document = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig"}
    config.write_text(json.dumps({**document, "providers": [AWS_PROVIDER]}))
    before = config.read_bytes()
    report = sync(HostFS(host_root), _settings(host_root), [], hold_all=True)
    assert before == config.read_bytes()
    assert not (config.parent / PLUGIN_NAME).exists()
    assert ["/etc/eks/image-credential-provider/config.json"] == [c.source for c in report.conflicts]


def test_foreign_plugin_file_not_overwritten(host_root: Path) -> None:
    """A different file already at the plugin's path is not replaced."""
    path = host_root / "etc/eks/image-credential-provider" / PLUGIN_NAME
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\necho someone else's\n")
    with pytest.raises(TargetError):
        sync(HostFS(host_root), _settings(host_root), [], hold_all=True)
    assert "someone else's" in path.read_text()


@pytest.mark.parametrize(
    "plant",
    [
        "etc/eks/image-credential-provider/nodeagent-ecr-credential-provider",
        "etc/eks/image-credential-provider/config.json",
    ],
)
def test_symlink_at_plugin_or_config_refused(host_root: Path, tmp_path: Path, plant: str) -> None:
    """A symlink planted at the plugin or its config is never followed; the target stays untouched."""
    from nodeagent.errors import SymlinkRefused

    outside = tmp_path / "outside"
    outside.write_text("precious")
    path = host_root / plant
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(outside)
    with pytest.raises(SymlinkRefused):
        sync(HostFS(host_root), _settings(host_root), [], hold_all=True)
    assert "precious" == outside.read_text()


def test_the_settings_name_the_files_the_target_trusts() -> None:
    """The paths ProviderSettings derives (config.py cannot import the target) carry the names the
    provider target writes and trusts in the ledger: pinned here, the one place both are read."""
    from nodeagent.config import ProviderSettings
    from nodeagent.model.ledger import PluginRecord, ProviderCredentialsRecord
    from nodeagent.targets.provider import (
        CREDENTIALS_FILE,
        SCOPED_PLUGIN_NAME,
        STATIC_PLUGIN_NAME,
        ProviderTarget,
    )

    settings = ProviderSettings(bin_dir="/b", config_path="/c")
    target = ProviderTarget(settings, backup_path="/var/lib/nodeagent/x")
    assert (f"/b/{PLUGIN_NAME}", f"/b/{STATIC_PLUGIN_NAME}", f"/b/{SCOPED_PLUGIN_NAME}") == (
        settings.plugin_path,
        settings.static_plugin_path,
        settings.scoped_plugin_path,
    )
    assert settings.credentials_file.endswith("/" + CREDENTIALS_FILE)
    plugins = (settings.plugin_path, settings.static_plugin_path, settings.scoped_plugin_path)
    assert all(target.trusts(p, PluginRecord()) for p in plugins)
    assert target.trusts(settings.credentials_file, ProviderCredentialsRecord())
