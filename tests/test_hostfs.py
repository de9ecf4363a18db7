"""The host writer: atomic, symlink-safe, no churn, nothing left behind on any error."""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from nodeagent.errors import HostFSError, LockTimeout, NotARegularFile, SymlinkRefused
from nodeagent.host.hostfs import TEMP_MARKER, HostFS

TARGET = "/var/lib/kubelet/config.json"


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_write_creates_0600_file(hostfs: HostFS, host_root: Path) -> None:
    """A new file gets the bytes and mode 0600, with no temp file left."""
    assert True is hostfs.write(TARGET, b"{}\n")
    path = host_root / TARGET.lstrip("/")
    assert b"{}\n" == path.read_bytes()
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)
    assert ["config.json"] == _entries(path.parent)


def test_unchanged_bytes_not_rewritten(hostfs: HostFS, host_root: Path) -> None:
    """Writing identical bytes performs no write (the inode stays the same)."""
    hostfs.write(TARGET, b"same")
    inode = (host_root / TARGET.lstrip("/")).stat().st_ino
    assert False is hostfs.write(TARGET, b"same")
    assert inode == (host_root / TARGET.lstrip("/")).stat().st_ino
    assert 1 == hostfs.stats.writes


def test_wrong_mode_rewritten(hostfs: HostFS, host_root: Path) -> None:
    """Identical bytes with a wide mode are rewritten to 0600."""
    path = host_root / TARGET.lstrip("/")
    path.write_bytes(b"same")
    path.chmod(0o644)
    assert True is hostfs.write(TARGET, b"same")
    assert 0o600 == stat.S_IMODE(path.stat().st_mode)


def test_symlink_never_followed(hostfs: HostFS, host_root: Path, tmp_path: Path) -> None:
    """A symlink at the target is refused for read, write and remove; its target is untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (host_root / TARGET.lstrip("/")).symlink_to(outside)
    with pytest.raises(SymlinkRefused):
        hostfs.write(TARGET, b"evil")
    with pytest.raises(SymlinkRefused):
        hostfs.read(TARGET)
    with pytest.raises(SymlinkRefused):
        hostfs.remove(TARGET)
    assert b"precious" == outside.read_bytes()
    assert (host_root / TARGET.lstrip("/")).is_symlink()


def test_directory_in_place_of_file(hostfs: HostFS, host_root: Path) -> None:
    """A directory where a file is expected is reported, not replaced."""
    (host_root / TARGET.lstrip("/")).mkdir()
    with pytest.raises(NotARegularFile):
        hostfs.write(TARGET, b"x")
    assert (host_root / TARGET.lstrip("/")).is_dir()


def test_paths_stay_under_root(hostfs: HostFS) -> None:
    """Relative paths and '..' are refused before any I/O."""
    for bad in ("relative/file", "/var/../../etc/passwd", "/var/lib/\x00x"):
        with pytest.raises(HostFSError):
            hostfs.write(bad, b"x")


@pytest.mark.parametrize("where", ["write", "fsync", "rename", "fchmod"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS, errno.EACCES])
def test_fault_keeps_old_file(
    hostfs: HostFS, host_root: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int
) -> None:
    """A fault during write, fsync, chmod or rename leaves the old file intact and no temp file."""
    hostfs.write(TARGET, b"old content")
    real = getattr(os, where)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, where, fail)
    with pytest.raises(HostFSError) as info:
        hostfs.write(TARGET, b"new content")
    monkeypatch.setattr(os, where, real)
    assert errno.errorcode[code] in str(info.value)
    assert b"old content" == (host_root / TARGET.lstrip("/")).read_bytes()
    assert ["config.json"] == _entries(host_root / "var/lib/kubelet")
    assert True is hostfs.write(TARGET, b"new content")


def test_real_enospc_on_small_tmpfs(tmp_path: Path) -> None:
    """On a real full filesystem the old file stays and nothing is left behind (needs root to mount)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the ENOSPC test needs root to mount a tmpfs (CI runs as root)")
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=64k tmpfs {mnt} 2>/dev/null") != 0:  # noqa: S605
        if os.environ.get("CI"):
            pytest.fail("cannot mount a tmpfs in CI: the ENOSPC test needs it")
        pytest.skip("this sandbox cannot mount tmpfs")
    try:
        fs = HostFS(mnt)
        fs.ensure_dir("/d")
        fs.write("/d/f", b"old")
        with pytest.raises(HostFSError) as info:
            fs.write("/d/f", b"x" * 1024 * 1024)
        assert "ENOSPC" in str(info.value)
        assert b"old" == (mnt / "d/f").read_bytes()
        assert ["f"] == _entries(mnt / "d")
    finally:
        os.system(f"umount {mnt}")  # noqa: S605


def test_leftover_temp_files_swept(hostfs: HostFS, host_root: Path) -> None:
    """Temp files left by a killed agent are removed on the next write to that directory."""
    leftover = host_root / "var/lib/kubelet" / f".config.json{TEMP_MARKER}abc"
    leftover.write_bytes(b"partial")
    assert [leftover.name] == hostfs.leftover_temp_files("/var/lib/kubelet")
    hostfs.write(TARGET, b"x")
    assert [] == hostfs.leftover_temp_files("/var/lib/kubelet")


def test_remove(hostfs: HostFS, host_root: Path) -> None:
    """Remove deletes a file and reports False when it is already gone."""
    hostfs.write(TARGET, b"x")
    assert True is hostfs.remove(TARGET)
    assert False is hostfs.remove(TARGET)
    assert None is hostfs.read(TARGET)


def _hold_lock(root: str, ready: Any, release: Any) -> None:
    with HostFS(root).lock("/var/lib/nodeagent"):
        ready.set()
        release.wait(10)


def test_lock_excludes_second_process(hostfs: HostFS, host_root: Path) -> None:
    """While one process holds the state lock, another times out rather than interleaving."""
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(host_root), ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockTimeout), hostfs.lock("/var/lib/nodeagent", timeout=0.2):
            pass
    finally:
        release.set()
        proc.join(10)
    deadline = time.monotonic() + 10
    with hostfs.lock("/var/lib/nodeagent", timeout=max(0.1, deadline - time.monotonic())):
        assert 0o700 == stat.S_IMODE((host_root / "var/lib/nodeagent").stat().st_mode)
