"""``nodeagent run``: the composition root of the long-running agent.

Sources report in their own threads into the :class:`~nodeagent.agent.book.SourceBook`; one loop
(the main thread) owns every host write. Each pass takes the book's desired credentials and hands
them to :func:`nodeagent.reconcile.sync`, which plans every target and writes through ``hostfs``.
The parts (book, loop, drift watch, status, startup taint, ECR service, containerd restarts) are
built and started here; each lives in its own module and is tested alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from nodeagent.config import RunSettings
from nodeagent.ecr.service import EcrService
from nodeagent.errors import NodeagentError
from nodeagent.host.containerd_restart import ContainerdRestarts, Restarter
from nodeagent.host.hostfs import HostFS
from nodeagent.kube import KubeAPI
from nodeagent.model.credentials import ParseResult
from nodeagent.model.registry_settings import SettingsFile
from nodeagent.observe.health import HealthServer
from nodeagent.observe.logging import Redactor, get_logger
from nodeagent.observe.metrics import Metrics
from nodeagent.reconcile import sync
from nodeagent.sources import SourceUpdate
from nodeagent.sources.files import DirectoryWatch, FileWatcher
from nodeagent.sources.watchers import start_watchers

from .book import SourceBook
from .drift import DriftGuard
from .drift_watch import DriftWatch
from .loop import Loop
from .presence import stand_by_for_cleanup
from .status import Status
from .taint import StartupTaint

__all__ = ["Agent"]


class Agent:
    def __init__(
        self,
        settings: RunSettings,
        *,
        api: KubeAPI | None,
        redactor: Redactor,
        metrics: Metrics | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.api, self.redactor, self.clock = settings, api, redactor, clock
        self.metrics = metrics or Metrics()
        self.stop = stop or threading.Event()
        self.hostfs = HostFS(settings.sync.host_root)
        self.log = get_logger(node=settings.node_name)
        self.book = SourceBook(
            [spec.label for spec in settings.sources.specs], on_deleted=settings.sources.on_secret_deleted
        )
        self.loop = Loop(resync_interval=settings.sources.resync_interval, clock=clock, stop=self.stop)
        self.status = Status(
            metrics=self.metrics,
            log=self.log,
            api=api,
            node_name=settings.node_name,
            events=settings.observe.events,
            annotations=settings.observe.annotations,
            event_namespace=settings.observe.event_namespace,
            on_secret_deleted=settings.sources.on_secret_deleted,
            clock=clock,
            source_count=len(settings.sources.specs),
        )
        self.taint = StartupTaint(
            enabled=settings.startup_taint, api=api, node_name=settings.node_name, clock=clock, log=self.log,
            emit=self.status.emit,
        )  # fmt: skip
        provider = settings.sync.provider
        self.ecr = EcrService(
            host_root=settings.sync.host_root, state_dir=settings.sync.state_dir,
            socket_path=provider.socket if provider is not None else None, regions=settings.ecr.regions,
            registries=settings.ecr.registries, credentials_secret=settings.ecr.credentials_secret, api=api,
            metrics=self.metrics, log=self.log, redact=redactor.add, on_token=self.loop.changed,
        )  # fmt: skip
        # --registry-config: a bad file fails here, at start (SettingsError), never later.
        path = settings.sync.registry_config
        self.registry_settings = SettingsFile(path) if path is not None else None
        containerd = settings.sync.containerd
        self.restarts = (
            ContainerdRestarts(
                Restarter(containerd), real_path=self.hostfs.real_path, metrics=self.metrics, log=self.log,
                emit=self.status.emit,
            )
            if containerd is not None and containerd.auth
            else None
        )  # fmt: skip
        self.drift = DriftWatch(
            hostfs=self.hostfs,
            path=settings.sync.kubelet_config,
            guard=DriftGuard(limit=settings.drift_limit, backoff=settings.drift_backoff),
            loop=self.loop,
            metrics=self.metrics,
            log=self.log,
            emit=self.status.emit,
            clock=clock,
        )
        self._watchers: list[Any] = []

    # -- callbacks from source threads ---------------------------------------------------------
    def on_update(self, update: SourceUpdate) -> None:
        if update.result is not None:
            self.redactor.add(update.result.secret_values)
        recorded = self.book.record(update)
        self.status.source_recorded(update, recorded)
        self.loop.changed(update.received)

    def on_node(self, labels: dict[str, str], uid: str) -> None:
        if self.status.events is not None:
            self.status.events.node_uid = uid
        if self.book.set_node_labels(labels):
            self.log.info("node_labels_updated", labels=len(labels))
            self.loop.changed()

    def shutdown(self) -> None:
        """Ask the loop to stop after the pass in flight (signal handlers call this)."""
        self.stop.set()
        self.loop.wake()

    # -- health --------------------------------------------------------------------------------
    def alive(self) -> bool:
        """The loop ticks and every watcher thread runs: a dead watcher means rotation silently
        stopped, so the kubelet must restart the pod (the liveness probe reads this)."""
        return self.clock() - self.status.health.heartbeat < 60 and not self.dead_watchers()

    def dead_watchers(self) -> list[str]:
        """Labels of source watchers (and the ECR token refresher) whose thread has ended."""
        if self.stop.is_set():
            return []
        dead = [w.label for w in self._watchers if not (w.watching if isinstance(w, FileWatcher) else w.is_alive())]
        refresher = self.ecr.refresher
        return dead + ([refresher.name] if refresher is not None and not refresher.is_alive() else [])

    def ready(self) -> tuple[bool, str]:
        unreadable, waiting = self.book.unreadable(), self.book.waiting()
        if unreadable:
            return False, "unreadable: " + "; ".join(unreadable)
        if not self.status.health.first_sync_done:
            return False, "first sync not done" + (f" (waiting for {', '.join(waiting)})" if waiting else "")
        stalled = [w.label for w in self._watchers if not w.watching]
        if stalled:
            return False, "not watching: " + ", ".join(stalled)
        return True, "ok"

    # -- wiring ----------------------------------------------------------------------------------
    def _start_sources(self) -> None:
        start_watchers(
            self.settings.sources.specs, api=self.api, sink=self.on_update, node_name=self.settings.node_name,
            on_node=self.on_node, stop=self.stop, forbidden_retry=self.settings.sources.forbidden_retry,
            on_start=lambda label: self.metrics.watch_starts.labels(label).inc(), into=self._watchers,
        )  # fmt: skip

    def _start_file_watches(self) -> list[DirectoryWatch]:
        """The kubelet's config.json (drift) and --registry-config (reload on change)."""
        target = self.hostfs.real_path(self.settings.sync.kubelet_config)
        self.hostfs.ensure_dir(os.path.dirname(self.settings.sync.kubelet_config))
        watches = [
            DirectoryWatch([os.path.dirname(target)], self.drift.changed, names=frozenset({os.path.basename(target)}))
        ]
        if self.registry_settings is not None:
            directory = os.path.dirname(os.path.abspath(self.registry_settings.path))
            watches.append(DirectoryWatch([directory], lambda received: self.loop.changed(received)))
        for watch in watches:
            watch.start()
        return watches

    def run(self) -> int:
        """Start every part, run the loop until ``stop`` is set; return the process exit code."""
        presence = stand_by_for_cleanup(self.hostfs, self.settings.sync.state_dir, stop=self.stop, log=self.log)
        if presence is None:
            return 0
        try:
            return self._run()
        finally:
            os.close(presence)

    def _run(self) -> int:
        server = HealthServer(
            self.settings.observe.listen_host, self.settings.observe.listen_port, alive=self.alive, ready=self.ready,
            metrics=self.metrics.render,
        )  # fmt: skip
        server.start()
        self.status.poster.start()
        self.log.info("agent_started", sources=[s.label for s in self.settings.sources.specs], port=server.port)
        self._start_sources()
        ecr_server = self.ecr.start(self.stop) if self.settings.ecr.enabled else None
        watches = self._start_file_watches()
        try:
            while not self.stop.is_set():
                self.status.beat()
                due = self.loop.wait(self.restarts.due_at() if self.restarts is not None else None)
                self.status.beat()
                if self.stop.is_set():
                    break
                self.taint.tick(synced=self.status.health.first_sync_done, fully_read=self.book.fully_read)
                if not due:
                    continue
                if self.restarts is not None:
                    self.restarts.run_due()
                if self.book.all_reported():  # start-up: reconcile once from every source's current state
                    self._pass()
                    # in the pass that makes the node ready, not at the loop's next tick (up to 5 s)
                    self.taint.tick(synced=self.status.health.first_sync_done, fully_read=self.book.fully_read)
        finally:
            if ecr_server is not None:
                ecr_server.stop()
            for watch in watches:
                watch.stop()
            for watcher in self._watchers:
                if isinstance(watcher, FileWatcher):
                    watcher.stop()
            server.stop()
            self.status.poster.stop()
            self.log.info("agent_stopped")
        return 0

    # -- one pass --------------------------------------------------------------------------------
    def _desired(self) -> tuple[list[ParseResult], bool, list[str]]:
        """The sources that apply to this node, in order (ECR tokens last), and whether to hold everything."""
        results, hold_all, held_because = self.book.desired()
        ecr = self.ecr.source()
        if ecr is not None:
            results.append(ecr)
        return results, hold_all, held_because

    def _reload_registry_settings(self) -> None:
        if self.registry_settings is None:
            return
        changed, error = self.registry_settings.reload()
        if error is not None:
            self.log.error("registry_settings_invalid", error=str(error), consequence="the last good settings stay")
            self.status.emit("RegistrySettingsInvalid", str(error), warning=True)
        elif changed:
            self.log.info("registry_settings_loaded", registries=len(self.registry_settings.current.registries))

    def _pass(self) -> bool:
        """One pass; a failure (or an exception no layer anticipated) is retried, never fatal."""
        pending = self.loop.take()
        self.metrics.passes.labels(pending.cause).inc()
        try:
            ok = self._apply(pending)
        except Exception as exc:
            self.status.pass_crashed(type(exc).__name__)
            ok = False
        self.loop.passed(ok, pending)
        return ok

    def _apply(self, pending: Any) -> bool:
        results, hold_all, held_because = self._desired()
        self._reload_registry_settings()
        stats = self.hostfs.stats
        changes_before = stats.writes + stats.removals
        registry_settings = self.registry_settings.current if self.registry_settings is not None else None
        try:
            report = sync(
                self.hostfs, self.settings.sync, results, hold_all=hold_all, registry_settings=registry_settings
            )
        except NodeagentError as exc:
            self.status.pass_failed(str(exc), type(exc).__name__)
            return False
        done = self.clock()
        wrote = bool(report.written or report.removed)
        if wrote and (pending.drift or pending.since is None):
            # Writing with no source change pending means the file had drifted, whether a watch
            # event or the periodic resync noticed it.
            self.drift.repaired(done)
        self.status.pass_done(
            report, changes=stats.writes + stats.removals - changes_before,
            latency=None if pending.since is None else done - pending.since, held_because=held_because,
            sources=self.book.resource_versions(),
        )  # fmt: skip
        if self.restarts is not None:
            self.restarts.after_pass(report.containerd_auth_changed, report.containerd_auth_files)
        return True
