"""Applying a config.toml credential change: containerd reads config.toml only at start.

Policies (``--containerd-restart``):

* ``none`` (default): nothing is restarted; the agent logs and exports "restart pending", and
  ``nodeagent doctor`` reports it (config.toml newer than the running containerd).
* ``signal``: SIGTERM to the containerd process (the chart then needs ``hostPID``); containerd
  shuts down cleanly and its supervisor (systemd's ``Restart=always``) starts it again.
* ``systemd``: ``systemctl restart containerd`` in the host's namespaces (through ``nsenter -t 1``;
  needs ``hostPID`` and a privileged container).

A restart is requested only when the credential content really changed, and happens at most
once per ``restart_interval`` (a burst of rotations costs one restart).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from nodeagent.config import ContainerdSettings
from nodeagent.errors import NodeagentError

__all__ = ["ContainerdProcess", "ContainerdRestarts", "RestartError", "Restarter", "find_containerd", "restart_pending"]


class RestartError(NodeagentError):
    """containerd could not be restarted (no process found, or the command failed)."""


class ContainerdProcess:
    """The facts about a running containerd the restart logic needs."""

    def __init__(self, pid: int, config: str | None, started: float) -> None:
        self.pid, self.config, self.started = pid, config, started


def process_start_time(pid: int, fallback: float) -> float:
    """When a process started, in Unix time, to about a clock tick (10 ms).

    psutil's ``create_time`` adds the start (in ticks since boot) to the boot time, which the
    kernel gives in whole seconds, so it can be up to a second early: too coarse to tell whether
    a config written just before a restart is in effect. ``/proc/uptime`` has centiseconds.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as handle:
            uptime = float(handle.read().split()[0])
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return fallback
    return time.time() - (uptime - started_after_boot)


def _processes() -> Iterable[Any]:
    import psutil

    return psutil.process_iter(["name", "cmdline", "create_time"])


def find_containerd(
    config: str | None,
    processes: Callable[[], Iterable[Any]] = _processes,
    start_time: Callable[[int, float], float] = process_start_time,
) -> ContainerdProcess | None:
    """The containerd daemon using ``config`` (by its ``--config`` flag), else the only one running.

    ``processes`` and ``start_time`` are this machine's by default; tests give both (a fake
    process list must never be looked up in the real ``/proc``)."""
    found: list[ContainerdProcess] = []
    for proc in processes():
        try:
            info = proc.info
            cmdline = info.get("cmdline") or []
            if info.get("name") != "containerd" and os.path.basename(cmdline[0] if cmdline else "") != "containerd":
                continue
            flag = None
            for i, arg in enumerate(cmdline):
                if arg in ("--config", "-c") and i + 1 < len(cmdline):
                    flag = cmdline[i + 1]
                elif arg.startswith("--config="):
                    flag = arg.split("=", 1)[1]
            started = start_time(proc.pid, float(info.get("create_time") or 0.0))
            found.append(ContainerdProcess(proc.pid, flag, started))
        except (OSError, KeyError, IndexError):
            continue
        except Exception as exc:  # psutil.Error (NoSuchProcess, AccessDenied): skip that process
            if type(exc).__module__.startswith("psutil"):
                continue
            raise
    matching = [p for p in found if config is not None and p.config == config]
    if matching:
        return matching[0]
    return found[0] if len(found) == 1 else None


def restart_pending(config_mtime: float | None, process: ContainerdProcess | None) -> bool | None:
    """True when config.toml changed after containerd started; None when that cannot be known."""
    if config_mtime is None or process is None:
        return None
    return config_mtime > process.started


