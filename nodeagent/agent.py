"""``nodeagent run``: the DaemonSet's long-running loop.

Sources report in their own threads; one reconcile loop (the main thread) owns every host write.
A pass runs when a source changes, when a watched target file changes (drift), on a retry after
a failure, and every ``resync_interval`` as a safety net. Each source keeps its last good
content: a Secret that turns invalid, or is deleted (by default), leaves the node as it was.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from nodeagent.book import SourceBook
from nodeagent.config import SyncSettings
from nodeagent.containerd_restart import Restarter, find_containerd, restart_pending
from nodeagent.credentials import EntryProblem, ParseResult, RegistryCredential, safe_key
from nodeagent.drift import DriftGuard
from nodeagent.ecr.plugin import parse_ecr_host
from nodeagent.ecr.tokens import EcrSocketServer, StaticKeys, TokenManager
from nodeagent.errors import NodeagentError, SettingsError
from nodeagent.hostfs import HostFS
from nodeagent.kube import KubeAPI, KubeError
from nodeagent.observe.events import EventRecorder
from nodeagent.observe.health import HealthServer
from nodeagent.observe.logging import Redactor, get_logger
from nodeagent.observe.metrics import Metrics
from nodeagent.observe.posting import Poster
from nodeagent.reconcile import SyncReport, sync
from nodeagent.registry_settings import SettingsLoad, load_registry_settings
from nodeagent.sources import SourceUpdate
from nodeagent.sources.files import DirectoryWatch, FileWatcher
from nodeagent.sources.kube import NodeWatcher, SecretWatcher

__all__ = ["REVISION_ANNOTATION", "SYNCED_AT_ANNOTATION", "Agent", "RunSettings", "SourceSpec"]

ECR_SOURCE = "ecr"
"""The source name of ECR tokens written into config.json for ``--ecr-registries``."""
REVISION_ANNOTATION = "nodeagent.io/credentials-revision"
STARTUP_TAINT = "nodeagent.io/agent-not-ready"
"""The taint node bootstrap puts on a new node (NoSchedule) and the agent removes once synced."""
SYNCED_AT_ANNOTATION = "nodeagent.io/synced-at"


@dataclass(frozen=True)
class SourceSpec:
    kind: Literal["secret", "file"]
    ref: str  # "namespace/name" or a path

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.ref}"


@dataclass(frozen=True)
class RunSettings:
    """Settings of ``nodeagent run`` (the shared host settings live in ``sync``)."""

    sync: SyncSettings
    sources: tuple[SourceSpec, ...]
    node_name: str | None = None
    kubeconfig: str | None = None
    listen_host: str = "0.0.0.0"  # noqa: S104 - the kubelet's probes and Prometheus reach the pod IP
    listen_port: int = 9808
    on_secret_deleted: Literal["keep", "remove"] = "keep"
    """Keep by default: one accidental ``kubectl delete secret`` must not break pulls on every node."""
    resync_interval: float = 600.0
    """A full pass every 10 min catches anything the watches missed, at negligible cost."""
    events: bool = True
    annotations: bool = True
    event_namespace: str = "default"
    """Events about cluster-scoped Nodes live in ``default``, where ``kubectl describe node`` finds them."""
    drift_limit: int = 5
    """More external rewrites than this per minute is a fight with another writer: back off."""
    drift_backoff: float = 300.0
    forbidden_retry: float = 60.0
    """401/403 need a person to fix RBAC; retrying faster only floods the API server's audit log."""
    startup_taint: bool = False
    """Remove ``nodeagent.io/agent-not-ready`` from the Node once every source is read and applied,
    so that pods scheduled to a fresh node never race its first sync (``--remove-startup-taint``)."""
    ecr: bool = False
    """Serve ECR tokens to the credential-provider plugin (installed per ``sync.provider``)."""
    ecr_regions: tuple[str, ...] = ()
    ecr_registries: tuple[str, ...] = ()
    """ECR hosts whose tokens also go into config.json, for kubelets not wired to plugins."""
    ecr_credentials_secret: str | None = None


