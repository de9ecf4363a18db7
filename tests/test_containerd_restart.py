"""Restart policies for config.toml credential changes: none, signal, systemd; once per interval."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest

from nodeagent.config import ContainerdSettings
from nodeagent.host.containerd_restart import Restarter, RestartError, process_start_time, restart_pending
from nodeagent.host.containerd_restart import find_containerd as _find_containerd


class _Proc:
    def __init__(self, pid: int, name: str, cmdline: list[str], started: float = 100.0) -> None:
        self.pid = pid
        self.info = {"name": name, "cmdline": cmdline, "create_time": started}


PROCS = [
    _Proc(10, "containerd-shim-runc-v2", ["/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io"]),
    _Proc(11, "containerd", ["/usr/bin/containerd", "--config", "/other/config.toml"]),
    _Proc(12, "containerd", ["/usr/bin/containerd", "--config", "/etc/containerd/config.toml"]),
]


def _fake_start(pid: int, fallback: float) -> float:
    """The fake processes' own start time: never looked up in this machine's /proc."""
    return fallback


def find_containerd(config: str | None, processes: Any) -> Any:
    return _find_containerd(config, processes, _fake_start)


def _restarter(settings: ContainerdSettings, **kwargs: Any) -> Restarter:
    kwargs.setdefault("processes", lambda: PROCS)
    return Restarter(settings, start_time=_fake_start, **kwargs)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_find_by_config_flag() -> None:
    """The containerd whose --config is the managed file is chosen; shims are never chosen."""
    found = find_containerd("/etc/containerd/config.toml", lambda: PROCS)
    assert found is not None and 12 == found.pid
    assert find_containerd("/nope.toml", lambda: PROCS) is None  # two candidates, none matching: no guess
    single = find_containerd("/nope.toml", lambda: PROCS[:2])
    assert single is not None and 11 == single.pid


def test_restart_pending_compares_mtime_with_start() -> None:
    """Pending when config.toml is newer than the running containerd; unknown without either."""
    process = find_containerd(None, lambda: [PROCS[2]])
    assert (True, False, None) == (
        restart_pending(200.0, process),
        restart_pending(50.0, process),
        restart_pending(200.0, None),
    )


def test_none_policy_only_reports() -> None:
    """Policy none never signals or runs anything; the change stays pending."""
    calls: list[Any] = []
    restarter = _restarter(ContainerdSettings(auth=True), run=calls.append, kill=lambda *a: calls.append(a))
    restarter.request()
    assert ("pending", [], None) == (restarter.maybe_restart(), calls, restarter.due_at())


def test_signal_policy_once_per_interval() -> None:
    """signal sends SIGTERM to the matching containerd; a second change within the interval waits."""
    kills: list[tuple[int, int]] = []
    clock = _Clock()
    restarter = _restarter(
        ContainerdSettings(auth=True, restart="signal", restart_interval=300),
        kill=lambda pid, sig: kills.append((pid, sig)),
        processes=lambda: PROCS,
        clock=clock,
    )
    assert restarter.maybe_restart() is None  # nothing requested: nothing done
    restarter.request()
    assert "restarted" == restarter.maybe_restart()
    restarter.request()
    clock.now += 10
    assert ("deferred", 1300.0) == (restarter.maybe_restart(), restarter.due_at())
    clock.now += 300
    assert "restarted" == restarter.maybe_restart()
    assert [(12, signal.SIGTERM), (12, signal.SIGTERM)] == kills


def test_signal_without_visible_containerd_fails() -> None:
    """No containerd visible (no hostPID): a RestartError that says why, and the change stays pending."""
    restarter = _restarter(ContainerdSettings(auth=True, restart="signal"), processes=lambda: [])
    restarter.request()
    with pytest.raises(RestartError, match="hostPID"):
        restarter.maybe_restart()
    assert restarter.pending


def test_systemd_policy_runs_systemctl_in_host_namespaces() -> None:
    """systemd runs systemctl restart containerd through nsenter into PID 1's namespaces."""
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, b"", b"")

    restarter = _restarter(ContainerdSettings(auth=True, restart="systemd"), run=run)
    restarter.request()
    assert "restarted" == restarter.maybe_restart()
    assert ["nsenter", "--target", "1"] == commands[0][:3]
    assert ["systemctl", "restart", "containerd"] == commands[0][-3:]


def test_systemd_failure_is_reported() -> None:
    """A failing systemctl is a RestartError carrying its exit code."""

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(command, 1, b"", b"Failed to connect to bus")

    restarter = _restarter(ContainerdSettings(auth=True, restart="systemd"), run=run)
    restarter.request()
    with pytest.raises(RestartError, match="exited 1"):
        restarter.maybe_restart()


def test_bad_policy_is_a_settings_error() -> None:
    """An unknown policy fails when settings load."""
    from nodeagent.errors import SettingsError

    with pytest.raises(SettingsError):
        ContainerdSettings(restart="reboot")


def test_process_start_time_is_precise() -> None:
    """A process's start time is known to a clock tick, not psutil's whole-second boot time:
    it falls between the moments just before and just after the process was started."""
    import time

    before = time.time()
    proc = subprocess.Popen(["sleep", "5"])
    after = time.time()
    try:
        started = process_start_time(proc.pid, fallback=0.0)
    finally:
        proc.kill()
        proc.wait()
    tick = 0.02  # the kernel counts in clock ticks (10 ms); /proc/uptime in centiseconds
    assert before - tick <= started <= after + tick
    assert 123.0 == process_start_time(2**22 + 1, fallback=123.0)  # no such process: the fallback


def test_sync_reports_a_failed_restart(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sync --containerd-restart signal` with no containerd visible writes the files, then exits 1
    naming the restart failure."""
    import functools
    import json
    from pathlib import Path

    from nodeagent import cli

    root = Path(tmp_path) / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text("version = 2\n")
    source = Path(tmp_path) / "src.json"
    source.write_text(json.dumps({"auths": {"r.example": {"auth": "dTpw"}}}))
    monkeypatch.setattr(cli, "Restarter", functools.partial(Restarter, processes=lambda: []))
    code = cli.main(
        ["sync", "--from-file", str(source), "--host-root", str(root), "--containerd-auth",
         "--containerd-restart", "signal", "--log-format", "json"]
    )  # fmt: skip
    assert 1 == code
    assert "r.example" in (root / "etc/containerd/config.toml").read_text()