class Restarter:
    """Runs the restart policy after credential changes, at most once per interval."""

    def __init__(
        self,
        settings: ContainerdSettings,
        *,
        run: Callable[..., Any] = subprocess.run,
        kill: Callable[[int, int], None] = os.kill,
        processes: Callable[[], Iterable[Any]] = _processes,
        start_time: Callable[[int, float], float] = process_start_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._run, self._kill, self._processes, self._clock = run, kill, processes, clock
        self._start_time = start_time
        self.pending = False
        self.last: float | None = None

    def request(self) -> None:
        self.pending = True

    def due_at(self) -> float | None:
        """When the pending restart may run (None: nothing to run, or policy ``none``)."""
        if not self.pending or self.settings.restart == "none":
            return None
        return self._clock() if self.last is None else self.last + self.settings.restart_interval

    def due_now(self) -> bool:
        due = self.due_at()
        return due is not None and self._clock() >= due

    def maybe_restart(self) -> str | None:
        """Run a pending restart if allowed now: "restarted", "pending" (policy none),
        "deferred" (within the interval), or None when nothing is pending."""
        if not self.pending:
            return None
        if self.settings.restart == "none":
            return "pending"
        now = self._clock()
        if self.last is not None and now - self.last < self.settings.restart_interval:
            return "deferred"
        self.last = now  # a failed attempt also waits an interval: no restart storm
        self._restart()
        self.pending = False
        return "restarted"

    def _restart(self) -> None:
        if self.settings.restart == "signal":
            process = find_containerd(self.settings.config, self._processes, self._start_time)
            if process is None:
                raise RestartError("no containerd process is visible (the signal policy needs hostPID)")
            try:
                self._kill(process.pid, signal.SIGTERM)
            except OSError as exc:
                raise RestartError(f"cannot signal containerd (pid {process.pid}): {exc.strerror}") from exc
            return
        command = ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"]
        command += ["systemctl", "restart", "containerd"]
        try:
            result = self._run(command, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RestartError(f"systemctl restart containerd failed to run: {exc}") from exc
        if result.returncode != 0:
            detail = (result.stderr or b"").decode("utf-8", "replace").strip()[:300]
            raise RestartError(f"systemctl restart containerd exited {result.returncode}: {detail}")


class ContainerdRestarts:
    """The agent's side of the policy: request a restart when a pass changed config.toml
    credentials, run it when due, notice one done by someone else, and report each outcome."""

    def __init__(
        self,
        restarter: Restarter,
        *,
        real_path: Callable[[str], str],
        metrics: Any,
        log: Any,
        emit: Callable[..., None],
        find: Callable[[str], ContainerdProcess | None] = find_containerd,
    ) -> None:
        self.restarter, self.real_path, self.metrics, self.log, self.emit = restarter, real_path, metrics, log, emit
        self._find = find

    def due_at(self) -> float | None:
        return self.restarter.due_at()

    def run_due(self) -> None:
        if self.restarter.due_now():
            self.restart()

    def after_pass(self, auth_changed: bool, auth_files: list[str]) -> None:
        if auth_changed:
            self.restarter.request()
            self.restart()
        elif self.restarter.pending and self.restarter.settings.restart == "none":
            self._notice_outside_restart(auth_files)

    def _notice_outside_restart(self, auth_files: list[str]) -> None:
        """With policy none, someone else restarts containerd: once the running containerd is
        newer than the files holding the agent's credentials, nothing is pending any more."""
        mtimes = []
        for path in auth_files:
            try:
                mtimes.append(os.stat(self.real_path(path)).st_mtime)
            except OSError:
                continue
        process = self._find(self.restarter.settings.config)
        if mtimes and restart_pending(max(mtimes), process) is False:
            self.restarter.pending = False
            self.metrics.containerd_restart_pending.set(0)
            self.log.info("containerd_restart_observed", why="containerd started after its credentials changed")

    def restart(self) -> None:
        """Apply the restart policy to a pending config.toml credential change."""
        settings = self.restarter.settings
        try:
            outcome = self.restarter.maybe_restart()
        except NodeagentError as exc:
            self.metrics.containerd_restart_pending.set(1)
            self.metrics.containerd_restarts.labels("failure").inc()
            self.log.error("containerd_restart_failed", error=str(exc), policy=settings.restart)
            self.emit("ContainerdRestartFailed", str(exc), warning=True)
            return
        self.metrics.containerd_restart_pending.set(1 if self.restarter.pending else 0)
        if outcome == "restarted":
            self.metrics.containerd_restarts.labels("success").inc()
            self.log.warning("containerd_restarted", policy=settings.restart)
            self.emit("ContainerdRestarted", "containerd restarted to apply config.toml credentials")
        elif outcome == "pending":
            self.log.warning(
                "containerd_restart_pending",
                config=settings.config,
                why="containerd reads config.toml credentials only at start (--containerd-restart none)",
            )
        elif outcome == "deferred":
            self.log.info("containerd_restart_deferred", interval=settings.restart_interval)