@dataclass
class _Status:
    first_sync_done: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    annotated_revision: str | None = None


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
        self.settings = settings
        self.api = api
        self.redactor = redactor
        self.metrics = metrics or Metrics()
        self.stop = stop or threading.Event()
        self.clock = clock
        self.hostfs = HostFS(settings.sync.host_root)
        self.log = get_logger(node=settings.node_name)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.book = SourceBook([spec.label for spec in settings.sources], on_deleted=settings.on_secret_deleted)
        self._pending_since: float | None = None
        self._drift_pending = False
        self.drift = DriftGuard(limit=settings.drift_limit, backoff=settings.drift_backoff)
        self._taint_done = not settings.startup_taint
        self._taint_next_try = 0.0
        self._taint_failures = 0
        self._status = _Status()
        self._watchers: list[Any] = []
        self._background: list[threading.Thread] = []
        """Other threads the agent cannot work without (the ECR token refresher)."""
        self.tokens: TokenManager | None = None
        # Events and Node annotations go out on the poster's thread: a slow API never delays a write.
        self._poster = Poster()
        self._events = (
            EventRecorder(
                api=api, node_name=settings.node_name, namespace=settings.event_namespace, poster=self._poster
            )
            if api is not None and settings.node_name and settings.events
            else None
        )
        self._settings_path = settings.sync.registry_config
        self._settings_stamp: tuple[int, int, int] | None = None
        self.registry_settings: SettingsLoad | None = None
        if self._settings_path is not None:  # a bad file fails at start (SettingsError), never later
            self._settings_stamp = self._stamp(self._settings_path)
            self.registry_settings = load_registry_settings(self._settings_path)
        containerd = settings.sync.containerd
        self.restarter = Restarter(containerd) if containerd is not None and containerd.auth else None

    # -- callbacks from source threads ---------------------------------------------------------
    def on_update(self, update: SourceUpdate) -> None:
        log = self.log.bind(source=update.source, resource_version=update.resource_version)
        if update.result is not None:
            self.redactor.add(update.result.secret_values)
        recorded = self.book.record(update)
        with self._lock:
            if self._pending_since is None:
                self._pending_since = update.received
        self.metrics.source_valid.labels(update.source).set(1 if recorded.status == "valid" else 0)
        keeping = "last good content" if recorded.kept_last_good else "node as is"
        event: tuple[str, str] | None = None
        if recorded.status == "valid":
            log.info("source_updated", registries=len(update.result.credentials) if update.result else 0)
        elif recorded.status == "invalid":
            log.error("source_invalid", error=recorded.error, keeping=keeping)
            event = ("SourceInvalid", f"{update.source}: {recorded.error}; keeping the last good credentials")
        elif recorded.status == "unreadable":
            log.error("source_unreadable", error=recorded.error, keeping=keeping)
            if recorded.previous != "unreadable":  # retried every minute or so: one Event per change
                event = ("SourceUnreadable", f"{update.source}: {recorded.error}; the other sources still apply")
        elif update.kind in ("deleted", "absent"):
            keep = self.settings.on_secret_deleted == "keep"
            log.warning(
                "source_deleted" if update.kind == "deleted" else "source_absent",
                error=update.error,
                policy=self.settings.on_secret_deleted,
                consequence="credentials kept on the node" if keep else "credentials removed from the node",
            )
            event = ("SourceDeleted", f"{update.source} not found; credentials {'kept' if keep else 'removed'}")
        if event is not None:
            self._emit(event[0], event[1], warning=True)
        self._wake.set()

    def on_node(self, labels: dict[str, str], uid: str) -> None:
        changed = self.book.set_node_labels(labels)
        with self._lock:
            if self._events is not None:
                self._events.node_uid = uid
            if changed and self._pending_since is None:
                self._pending_since = self.clock()
        if changed:
            self.log.info("node_labels_updated", labels=len(labels))
            self._wake.set()

    def _target_stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.lstat(self.hostfs.real_path(self.settings.sync.kubelet_config))
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _on_drift(self, received: float) -> None:
        if self.drift.paused(self.clock()):
            return
        if self._target_stat() == self.hostfs.written.get(self.settings.sync.kubelet_config):
            return  # the event was the agent's own rename (its file, untouched since)
        with self._lock:
            self._drift_pending = True
        self._wake.set()

    @staticmethod
    def _stamp(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)  # follows a ConfigMap volume's ..data symlink: the content's identity
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _reload_registry_settings(self) -> None:
        """Re-read --registry-config when it changed; a bad new version keeps the last good one."""
        if self._settings_path is None:
            return
        stamp = self._stamp(self._settings_path)
        if stamp == self._settings_stamp:
            return
        self._settings_stamp = stamp
        try:
            self.registry_settings = load_registry_settings(self._settings_path)
        except SettingsError as exc:
            self.log.error("registry_settings_invalid", error=str(exc), consequence="the last good settings stay")
            self._emit("RegistrySettingsInvalid", str(exc), warning=True)
            return
        self.log.info("registry_settings_loaded", registries=len(self.registry_settings.registries))

    def _on_settings_change(self, received: float) -> None:
        with self._lock:
            if self._pending_since is None:
                self._pending_since = received
        self._wake.set()

    def _on_watch_start(self, label: str) -> None:
        self.metrics.watch_starts.labels(label).inc()

    def shutdown(self) -> None:
        """Ask the loop to stop after the pass in flight (signal handlers call this)."""
        self.stop.set()
        self._wake.set()

    # -- health --------------------------------------------------------------------------------
    def alive(self) -> bool:
        """The loop ticks and every watcher thread runs: a dead watcher means rotation silently
        stopped, so the kubelet must restart the pod (the liveness probe reads this)."""
        return self.clock() - self._status.heartbeat < 60 and not self.dead_watchers()

    def dead_watchers(self) -> list[str]:
        """Labels of source watchers whose thread has ended while the agent runs."""
        if self.stop.is_set():
            return []
        dead = [w.label for w in self._watchers if not (w.watching if isinstance(w, FileWatcher) else w.is_alive())]
        return dead + [t.name for t in self._background if not t.is_alive()]

    def ready(self) -> tuple[bool, str]:
        unreadable, waiting = self.book.unreadable(), self.book.waiting()
        if unreadable:
            return False, "unreadable: " + "; ".join(unreadable)
        if not self._status.first_sync_done:
            return False, "first sync not done" + (f" (waiting for {', '.join(waiting)})" if waiting else "")
        stalled = [w.label for w in self._watchers if not w.watching]
        if stalled:
            return False, "not watching: " + ", ".join(stalled)
        return True, "ok"

    # -- the loop --------------------------------------------------------------------------------
    def _start_sources(self) -> None:
        for spec in self.settings.sources:
            if spec.kind == "file":
                watcher: Any = FileWatcher(spec.ref, self.on_update)
            else:
                if self.api is None:
                    raise NodeagentError("a --secret source needs API access")
                namespace, name = spec.ref.split("/", 1)
                watcher = SecretWatcher(
                    api=self.api,
                    namespace=namespace,
                    name=name,
                    sink=self.on_update,
                    stop=self.stop,
                    on_start=self._on_watch_start,
                    forbidden_retry=self.settings.forbidden_retry,
                )
            self._watchers.append(watcher)
            watcher.start()
            if spec.kind == "file":
                self._on_watch_start(watcher.label)
        if self.api is not None and self.settings.node_name:
            node = NodeWatcher(
                api=self.api,
                name=self.settings.node_name,
                on_labels=self.on_node,
                stop=self.stop,
                on_start=self._on_watch_start,
                forbidden_retry=self.settings.forbidden_retry,
            )
            self._watchers.append(node)
            node.start()

    def _start_drift_watch(self) -> DirectoryWatch:
        target = self.hostfs.real_path(self.settings.sync.kubelet_config)
        self.hostfs.ensure_dir(os.path.dirname(self.settings.sync.kubelet_config))
        watch = DirectoryWatch([os.path.dirname(target)], self._on_drift, names=frozenset({os.path.basename(target)}))
        watch.start()
        return watch

    def run(self) -> int:
        """Run until ``stop`` is set; return the process exit code."""
        server = HealthServer(
            self.settings.listen_host,
            self.settings.listen_port,
            alive=self.alive,
            ready=self.ready,
            metrics=self.metrics.render,
        )
        server.start()
        self._poster.start()
        self.log.info("agent_started", sources=[s.label for s in self.settings.sources], port=server.port)
        self._start_sources()
        ecr_server = self._start_ecr() if self.settings.ecr else None
        drift = self._start_drift_watch()
        settings_watch = None
        if self._settings_path is not None:
            settings_watch = DirectoryWatch(
                [os.path.dirname(os.path.abspath(self._settings_path))], self._on_settings_change
            )
            settings_watch.start()
        next_resync = self.clock() + self.settings.resync_interval
        retry_at: float | None = None
        failures = 0
        try:
            while not self.stop.is_set():
                self._status.heartbeat = self.clock()
                now = self.clock()
                restart_at = self.restarter.due_at() if self.restarter is not None else None
                due = min(next_resync, retry_at or next_resync, restart_at or next_resync)
                woke = self._wake.wait(timeout=max(0.0, min(5.0, due - now)))
                self._status.heartbeat = self.clock()
                if self.stop.is_set():
                    break
                self._remove_startup_taint()
                if not woke and self.clock() < due:
                    continue
                self._wake.clear()
                if restart_at is not None and self.clock() >= restart_at:
                    self._restart_containerd()
                if not self.book.all_reported():
                    continue  # start-up: reconcile once from every source's current state
                if self._guarded_pass():
                    failures, retry_at = 0, None
                else:
                    failures += 1
                    # quick at first (a foreign writer caught mid-write), then slower: 0.5 s doubling to 60 s
                    retry_at = self.clock() + min(60.0, 0.5 * 2.0 ** (failures - 1))
                next_resync = self.clock() + self.settings.resync_interval
        finally:
            if ecr_server is not None:
                ecr_server.stop()
            drift.stop()
            if settings_watch is not None:
                settings_watch.stop()
            for watcher in self._watchers:
                if isinstance(watcher, FileWatcher):
                    watcher.stop()
            server.stop()
            self._poster.stop()
            self.log.info("agent_stopped")
        return 0

    def _start_ecr(self) -> EcrSocketServer:
        from nodeagent.ecr.tokens import BotocoreTokens

        provider = self.settings.sync.provider
        socket_path = provider.socket if provider is not None else "/run/nodeagent/agent.sock"
        keys = list(self.settings.ecr_regions)
        for host in self.settings.ecr_registries:
            key = parse_ecr_host(host)
            if key is not None:
                keys.append(key)
        self.tokens = TokenManager(
            source=BotocoreTokens(
                static_credentials=self._static_aws_keys if self.settings.ecr_credentials_secret else None
            ),
            hostfs=HostFS(self.settings.sync.host_root),
            state_dir=self.settings.sync.state_dir,
            keys=keys,
            on_refresh=self._on_token,
            metrics=self.metrics,
            redact=self.redactor.add,
        )
        server = EcrSocketServer(
            hostfs=HostFS(self.settings.sync.host_root), socket_path=socket_path, manager=self.tokens
        )
        server.start()
        refresher = threading.Thread(target=self.tokens.run, args=(self.stop,), daemon=True, name="ecr-tokens")
        self._background.append(refresher)
        refresher.start()
        self.log.info("ecr_started", keys=sorted(set(keys)), socket=socket_path)
        return server

    def _static_aws_keys(self) -> StaticKeys | None:
        """Static AWS keys (and an optional ``role_arn``) from ``--ecr-credentials-secret``,
        read each time a token is fetched, so a rotated Secret is used on the next refresh."""
        if self.api is None or not self.settings.ecr_credentials_secret:
            return None
        namespace, name = self.settings.ecr_credentials_secret.split("/", 1)
        try:
            secret, _ = self.api.list_secret(namespace, name)
        except KubeError as exc:
            self.log.error("ecr_credentials_unreadable", error=str(exc))
            return None
        data = (secret or {}).get("data") or {}
        try:
            fields = {k: base64.b64decode(v).decode() for k, v in data.items() if isinstance(v, str)}
            keys = StaticKeys(
                fields["aws_access_key_id"], fields["aws_secret_access_key"], fields.get("role_arn") or None
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            self.log.error(
                "ecr_credentials_invalid",
                secret=self.settings.ecr_credentials_secret,
                hint="the Secret needs aws_access_key_id and aws_secret_access_key (and may have role_arn)",
            )
            return None
        self.redactor.add([keys.secret_access_key])
        return keys

    def _on_token(self, key: str) -> None:
        if self.settings.ecr_registries:
            with self._lock:
                if self._pending_since is None:
                    self._pending_since = self.clock()
            self._wake.set()

    def _ecr_source(self) -> ParseResult | None:
        """Tokens for ``--ecr-registries`` as config.json entries (a registry without one is held)."""
        if not self.settings.ecr_registries or self.tokens is None:
            return None
        credentials, rejected = [], []
        for host in self.settings.ecr_registries:
            key = parse_ecr_host(host)
            token = self.tokens.token(key) if key else None
            if token is None or token.expires_at <= time.time():
                rejected.append(
                    EntryProblem(key=host, registry=host, reason="no valid ECR token yet", source=ECR_SOURCE)
                )
            else:
                credentials.append(RegistryCredential(key=host, registry=host, source=ECR_SOURCE, auth=token.token))
        return ParseResult(ECR_SOURCE, tuple(credentials), tuple(rejected))

    def _desired(self) -> tuple[list[ParseResult], bool, list[str]]:
        """The sources that apply to this node, in order (ECR tokens last), and whether to hold everything."""
        results, hold_all, held_because = self.book.desired()
        ecr = self._ecr_source()
        if ecr is not None:
            results.append(ecr)
        return results, hold_all, held_because

    def _guarded_pass(self) -> bool:
        """One pass; an exception no layer anticipated fails this pass (retried), never the agent."""
        try:
            return self._pass()
        except Exception as exc:
            self.metrics.syncs.labels("failure").inc()
            self.log.error("sync_crashed", error_type=type(exc).__name__)
            self._emit("CredentialsSyncFailed", f"internal error ({type(exc).__name__}); retrying", warning=True)
            return False

    def _pass(self) -> bool:
        with self._lock:
            pending_since, self._pending_since = self._pending_since, None
            drift, self._drift_pending = self._drift_pending, False
        results, hold_all, held_because = self._desired()
        self._reload_registry_settings()
        stats = self.hostfs.stats
        changes_before = stats.writes + stats.removals
        try:
            report = sync(
                self.hostfs, self.settings.sync, results, hold_all=hold_all, registry_settings=self.registry_settings
            )
        except NodeagentError as exc:
            with self._lock:  # the retry still repairs that drift and still ends that propagation
                self._drift_pending = self._drift_pending or drift
                if pending_since is not None and (self._pending_since is None or pending_since < self._pending_since):
                    self._pending_since = pending_since
            self.metrics.syncs.labels("failure").inc()
            self.log.error("sync_failed", error=str(exc), error_type=type(exc).__name__)
            self._emit("CredentialsSyncFailed", str(exc), warning=True)
            return False
        done = self.clock()
        bad_input = any(p.source != ECR_SOURCE for p in report.rejected)
        self.metrics.syncs.labels("partial" if bad_input else "success").inc()
        self.metrics.last_success.set(time.time())
        self.metrics.managed.set(report.registries)
        self.metrics.writes.inc(stats.writes + stats.removals - changes_before)
        for problem in report.rejected:
            if problem.source != ECR_SOURCE:
                self.metrics.rejected.labels(problem.source).inc()
        if pending_since is not None:
            self.metrics.propagation.observe(max(0.0, done - pending_since))
        wrote = bool(report.written or report.removed)
        if wrote and (drift or pending_since is None):
            # Writing with no source change pending means the file had drifted, whether a watch
            # event or the periodic resync noticed it.
            self._drift_repaired(done)
        self._log_report(report, held_because, latency=None if pending_since is None else done - pending_since)
        self._status.first_sync_done = True
        if report.containerd_auth_changed and self.restarter is not None:
            self.restarter.request()
            self._restart_containerd()
        elif self.restarter is not None and self.restarter.pending and self.restarter.settings.restart == "none":
            self._notice_outside_restart(report)
        if wrote or self._status.annotated_revision != report.revision:
            self._annotate(report)
        return True

    def _remove_startup_taint(self) -> None:
        """Once every source is read and applied: take the startup taint off this Node (retried
        with backoff on failure, at most once every 5 s; nothing when the Node has none)."""
        if self._taint_done or not self._status.first_sync_done or self.clock() < self._taint_next_try:
            return
        if not self.book.fully_read():
            return  # a source not read yet: the node may still lack credentials
        if self.api is None or not self.settings.node_name:
            self.log.warning("startup_taint_skipped", reason="no API access or node name")
            self._taint_done = True
            return
        try:
            removed = self.api.remove_node_taint(self.settings.node_name, STARTUP_TAINT)
        except KubeError as exc:
            self._taint_failures += 1
            delay = min(60.0, 5.0 * 2 ** (self._taint_failures - 1))
            self._taint_next_try = self.clock() + delay
            self.log.warning("startup_taint_failed", status=exc.status, error=str(exc), retry_in_s=delay)
            return
        self._taint_done = True
        if removed:
            self.log.info("startup_taint_removed", taint=STARTUP_TAINT)
            self._emit("StartupTaintRemoved", f"{STARTUP_TAINT} removed: the node has its registry credentials")

    def _notice_outside_restart(self, report: SyncReport) -> None:
        """With policy none, someone else restarts containerd: once the running containerd is
        newer than the files holding the agent's credentials, nothing is pending any more."""
        assert self.restarter is not None
        mtimes = []
        for path in report.containerd_auth_files:
            try:
                mtimes.append(os.stat(self.hostfs.real_path(path)).st_mtime)
            except OSError:
                continue
        process = find_containerd(self.restarter.settings.config)
        if mtimes and restart_pending(max(mtimes), process) is False:
            self.restarter.pending = False
            self.metrics.containerd_restart_pending.set(0)
            self.log.info("containerd_restart_observed", why="containerd started after its credentials changed")

    def _restart_containerd(self) -> None:
        """Apply the restart policy to a pending config.toml credential change."""
        assert self.restarter is not None
        try:
            outcome = self.restarter.maybe_restart()
        except NodeagentError as exc:
            self.metrics.containerd_restart_pending.set(1)
            self.metrics.containerd_restarts.labels("failure").inc()
            self.log.error("containerd_restart_failed", error=str(exc), policy=self.restarter.settings.restart)
            self._emit("ContainerdRestartFailed", str(exc), warning=True)
            return
        self.metrics.containerd_restart_pending.set(1 if self.restarter.pending else 0)
        if outcome == "restarted":
            self.metrics.containerd_restarts.labels("success").inc()
            self.log.warning("containerd_restarted", policy=self.restarter.settings.restart)
            self._emit("ContainerdRestarted", "containerd restarted to apply config.toml credentials")
        elif outcome == "pending":
            self.log.warning(
                "containerd_restart_pending",
                config=self.restarter.settings.config,
                why="containerd reads config.toml credentials only at start (--containerd-restart none)",
            )
        elif outcome == "deferred":
            self.log.info("containerd_restart_deferred", interval=self.restarter.settings.restart_interval)

    def _drift_repaired(self, now: float) -> None:
        self.metrics.drift_repairs.inc()
        self.log.warning("drift_repaired", path=self.settings.sync.kubelet_config)
        if self.drift.repaired(now):
            message = (
                f"{self.settings.sync.kubelet_config} was rewritten by another writer more than "
                f"{self.settings.drift_limit} times in a minute; pausing drift repair for "
                f"{self.settings.drift_backoff:g}s (the periodic resync still runs)"
            )
            self.log.error("drift_fight", message=message)
            self._emit("DriftFight", message, warning=True)

    def _log_report(self, report: SyncReport, held_because: list[str], latency: float | None) -> None:
        for problem in report.rejected:
            if problem.source == ECR_SOURCE:  # a token still on its way: held, not a bad input
                self.log.info("ecr_token_pending", registry=problem.key)
                continue
            self.log.error(
                "entry_rejected", registry=safe_key(problem.key), source=problem.source, reason=problem.reason
            )
        for problem in report.conflicts:
            self.log.warning(
                "registry_conflict", registry=safe_key(problem.key), source=problem.source, reason=problem.reason
            )
        if report.written or report.removed or latency is not None:  # on changes, not on every resync
            for problem in report.warnings:
                self.log.warning(
                    "entry_warning", registry=safe_key(problem.key), source=problem.source, reason=problem.reason
                )
        changed = bool(report.written or report.removed or report.rejected)
        (self.log.info if changed or latency is not None else self.log.debug)(
            "sync_done",
            registries=report.registries,
            revision=report.revision,
            written=report.written,
            removed=report.removed,
            rejected=len(report.rejected),
            holding=held_because,
            latency_ms=None if latency is None else round(latency * 1000, 2),
            sources=self.book.resource_versions(),
        )
        if report.written or report.removed:
            self._emit("CredentialsSynced", f"{report.registries} registries, revision {report.revision}")
        if report.kubelet_restart_needed:
            message = (
                f"the kubelet's credential-provider config changed ({', '.join(report.provider_configs)}); the "
                "kubelet reads it only at start: restart the kubelet once for the change to take effect"
            )
            self.log.warning("kubelet_restart_needed", message=message)
            self._emit("KubeletRestartNeeded", message, warning=True)
        rejected = [p for p in report.rejected if p.source != ECR_SOURCE]
        if rejected:
            keys = ", ".join(sorted({safe_key(p.key, 60) for p in rejected}))[:600]
            self._emit("EntriesRejected", f"rejected registry entries: {keys}", warning=True)

    def _emit(self, reason: str, message: str, *, warning: bool = False) -> None:
        if self._events is not None:
            self._events.emit(reason, message, warning=warning)

    def _annotate(self, report: SyncReport) -> None:
        if self.api is None or not self.settings.node_name or not self.settings.annotations:
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        api, node, revision = self.api, self.settings.node_name, report.revision

        def annotate() -> None:
            try:
                api.patch_node_annotations(node, {REVISION_ANNOTATION: revision, SYNCED_AT_ANNOTATION: stamp})
                self._status.annotated_revision = revision
            except KubeError as exc:
                self.log.warning("annotate_failed", error=str(exc))

        self._poster.post("annotate node", annotate)
