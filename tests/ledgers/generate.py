"""Write ``v1-node.json``: a sample node synced by nodeagent with ledger version 1 (run once, at
commit "Ledger fixtures written by the version 1 code"), for tests/test_ledger.py's migration tests.

Each stage is a snapshot of the host tree ({path: [mode, base64]}): ``before`` (the node's own
files), ``synced`` (after a sync: ledger v1), ``resynced`` (after a second sync with changed
sources), ``cleaned`` (after cleanup of ``synced``), ``recleaned`` (after cleanup of ``resynced``).

    python tests/ledgers/generate.py
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nodeagent.config import ContainerdSettings, ProviderSettings, SyncSettings  # noqa: E402
from nodeagent.host.hostfs import HostFS  # noqa: E402
from nodeagent.model.credentials import parse_docker_config  # noqa: E402
from nodeagent.model.registry_settings import parse_registry_settings  # noqa: E402
from nodeagent.reconcile import cleanup, sync  # noqa: E402

PROVIDER_CONFIG = """apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: ecr-credential-provider
  matchImages: ["*.dkr.ecr.*.amazonaws.com"]
  defaultCacheDuration: 12h
  apiVersion: credentialprovider.kubelet.k8s.io/v1
"""
SECOND = {"auths": {"registry.example.com": {"username": "ci-puller", "password": "example-password-3"}}}


def settings(host: Path) -> SyncSettings:
    return SyncSettings(
        host_root=str(host),
        provider=ProviderSettings(
            bin_dir="/usr/libexec/kubernetes/credential-providers",
            config_path="/etc/kubernetes/credential-providers.yaml",
            credentials=True,
        ),
        containerd=ContainerdSettings(auth=True),
    )


def sources(stage: int) -> list[Any]:
    data = (ROOT / "examples/dockerconfigjson.json").read_bytes() if stage == 1 else json.dumps(SECOND).encode()
    return [parse_docker_config(data, source="secret:nodeagent/pull")]


def registries() -> Any:
    return parse_registry_settings((ROOT / "examples/registries.toml").read_bytes(), source="registries.toml")


def snapshot(host: Path) -> dict[str, list[Any]]:
    return {
        "/" + str(p.relative_to(host)): [p.stat().st_mode & 0o7777, base64.b64encode(p.read_bytes()).decode()]
        for p in sorted(host.rglob("*"))
        if p.is_file()
    }


def restore(host: Path, tree: dict[str, list[Any]]) -> None:
    for path, (mode, content) in tree.items():
        target = host / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(content))
        target.chmod(mode)


def main() -> None:
    work = Path(tempfile.mkdtemp())
    host = work / "host"
    shutil.copytree(ROOT / "examples/node", host)
    (host / "etc/kubernetes").mkdir(parents=True)
    (host / "etc/kubernetes/credential-providers.yaml").write_text(PROVIDER_CONFIG)
    stages = {"before": snapshot(host)}
    sync(HostFS(str(host)), settings(host), sources(1), registry_settings=registries())
    stages["synced"] = snapshot(host)
    sync(HostFS(str(host)), settings(host), sources(2), registry_settings=registries())
    stages["resynced"] = snapshot(host)
    cleanup(HostFS(str(host)), settings(host))
    stages["recleaned"] = snapshot(host)
    shutil.rmtree(host)
    host.mkdir()
    restore(host, stages["synced"])
    cleanup(HostFS(str(host)), settings(host))
    stages["cleaned"] = snapshot(host)
    out = Path(__file__).with_name("v1-node.json")
    out.write_text(json.dumps(stages, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
