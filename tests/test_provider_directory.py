"""The kubelet's provider config as a whole, judged by the kubelet's own loader (k8s 1.34.4,
``kubelet-credentials check-provider-config DIR --bin-dir BIN``): generated directories of
provider files (the node's and the agent's, JSON and YAML, names colliding across files, plugin
binaries present or not). After any sync, install or cleanup, the kubelet loads the directory, or
the agent refused and left the kubelet's files as they were; and the agent's model of the loader
(used by every plan and by doctor) agrees with the kubelet on every directory.

The bug this class covers: the agent wrote its own file into a directory without reading the
others, so a node file naming one of our providers made the kubelet exit at start (duplicate
provider name); and cleanup emptied a directory the kubelet needs at least one provider in."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import ProviderSettings, SyncSettings
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import parse_docker_config
from nodeagent.reconcile import cleanup, sync
from nodeagent.targets.provider import PLUGIN_NAME, STATIC_PLUGIN_NAME, kubelet_view, plugin_bytes
from tests.conftest import FIGURES, docker_config
from tests.real_parsers import kubelet_check_provider_config

CONFIG_DIR = "/etc/kubernetes/credential-providers"
BIN_DIR = "/usr/local/libexec/kubelet-credential-providers"
FOREIGN = ["ecr-credential-provider", "gcp-provider", "acr-provider"]
NAMES = [*FOREIGN, STATIC_PLUGIN_NAME, PLUGIN_NAME]
FILE_NAMES = ["00-node.yaml", "10-node.json", "50-node.yml", "nodeagent-ecr.yaml", "zz-node.yaml", "README.txt"]
JUDGED: dict[str, int] = {"directories": 0, "refused by the kubelet at start": 0, "plans held": 0}


def _provider(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "matchImages": ["registry.example.com"],
        "defaultCacheDuration": "1m",
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
    }


@st.composite
def node_directories(draw: st.DrawFn) -> tuple[dict[str, bytes], set[str]]:
    """Files of the node's provider directory, and the plugin binaries the node has."""
    files: dict[str, bytes] = {}
    foreign = iter(draw(st.permutations(FOREIGN)))
    for name in draw(st.lists(st.sampled_from(FILE_NAMES), max_size=3, unique=True)):
        # the node's own providers, each in one file; now and then a name in two files, or ours
        names = [next(foreign)]
        if draw(st.integers(0, 3)) == 0:
            names.append(draw(st.sampled_from(NAMES)))
        providers = [_provider(n) for n in dict.fromkeys(names)]
        document: Any = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig"}
        document["providers"] = providers
        if draw(st.integers(0, 9)) == 0:
            document = {"providers": providers}  # no apiVersion/kind: the kubelet cannot decode it
        text = json.dumps(document) if name.endswith(".json") else yaml.safe_dump(document)
        files[name] = text.encode()
    # The node's own plugins are there, mostly (a missing one is a node the kubelet refuses already).
    binaries = {name for name in FOREIGN if draw(st.integers(0, 4))}
    return files, binaries


def _lay_out(root: Path, files: dict[str, bytes], binaries: set[str]) -> tuple[Path, Path]:
    directory, bin_dir = root / CONFIG_DIR.lstrip("/"), root / BIN_DIR.lstrip("/")
    directory.mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    (root / "var/lib/kubelet").mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    for name in binaries:
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    return directory, bin_dir


def _snapshot(directory: Path, bin_dir: Path) -> dict[str, bytes]:
    """The kubelet's provider files: the config directory and the plugin binaries."""
    return {str(p): p.read_bytes() for d in (directory, bin_dir) for p in sorted(d.iterdir()) if p.is_file()}


def _kubelet_loads(directory: Path, bin_dir: Path) -> tuple[bool, str]:
    result = kubelet_check_provider_config(directory, bin_dir)
    return result.returncode == 0, result.stderr.strip()


