"""Resource faults on the node's filesystem, with the real agent: ENOSPC and EROFS on a small tmpfs.

The old file stays intact, nothing is left behind, the error is reported and counted, and the
agent recovers by itself when the fault clears. Mounting needs root; in CI a missing mount is a
failure, not a skip (the CI machines run as root).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fake_kube import FakeKube
from tests.integration.conftest import SENTINEL, AgentProcess, dockerconfig, wait_for

NS, NAME = "registry-creds", "central"
Start = Callable[..., AgentProcess]
Mount = Callable[[Path], None]


@pytest.fixture
def tmpfs() -> Iterator[Mount]:
    """Mount a 256 KiB tmpfs at a path; unmounted after the agents have stopped."""
    mounted: list[Path] = []
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the filesystem fault tests need root to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")

    def mount(path: Path) -> None:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(path)], capture_output=True
        )
        if result.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs: {result.stderr.decode()}")
            pytest.skip("this sandbox cannot mount a tmpfs")
        mounted.append(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _creds(password: str, count: int = 300) -> bytes:
    return dockerconfig({f"registry-{i}.example.com": f"{password}-{i}" for i in range(count)})


def _mount_kubelet(tmpfs: Mount) -> Callable[[Path], None]:
    return lambda host_root: tmpfs(host_root / "var/lib/kubelet")


def test_enospc_keeps_old_file_and_recovers(tmpfs: Mount, kube: FakeKube, start_agent: Start) -> None:
    """A full filesystem fails the write cleanly and is reported; freeing space lets the agent finish alone."""
    kube.put_secret(NS, NAME, data={".dockerconfigjson": _creds(SENTINEL + "-old")})
    agent = start_agent("--secret", f"{NS}/{NAME}", prepare=_mount_kubelet(tmpfs))
    wait_for(lambda: agent.passwords().get("registry-0.example.com") == SENTINEL + "-old-0", "first sync")
    kubelet = agent.host_root / "var/lib/kubelet"
    old = (kubelet / "config.json").read_bytes()
    filler = kubelet / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the filesystem to the last byte
    for size in (65536, 4096, 512, 1):
        try:
            while True:
                os.write(fd, b"\0" * size)
        except OSError:
            pass
    os.close(fd)
    kube.put_secret(NS, NAME, data={".dockerconfigjson": _creds(SENTINEL + "-new")})
    failed = wait_for(lambda: [e for e in agent.events("sync_failed") if "ENOSPC" in e["error"]], "ENOSPC reported")
    assert "HostFSError" == failed[0]["error_type"]
    assert old == (kubelet / "config.json").read_bytes()
    assert [] == [n for n in os.listdir(kubelet) if ".nodeagent-tmp-" in n]
    assert agent.metric('nodeagent_syncs_total{result="failure"}') >= 1
    wait_for(lambda: "CredentialsSyncFailed" in {e["reason"] for e in kube.events}, "failure event")
    filler.unlink()
    wait_for(lambda: agent.passwords().get("registry-0.example.com") == SENTINEL + "-new-0", "recovery", timeout=30)


def test_erofs_keeps_old_file_and_recovers(tmpfs: Mount, kube: FakeKube, start_agent: Start) -> None:
    """A read-only filesystem fails the write cleanly; remounting read-write lets the agent finish alone."""
    kube.put_secret(NS, NAME, data={".dockerconfigjson": _creds(SENTINEL + "-old", 20)})
    agent = start_agent("--secret", f"{NS}/{NAME}", prepare=_mount_kubelet(tmpfs))
    wait_for(lambda: agent.passwords().get("registry-0.example.com") == SENTINEL + "-old-0", "first sync")
    kubelet = agent.host_root / "var/lib/kubelet"
    old = (kubelet / "config.json").read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(kubelet)], check=True)
    try:
        kube.put_secret(NS, NAME, data={".dockerconfigjson": _creds(SENTINEL + "-new", 20)})
        wait_for(lambda: [e for e in agent.events("sync_failed") if "EROFS" in e["error"]], "EROFS reported")
        assert old == (kubelet / "config.json").read_bytes()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(kubelet)], check=True)
    wait_for(lambda: agent.passwords().get("registry-0.example.com") == SENTINEL + "-new-0", "recovery", timeout=30)
    assert [] == [n for n in os.listdir(kubelet) if ".nodeagent-tmp-" in n]
