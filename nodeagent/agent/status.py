"""What the agent tells people: metrics, logs, Events and the Node's annotations.

Events and Node patches go out on the poster's thread through a bounded queue, so a slow API
server never delays a write. No decisions are made here: the agent reports what happened.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodeagent.ecr.service import ECR_SOURCE
from nodeagent.kube import KubeAPI, KubeError
from nodeagent.model.credentials import safe_key
from nodeagent.observe.events import EventRecorder
from nodeagent.observe.metrics import Metrics
from nodeagent.observe.posting import Poster
from nodeagent.reconcile import SyncReport
from nodeagent.sources import SourceUpdate

from .book import Recorded

__all__ = ["REVISION_ANNOTATION", "SYNCED_AT_ANNOTATION", "Status"]

REVISION_ANNOTATION = "nodeagent.io/credentials-revision"
SYNCED_AT_ANNOTATION = "nodeagent.io/synced-at"


@dataclass
class Health:
    first_sync_done: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    annotated_revision: str | None = None


class Status:
    """The agent's reports: one method per thing that happened."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        log: Any,
        api: KubeAPI | None,
        node_name: str | None,
        events: bool,
        annotations: bool,
        event_namespace: str,
        on_secret_deleted: str,
        clock: Callable[[], float],
        source_count: int = 1,
    ) -> None:
        self.metrics, self.log, self.api, self.node_name = metrics, log, api, node_name
        self.annotations = annotations
        self.on_secret_deleted, self.source_count = on_secret_deleted, source_count
        self.clock = clock
        self.health = Health(heartbeat=clock())
        self.poster = Poster()
        self._conflicts: frozenset[str] = frozenset()
        self._rejected: frozenset[str] = frozenset()
        self.events = (
            EventRecorder(api=api, node_name=node_name, namespace=event_namespace, poster=self.poster)
            if api is not None and node_name and events
            else None
        )

    def beat(self) -> None:
        self.health.heartbeat = self.clock()

    def emit(self, reason: str, message: str, *, warning: bool = False) -> None:
        if self.events is not None:
            self.events.emit(reason, message, warning=warning)

    def source_recorded(self, update: SourceUpdate, recorded: Recorded) -> None:
        log = self.log.bind(source=update.source, resource_version=update.resource_version)
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
                rest = "the other sources still apply" if self.source_count > 1 else "the node keeps what it has"
                event = ("SourceUnreadable", f"{update.source}: {recorded.error}; {rest}")
        elif update.kind in ("deleted", "absent"):
            keep = self.on_secret_deleted == "keep"
            log.warning(
                "source_deleted" if update.kind == "deleted" else "source_absent",
                error=update.error,
                policy=self.on_secret_deleted,
                consequence="credentials kept on the node" if keep else "credentials removed from the node",
            )
            event = ("SourceDeleted", f"{update.source} not found; credentials {'kept' if keep else 'removed'}")
        if event is not None:
            self.emit(event[0], event[1], warning=True)

    def pass_failed(self, error: str, error_type: str) -> None:
        self.metrics.syncs.labels("failure").inc()
        self.log.error("sync_failed", error=error, error_type=error_type)
        self.emit("CredentialsSyncFailed", error, warning=True)

    def pass_crashed(self, error_type: str) -> None:
        self.metrics.syncs.labels("failure").inc()
        self.log.error("sync_crashed", error_type=error_type)
        self.emit("CredentialsSyncFailed", f"internal error ({error_type}); retrying", warning=True)

    def pass_done(
        self, report: SyncReport, *, changes: int, latency: float | None, held_because: list[str], sources: Any
    ) -> None:
        """Metrics, logs and Events of one applied pass, and the Node's annotations when it changed."""
        bad_input = any(p.source != ECR_SOURCE for p in report.rejected)
        # Holding (a source of unknown state): the node keeps what it had, which is not the
        # revision of this pass's sources; counted and annotated as such, not as a success.
        result = "held" if held_because else "partial" if bad_input else "success"
        self.metrics.syncs.labels(result).inc()
        self.metrics.last_success.set(time.time())
        self.metrics.managed.set(report.registries)
        self.metrics.writes.inc(changes)
        rejected = frozenset(str(p) for p in report.rejected if p.source != ECR_SOURCE)
        for problem in report.rejected:  # once per change, not once per pass
            if problem.source != ECR_SOURCE and str(problem) not in self._rejected:
                self.metrics.rejected.labels(problem.source).inc()
        if latency is not None:
            self.metrics.propagation.observe(max(0.0, latency))
        self._log_report(report, held_because, latency, sources, new_rejections=rejected - self._rejected)
        self._rejected = rejected
        conflicts = frozenset(str(p) for p in report.conflicts)
        if conflicts - self._conflicts:  # one Event when a conflict appears, not on every resync
            self.emit("SyncConflict", "; ".join(sorted(conflicts))[:1000], warning=True)
        self._conflicts = conflicts
        self.health.first_sync_done = True
        if held_because:
            return  # the revision annotation says what the node has: not known while holding
        if report.written or report.removed or self.health.annotated_revision != report.revision:
            self._annotate(report.revision)

    def _log_report(
        self, report: SyncReport, held_because: list[str], latency: float | None, sources: Any, new_rejections: Any
    ) -> None:
        for problem in report.rejected:
            if problem.source == ECR_SOURCE:  # a token still on its way: held, not a bad input
                self.log.info("ecr_token_pending", registry=problem.key)
                continue
            (self.log.error if str(problem) in new_rejections else self.log.debug)(
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
            sources=sources,
        )
        if report.written or report.removed:
            count = f"{report.registries} {'registry' if report.registries == 1 else 'registries'}"
            self.emit("CredentialsSynced", f"{count}, revision {report.revision}")
        if report.kubelet_restart_needed:
            message = (
                f"the kubelet's credential-provider config changed ({', '.join(report.provider_configs)}); the "
                "kubelet reads it only at start: restart the kubelet once for the change to take effect"
            )
            self.log.warning("kubelet_restart_needed", message=message)
            self.emit("KubeletRestartNeeded", message, warning=True)
        rejected = [p for p in report.rejected if p.source != ECR_SOURCE]
        if rejected:
            keys = ", ".join(sorted({safe_key(p.key, 60) for p in rejected}))[:600]
            self.emit("EntriesRejected", f"rejected registry entries: {keys}", warning=True)

    def _annotate(self, revision: str) -> None:
        if self.api is None or not self.node_name or not self.annotations:
            return
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        api, node = self.api, self.node_name

        def annotate() -> None:
            try:
                api.patch_node_annotations(node, {REVISION_ANNOTATION: revision, SYNCED_AT_ANNOTATION: stamp})
                self.health.annotated_revision = revision
            except KubeError as exc:
                self.log.warning("annotate_failed", error=str(exc))

        self.poster.post("annotate node", annotate)