def _model_loads(root: Path) -> bool:
    return kubelet_view(HostFS(root), config_path=CONFIG_DIR, bin_dir=BIN_DIR) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    node=node_directories(),
    ecr=st.booleans(),
)
def test_after_sync_and_cleanup_the_kubelet_starts_or_nothing_changed(
    tmp_path: Path, node: tuple[dict[str, bytes], set[str]], ecr: bool
) -> None:
    """For any directory: the model agrees with the kubelet; install-provider, sync and cleanup
    each leave a directory the kubelet loads, or leave the kubelet's files as they were."""
    files, binaries = node
    root = Path(tempfile.mkdtemp(dir=tmp_path)) / "host"
    directory, bin_dir = _lay_out(root, files, binaries)
    provider = ProviderSettings(bin_dir=BIN_DIR, config_path=CONFIG_DIR, ecr=ecr, credentials=True)
    settings_ = SyncSettings(host_root=str(root), provider=provider)
    source = parse_docker_config(docker_config({"registry.example.com": ("u", "p")}), source="s")
    JUDGED["directories"] += 1
    for step in ("before", "install", "sync", "cleanup"):
        before = _snapshot(directory, bin_dir)
        if step == "install":  # install-provider: no sources, nothing of the agent's taken away
            report = sync(HostFS(root), settings_, [], hold_all=True)
        elif step == "sync":
            report = sync(HostFS(root), settings_, [source])
        elif step == "cleanup":
            report = cleanup(HostFS(root), settings_)
        loads, error = _kubelet_loads(directory, bin_dir)
        assert loads == _model_loads(root), (step, error)
        if step == "before":
            JUDGED["refused by the kubelet at start"] += not loads
            continue
        after = _snapshot(directory, bin_dir)
        assert loads or before == after, (step, error, sorted(after))
        JUDGED["plans held"] += any("kubelet" in p.reason for p in [*report.conflicts, *report.warnings])
    FIGURES["provider directories judged by the kubelet's loader"] = ", ".join(f"{k} {v}" for k, v in JUDGED.items())


def test_a_node_file_naming_our_provider_is_not_duplicated(tmp_path: Path) -> None:
    """A node file that already names nodeagent-credential-provider: the agent does not add its
    own (the kubelet would exit: duplicate provider name), names that file, and the kubelet loads."""
    root = tmp_path / "host"
    document = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig"}
    node_file = yaml.safe_dump({**document, "providers": [_provider(STATIC_PLUGIN_NAME)]}).encode()
    directory, bin_dir = _lay_out(root, {"00-node.yaml": node_file}, set())
    (bin_dir / STATIC_PLUGIN_NAME).write_bytes(plugin_bytes())  # as a node image would carry it
    (bin_dir / STATIC_PLUGIN_NAME).chmod(0o755)
    provider = ProviderSettings(bin_dir=BIN_DIR, config_path=CONFIG_DIR, ecr=False, credentials=True)
    source = parse_docker_config(docker_config({"registry.example.com": ("u", "p")}), source="s")
    report = sync(HostFS(root), SyncSettings(host_root=str(root), provider=provider), [source])
    assert ["00-node.yaml"] == sorted(p.name for p in directory.iterdir())
    assert any("00-node.yaml" in c.reason and "duplicate" in c.reason for c in report.conflicts)
    assert (root / "var/lib/nodeagent/provider-credentials.json").exists()  # the credentials still flow
    assert _kubelet_loads(directory, bin_dir)[0]


def test_moving_the_config_from_a_file_to_its_directory(tmp_path: Path) -> None:
    """providerConfig moved from a file inside the directory to the directory itself: our entries
    leave the old file, our own file takes them, and the kubelet loads the directory."""
    root = tmp_path / "host"
    document = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig"}
    node_file = yaml.safe_dump({**document, "providers": [_provider("ecr-credential-provider")]}).encode()
    directory, bin_dir = _lay_out(root, {"config.yaml": node_file}, {"ecr-credential-provider"})
    source = parse_docker_config(docker_config({"registry.example.com": ("u", "p")}), source="s")
    for config_path in (f"{CONFIG_DIR}/config.yaml", CONFIG_DIR):
        provider = ProviderSettings(bin_dir=BIN_DIR, config_path=config_path, ecr=False, credentials=True)
        report = sync(HostFS(root), SyncSettings(host_root=str(root), provider=provider), [source])
        assert [] == list(report.conflicts)
    loads, error = _kubelet_loads(directory, bin_dir)
    assert loads, error
    assert node_file == (directory / "config.yaml").read_bytes()
    assert [STATIC_PLUGIN_NAME] == [
        p["name"] for p in yaml.safe_load((directory / "nodeagent-ecr.yaml").read_text())["providers"]
    ]
