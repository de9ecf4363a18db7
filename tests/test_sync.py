"""One reconcile pass against a sandbox host root: idempotent, reversible, crash-safe."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import SyncSettings
from nodeagent.errors import HostFSError, TargetError
from nodeagent.host.hostfs import HostFS
from nodeagent.model.credentials import parse_docker_config
from nodeagent.reconcile import cleanup, diff_changes, sync
from tests.conftest import b64, docker_config
from tests.real_parsers import kubelet_read_config

CONFIG = "var/lib/kubelet/config.json"
LEDGER = "var/lib/nodeagent/state.json"


def _source(entries: dict[str, tuple[str, str]], name: str = "src") -> Any:
    return parse_docker_config(docker_config(entries), source=name)


def _read(host_root: Path, rel: str) -> Any:
    return json.loads((host_root / rel).read_bytes())


def test_sync_twice_second_writes_nothing(settings: SyncSettings, host_root: Path) -> None:
    """The second pass over unchanged input performs no write at all."""
    sources = [_source({"r.example.com": ("u", "p")})]
    first = HostFS(host_root)
    sync(first, settings, sources)
    assert 1 == first.stats.by_path["/var/lib/kubelet/config.json"]
    second = HostFS(host_root)
    report = sync(second, settings, sources)
    assert (0, []) == (second.stats.writes, report.written)


def test_files_are_private(settings: SyncSettings, host_root: Path) -> None:
    """config.json and the ledger are 0600 and the state dir 0700."""
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    assert 0o600 == stat.S_IMODE((host_root / CONFIG).stat().st_mode)
    assert 0o600 == stat.S_IMODE((host_root / LEDGER).stat().st_mode)
    assert 0o700 == stat.S_IMODE((host_root / "var/lib/nodeagent").stat().st_mode)


def test_sync_then_cleanup_restores_original(settings: SyncSettings, host_root: Path) -> None:
    """After sync and cleanup the node's own config.json is back, foreign entries intact."""
    original = {
        "auths": {"r.example.com": {"auth": b64("node:own")}, "keep.example.com": {"auth": b64("k:k")}},
        "credsStore": "desktop",
    }
    (host_root / CONFIG).write_text(json.dumps(original))
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p"), "new.example.com": ("n", "n")})])
    assert {"r.example.com", "keep.example.com", "new.example.com"} == set(_read(host_root, CONFIG)["auths"])
    cleanup(HostFS(host_root), settings)
    assert original == _read(host_root, CONFIG)
    assert not (host_root / LEDGER).exists()


def test_cleanup_removes_file_it_created(settings: SyncSettings, host_root: Path) -> None:
    """A config.json the agent created is gone after cleanup."""
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    cleanup(HostFS(host_root), settings)
    assert not (host_root / CONFIG).exists()


def test_later_source_wins(settings: SyncSettings, host_root: Path) -> None:
    """With two sources, the later one's credential is what the kubelet loads."""
    sync(
        HostFS(host_root),
        settings,
        [_source({"r.example.com": ("a", "1")}, "one"), _source({"https://r.example.com": ("b", "2")}, "two")],
    )
    creds = kubelet_read_config((host_root / CONFIG).read_bytes())
    assert [("https://r.example.com", "b", "2")] == [(c.key, c.username, c.password) for c in creds]


def test_rejected_entry_keeps_node_entry(settings: SyncSettings, host_root: Path) -> None:
    """A registry whose entry turns bad keeps its last good credential on the node."""
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p"), "s.example.com": ("u", "p")})])
    broken = json.dumps({"auths": {"r.example.com": {"auth": "!!bad"}}}).encode()
    report = sync(HostFS(host_root), settings, [parse_docker_config(broken, source="src")])
    assert ["r.example.com"] == [p.key for p in report.rejected]
    assert {"r.example.com"} == set(_read(host_root, CONFIG)["auths"])
    assert ("u", "p") == (lambda c: (c.username, c.password))(kubelet_read_config((host_root / CONFIG).read_bytes())[0])


def test_foreign_breakage_blocks_write(settings: SyncSettings, host_root: Path) -> None:
    """When a foreign entry would make the kubelet reject the file, nothing is written."""
    original = json.dumps({"auths": {"broken.example.com": {"auth": "%%%"}}}).encode()
    (host_root / CONFIG).write_bytes(original)
    with pytest.raises(TargetError):
        sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    assert original == (host_root / CONFIG).read_bytes()
    assert not (host_root / LEDGER).exists()


def test_dry_run_writes_nothing_and_diff_is_redacted(settings: SyncSettings, host_root: Path) -> None:
    """A dry run plans the change, writes nothing, and its diff holds no secret."""
    dry = dataclasses.replace(settings, dry_run=True)
    fs = HostFS(host_root)
    report = sync(fs, dry, [_source({"r.example.com": ("u", "SENTINELPW")})])
    text = diff_changes(report.changes)
    assert 0 == fs.stats.writes
    assert not (host_root / CONFIG).exists()
    assert "r.example.com" in text
    assert "SENTINELPW" not in text and b64("u:SENTINELPW") not in text


