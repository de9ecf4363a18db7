"""Crash consistency: SIGKILL at random moments during large syncs never leaves a torn or lost file."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

from nodeagent.config import SyncSettings
from nodeagent.host.hostfs import TEMP_MARKER, HostFS
from nodeagent.model.credentials import parse_docker_config
from nodeagent.model.ledger import Ledger
from nodeagent.reconcile import sync
from tests.conftest import FIGURES, b64
from tests.real_parsers import kubelet_read_config

KILLS = 200
ENTRIES = 3000
FOREIGN = {"auths": {f"foreign-{i}.example.com": {"auth": b64(f"f:{i}")} for i in range(50)}, "credsStore": "x"}


def _source(generation: int) -> bytes:
    auths = {f"registry-{i}.example.com:5000/team": {"auth": b64(f"u{i}:pw-{generation}-{i}")} for i in range(ENTRIES)}
    return json.dumps({"auths": auths}).encode()


def _sync(root: Path, data: bytes) -> None:
    sync(HostFS(root), SyncSettings(host_root=str(root)), [parse_docker_config(data, source="gen")])


def _child(root: str, data: bytes) -> None:
    _sync(Path(root), data)
    os._exit(0)


def test_sigkill_during_sync(tmp_path: Path) -> None:
    """After every kill, config.json is the complete old or new file; a restart leaves no temp file
    and a ledger that matches the file."""
    sources = [_source(0), _source(1)]
    # The two complete results, computed in a sandbox of their own.
    reference = tmp_path / "reference"
    (reference / "var/lib/kubelet").mkdir(parents=True)
    (reference / "var/lib/kubelet/config.json").write_text(json.dumps(FOREIGN))
    expected = []
    for data in sources:
        _sync(reference, data)
        expected.append((reference / "var/lib/kubelet/config.json").read_bytes())

    root = tmp_path / "node"
    (root / "var/lib/kubelet").mkdir(parents=True)
    config = root / "var/lib/kubelet/config.json"
    config.write_text(json.dumps(FOREIGN))
    _sync(root, sources[0])
    start = time.perf_counter()
    _sync(root, sources[1])
    _sync(root, sources[0])
    duration = (time.perf_counter() - start) / 2

    rng = random.Random(20261123)
    ctx = multiprocessing.get_context("fork")
    outcomes = {"old": 0, "new": 0}
    current = 0
    for _ in range(KILLS):
        target = 1 - current
        proc = ctx.Process(target=_child, args=(str(root), sources[target]))
        proc.start()
        time.sleep(rng.uniform(0, duration * 1.8))
        if proc.pid is not None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        content = config.read_bytes()
        assert content in (expected[current], expected[target]), "torn or foreign content after SIGKILL"
        outcomes["new" if content == expected[target] else "old"] += 1
        kubelet_read_config(content)
        # Restart: a full pass to the target state.
        _sync(root, sources[target])
        assert expected[target] == config.read_bytes()
        assert [] == [n for n in os.listdir(config.parent) if TEMP_MARKER in n]
        ledger = Ledger.load((root / "var/lib/nodeagent/state.json").read_bytes(), source="ledger")
        owned = set(ledger.files["/var/lib/kubelet/config.json"].owned)
        managed = set(json.loads(config.read_bytes())["auths"]) - set(FOREIGN["auths"])
        assert managed == owned
        current = target
    FIGURES["SIGKILLs survived"] = (
        f"{KILLS} ({outcomes['old']} left the old file, {outcomes['new']} the new one; "
        f"{ENTRIES} registries + {len(FOREIGN['auths'])} foreign entries, pass ~{duration * 1000:.0f} ms)"
    )


CONTAINERD_KILLS = 60
_V2 = """# the node's own containerd config
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
"""
_OWN_HOSTS = b'server = "https://own.example"\n[host."https://own.example"]\n  skip_verify = true\n'


def _containerd_generation(generation: int) -> tuple[bytes, bytes]:
    """Generation 0 and 1 manage different (overlapping) registries with different passwords."""
    names = [f"r{i}.example.com" for i in range(generation * 20, 40 + generation * 20)]
    auths = {n: {"auth": b64(f"u:pw-{generation}-{n}")} for n in names}
    settings = "".join(
        f'[registries."{n}"]\nmirrors = ["https://mirror-{n}"]\n'
        + ('containerd_auth = "header"\n' if i % 4 == 0 else "")
        for i, n in enumerate(names)
    )
    return json.dumps({"auths": auths}).encode(), settings.encode()


def _containerd_sync(root: Path, generation: int) -> None:
    from nodeagent.config import ContainerdSettings
    from nodeagent.model.registry_settings import parse_registry_settings

    data, settings = _containerd_generation(generation)
    sync(
        HostFS(root),
        SyncSettings(host_root=str(root), containerd=ContainerdSettings(auth=True)),
        [parse_docker_config(data, source="gen")],
        registry_settings=parse_registry_settings(settings, source="registries.toml"),
    )


def _containerd_child(root: str, generation: int) -> None:
    _containerd_sync(Path(root), generation)
    os._exit(0)


def test_sigkill_during_containerd_sync(tmp_path: Path) -> None:
    """SIGKILL at random moments while hosts.toml files and config.toml credentials change: config.toml
    always parses, a restart converges with no temp file, the node's own hosts.toml is untouched, and
    cleanup still gives back containerd's config byte for byte."""
    import tomllib

    from nodeagent.reconcile import cleanup

    root = tmp_path / "node"
    (root / "var/lib/kubelet").mkdir(parents=True)
    (root / "etc/containerd/certs.d/own.example").mkdir(parents=True)
    (root / "etc/containerd/certs.d/own.example/hosts.toml").write_bytes(_OWN_HOSTS)
    config = root / "etc/containerd/config.toml"
    config.write_text(_V2)
    start = time.perf_counter()
    _containerd_sync(root, 0)
    duration = time.perf_counter() - start
    expected_dirs = {g: {f"r{i}.example.com" for i in range(g * 20, 40 + g * 20)} | {"own.example"} for g in (0, 1)}

    rng = random.Random(4)
    ctx = multiprocessing.get_context("fork")
    current = 0
    for _ in range(CONTAINERD_KILLS):
        target = 1 - current
        proc = ctx.Process(target=_containerd_child, args=(str(root), target))
        proc.start()
        time.sleep(rng.uniform(0, duration * 1.5))
        if proc.pid is not None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        tomllib.loads(config.read_text())  # never torn
        _containerd_sync(root, target)
        assert expected_dirs[target] == set(os.listdir(root / "etc/containerd/certs.d"))
        assert _OWN_HOSTS == (root / "etc/containerd/certs.d/own.example/hosts.toml").read_bytes()
        assert [] == [p for p in (root / "etc").rglob("*") if TEMP_MARKER in p.name]
        current = target
    cleanup(HostFS(root), SyncSettings(host_root=str(root)))
    assert _V2 == config.read_text()
    assert ["own.example"] == os.listdir(root / "etc/containerd/certs.d")
    FIGURES["containerd SIGKILLs survived"] = (
        f"{CONTAINERD_KILLS} (40 registries with hosts.toml + config.toml auth, pass ~{duration * 1000:.0f} ms); "
        "cleanup restored config.toml byte for byte"
    )
