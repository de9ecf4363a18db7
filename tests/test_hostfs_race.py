"""Directories are opened relative to verified parents, never re-resolved by path: a directory that
is (or becomes, mid-pass) a symlink is refused, and nothing outside the agent's files is touched.
Also: the agent tightens only directories it created (or empty ones)."""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from pathlib import Path

import pytest

from nodeagent.config import ContainerdSettings, SyncSettings
from nodeagent.errors import HostFSError, NodeagentError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import parse_docker_config
from nodeagent.model.registry_settings import parse_registry_settings
from nodeagent.reconcile import cleanup, sync
from tests.conftest import FIGURES, docker_config
from tests.tls import make_ca_and_server

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ca.crt").write_bytes(b"the node's own file elsewhere\n")
    (outside / "hosts.toml").write_bytes(b"# someone else's\n")
    return outside, {p.name: p.read_bytes() for p in outside.iterdir()}


@pytest.mark.parametrize("component", ["etc/containerd/certs.d", "etc/containerd/certs.d/r.example"])
def test_a_symlinked_directory_is_refused_everywhere(host_root: Path, tmp_path: Path, component: str) -> None:
    """Every hostfs operation under a directory that is a symlink refuses it and leaves the link's
    target as it was."""
    outside, before = _outside(tmp_path)
    link = host_root / component
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    fs = HostFS(host_root)
    target = "/etc/containerd/certs.d/r.example/ca.crt"
    operations = [
        lambda: fs.write(target, b"x"),
        lambda: fs.read(target),
        lambda: fs.remove(target),
        lambda: fs.mode(target),
        lambda: fs.ensure_dir("/etc/containerd/certs.d/r.example/sub"),
    ]
    refused = 0
    for operation in operations:
        with pytest.raises(HostFSError):
            operation()
        refused += 1
    assert (5, False, False) == (
        refused,
        fs.is_dir("/etc/containerd/certs.d/r.example"),
        fs.remove_empty_dir("/etc/containerd/certs.d/r.example"),
    )
    assert before == {p.name: p.read_bytes() for p in outside.iterdir()}


def test_directory_swapped_for_a_symlink_during_passes(host_root: Path, tmp_path: Path) -> None:
    """While another process swaps certs.d/r.example with a symlink to a directory outside
    (renameat2 RENAME_EXCHANGE, over and over), sync and cleanup passes never write, replace or
    remove anything in that directory."""
    outside, before = _outside(tmp_path)
    (host_root / "etc/containerd").mkdir(parents=True)
    (host_root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
    )
    (tmp_path / "pki").mkdir()
    ca, _, _ = make_ca_and_server(tmp_path / "pki")
    registries = parse_registry_settings(f'[registries."r.example"]\nca = "{ca}"\n'.encode(), source="r")
    settings = SyncSettings(
        host_root=str(host_root), containerd=ContainerdSettings(config="/etc/containerd/config.toml")
    )
    sources = [parse_docker_config(docker_config({"r.example": ("u", "p")}), source="s")]
    fs = HostFS(host_root)
    sync(fs, settings, sources, registry_settings=registries)
    real_dir = host_root / "etc/containerd/certs.d/r.example"
    parked = tmp_path / "parked-link"
    parked.symlink_to(outside)
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            try:
                _exchange(real_dir, parked)
                swaps[0] += 1
            except FileNotFoundError:
                pass  # cleanup removed the directory; the next sync brings it back

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    passes = 0
    try:
        for i in range(150):
            try:
                if i % 3 == 2:
                    cleanup(HostFS(host_root), settings)
                else:
                    sync(HostFS(host_root), settings, sources, registry_settings=registries)
            except NodeagentError:
                pass  # refused mid-swap: the point is what happened outside
            passes += 1
    finally:
        stop.set()
        thread.join()
    FIGURES["symlink swaps during passes"] = f"{passes} passes against {swaps[0]} directory/symlink exchanges"
    assert before == {p.name: p.read_bytes() for p in outside.iterdir()}


def test_only_directories_the_agent_created_are_tightened(host_root: Path) -> None:
    """A private directory the agent creates is 0700; an existing one with content keeps its mode
    (pointed at /etc, the agent must not make it 0700); an existing empty one (a fresh hostPath
    volume) is tightened."""
    fs = HostFS(host_root)
    shared = host_root / "etc"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    (shared / "hostname").write_text("node\n")
    fresh = host_root / "var/lib/nodeagent"
    fresh.mkdir(parents=True)
    fresh.chmod(0o755)
    fs.ensure_dir("/etc", mode=0o700, private=True)
    fs.ensure_dir("/var/lib/nodeagent", mode=0o700, private=True)
    fs.ensure_dir("/run/nodeagent", mode=0o700, private=True)
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (shared, fresh, host_root / "run/nodeagent")]
    assert [0o755, 0o700, 0o700] == modes


def test_state_dir_pointed_at_a_shared_directory_keeps_its_mode(host_root: Path) -> None:
    """sync --state-dir /etc writes its ledger there without making /etc 0700."""
    shared = host_root / "etc"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "hostname").write_text("node\n")
    settings = SyncSettings(host_root=str(host_root), state_dir="/etc")
    sync(HostFS(host_root), settings, [parse_docker_config(docker_config({"r.example": ("u", "p")}), source="s")])
    assert (0o755, True) == (stat.S_IMODE(shared.stat().st_mode), (shared / "state.json").exists())


def test_parents_of_a_private_directory_are_not_made_private(host_root: Path) -> None:
    """Creating a private directory creates its missing parents 0755, as os.makedirs does."""
    HostFS(host_root).ensure_dir("/run/nodeagent/sub", mode=0o700, private=True)
    modes = [stat.S_IMODE((host_root / p).stat().st_mode) for p in ("run", "run/nodeagent", "run/nodeagent/sub")]
    assert [0o755, 0o755, 0o700] == modes