def test_crash_after_ledger_intent_loses_nothing(
    settings: SyncSettings, host_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the target write fails after the ledger intent, a later pass and cleanup still restore the node."""
    original = {"auths": {"r.example.com": {"auth": b64("node:own")}}}
    (host_root / CONFIG).write_text(json.dumps(original))
    real_write = HostFS.write

    def failing(self: HostFS, host_path: str, data: bytes, *, mode: int = 0o600) -> bool:
        if host_path.endswith("config.json"):
            raise HostFSError(host_path, "injected")
        return real_write(self, host_path, data, mode=mode)

    monkeypatch.setattr(HostFS, "write", failing)
    with pytest.raises(HostFSError):
        sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    monkeypatch.setattr(HostFS, "write", real_write)
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    cleanup(HostFS(host_root), settings)
    assert original == _read(host_root, CONFIG)


def test_custom_kubelet_root_dir(host_root: Path) -> None:
    """--kubelet-root-dir moves the target (e.g. k3s/RKE2 style layouts)."""
    custom = SyncSettings(host_root=str(host_root), kubelet_root_dir="/data/kubelet")
    sync(HostFS(host_root), custom, [_source({"r.example.com": ("u", "p")})])
    assert (host_root / "data/kubelet/config.json").exists()


_key = st.sampled_from(["a.example.com", "b.example.com", "https://c.example.com/v1/", "d.example.com:5000/x"])
_entries = st.dictionaries(_key, st.tuples(st.sampled_from(["u", "v"]), st.sampled_from(["p1", "p2"])), max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(foreign=_entries, steps=st.lists(_entries, min_size=1, max_size=4))
def test_any_sequence_of_syncs_then_cleanup_restores(
    host_root: Path,
    settings: SyncSettings,
    foreign: dict[str, tuple[str, str]],
    steps: list[dict[str, tuple[str, str]]],
) -> None:
    """Any sequence of syncs followed by cleanup gives back the node's original file, byte-for-meaning."""
    path = host_root / CONFIG
    original = json.loads(docker_config(foreign))
    path.write_text(json.dumps(original))
    for ledger in (host_root / LEDGER,):
        if ledger.exists():
            os.unlink(ledger)
    for step in steps:
        sync(HostFS(host_root), settings, [_source(step)])
        kubelet_read_config(path.read_bytes())  # the kubelet accepts every intermediate file
        fs = HostFS(host_root)
        sync(fs, settings, [_source(step)])
        assert 0 == fs.stats.writes
    cleanup(HostFS(host_root), settings)
    assert original == json.loads(path.read_bytes())


@pytest.mark.parametrize(
    "plant",
    [
        "var/lib/nodeagent/state.json",
        "var/lib/nodeagent/lock",
        "var/lib/nodeagent",
    ],
)
def test_symlinks_in_state_paths_refused(settings: SyncSettings, host_root: Path, tmp_path: Path, plant: str) -> None:
    """A symlink planted at the ledger, the lock or the state dir is refused and its target untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "state.json").write_text("precious")
    (outside / "lock").write_text("precious")
    path = host_root / plant
    path.parent.mkdir(parents=True, exist_ok=True)
    target = outside if plant.endswith("nodeagent") else outside / Path(plant).name
    path.symlink_to(target)
    with pytest.raises(HostFSError):
        sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    assert "precious" == (outside / "state.json").read_text() == (outside / "lock").read_text()
    assert {"state.json", "lock"} == set(os.listdir(outside))
    assert not (host_root / CONFIG).exists()


def test_file_where_state_dir_expected(settings: SyncSettings, host_root: Path) -> None:
    """A file where the state directory should be is reported, not replaced."""
    (host_root / "var/lib/nodeagent").write_text("not a dir")
    with pytest.raises(HostFSError):
        sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    assert "not a dir" == (host_root / "var/lib/nodeagent").read_text()


def test_wide_permissions_tightened(settings: SyncSettings, host_root: Path) -> None:
    """A config.json readable by everyone becomes 0600 when the agent writes credentials into it."""
    (host_root / CONFIG).write_text(json.dumps({"auths": {}}))
    (host_root / CONFIG).chmod(0o644)
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    assert 0o600 == stat.S_IMODE((host_root / CONFIG).stat().st_mode)


def test_state_dir_tightened_when_it_exists_wider(settings: SyncSettings, host_root: Path) -> None:
    """A state dir created 0755 (as a hostPath volume does) becomes 0700 on the first sync."""
    state = host_root / "var/lib/nodeagent"
    state.mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    sync(HostFS(host_root), settings, [_source({"r.example.com": ("u", "p")})])
    assert 0o700 == stat.S_IMODE(state.stat().st_mode)
