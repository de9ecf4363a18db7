"""Watch one Secret (and the agent's own Node) through the API, surviving the real server's behaviour.

List, then watch from the list's resourceVersion with ``fieldSelector=metadata.name=NAME`` (so a
Role restricted by ``resourceNames`` is enough) and ``allowWatchBookmarks``. A watch ends
cleanly after a server-side ``timeoutSeconds`` (jittered, so a fleet of agents does not
reconnect in step) and is resumed from the last resourceVersion seen, bookmarks included. The
client read timeout (90 s) is longer than the bookmark interval (about 60 s on a real server),
so a silent but healthy watch is never mistaken for a dead one. ``410 Gone`` (HTTP status or
ERROR event) means list again, for a current resourceVersion; any other failure resumes the watch
from the last resourceVersion seen, without a list. Every retry waits (1 s doubling to 30 s, with
jitter, ``Retry-After`` honoured), and the delay resets only after two minutes without a failure,
never because a list worked: a restarted API server costs each agent one list and one watch per
object, not a relist loop (:data:`BACKOFF_RESET`). 401/403 are reported with an RBAC hint and
retried slowly. The Node is listed by ``fieldSelector`` like a Secret, so its watch starts from
the list's resourceVersion (current), never from the object's own (which may be older than any
watch cache holds: a GET's version made every watch after an API server restart a 410).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from nodeagent.errors import InputError
from nodeagent.kube import KubeAPI, KubeError
from nodeagent.model.credentials import parse_secret
from nodeagent.observe.logging import get_logger
from nodeagent.sources import NODE_SELECTOR_ANNOTATION, Backoff, SourceUpdate, UpdateKind, UpdateSink

__all__ = ["NodeWatcher", "SecretWatcher", "newer_or_equal"]

WATCH_TIMEOUT_RANGE = (240, 360)
"""Server-side watch timeout in seconds, drawn per watch (client-go reflectors use 5-10 min)."""

READ_TIMEOUT = 90.0
"""Client inactivity limit: longer than the ~60 s bookmark interval of a real API server."""

BACKOFF_BASE, BACKOFF_CAP, BACKOFF_RESET = 1.0, 30.0, 120.0
"""Watch retries: 1 s doubling to 30 s with jitter, back to 1 s only after two minutes without a
failure (client-go's reflector: 800 ms, 30 s, 2 min). A list that works does not reset it: one
API server restart then costs each agent a list and a watch, not a relist loop across the fleet."""

TOKEN_HINT = (
    "401: the API server does not accept the agent's token (expired, revoked, or from another cluster); "
    "not an RBAC problem: check the ServiceAccount token the pod mounts, or the --kubeconfig"
)

FORBIDDEN_RETRY = 60.0
"""Default: 401/403 need a person to fix RBAC; retrying faster only floods the API server's audit log."""


class _Relist(Exception):
    pass


def newer_or_equal(candidate: str, current: str | None) -> bool:
    """Whether ``candidate`` is not older than ``current``.

    resourceVersions are opaque by contract, but every real server uses the etcd revision, an
    integer; when both parse as integers they are compared, otherwise the candidate is accepted.
    """
    if not current or not candidate:
        return True
    try:
        return int(candidate) >= int(current)
    except ValueError:
        return True


class _Watcher(threading.Thread):
    """Shared list/watch loop; subclasses say what to fetch and what to do with objects."""

    path: str

    def __init__(
        self,
        *,
        api: KubeAPI,
        name: str,
        stop: threading.Event,
        on_start: Callable[[str], None],
        forbidden_retry: float = FORBIDDEN_RETRY,
        watch_timeout: tuple[int, int] = WATCH_TIMEOUT_RANGE,
    ) -> None:
        super().__init__(daemon=True, name=f"watch-{name}")
        self.api, self.obj_name, self.stop = api, name, stop
        self.forbidden_retry, self.watch_timeout = forbidden_retry, watch_timeout
        self.watching = False
        self._on_start = on_start
        self._rng = random.Random()  # noqa: S311 - jitter only
        self._backoff = Backoff(base=BACKOFF_BASE, cap=BACKOFF_CAP, rng=self._rng, reset_after=BACKOFF_RESET)
        self._last_rv: str | None = None
        self.resume_rv = ""
        self.log = get_logger(watch=self.label)

    @property
    def label(self) -> str:
        raise NotImplementedError

    def _list(self) -> tuple[dict[str, Any] | None, str]:
        raise NotImplementedError

    def _apply(self, event_type: str, obj: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def _accept(self, obj: dict[str, Any] | None, event_type: str) -> None:
        rv = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
        if obj is not None and not newer_or_equal(rv, self._last_rv):
            self.log.warning("stale_object_ignored", resource_version=rv, current=self._last_rv)
            return
        if rv:
            self._last_rv = rv
        self._apply(event_type, obj)

    def run(self) -> None:
        rv: str | None = None  # None: list first (at start, and after a 410)
        while not self.stop.is_set():
            try:
                if rv is None:
                    obj, rv = self._list()
                    self._accept(obj, "LIST")
                rv = self._watch_from(rv)
            except _Relist:
                # The resourceVersion is gone (compaction, or a restarted server's new watch
                # cache): list again for a current one, after the same backoff as any failure,
                # so a server that keeps answering 410 is not asked in a loop.
                rv = None
                self.watching = False
                delay = self._backoff.next()
                self.log.info("watch_expired_relisting", retry_in_s=round(delay, 2))
                self.stop.wait(delay)
            except KubeError as exc:
                self.watching = False
                rv = None if exc.status == 410 or rv is None else self.resume_rv
                self._failed(exc)
            except Exception as exc:
                # A bug or an input no parser anticipated: say so, back off and list again; the
                # thread never dies of it (a dead watcher would stop rotation on every node).
                if self.stop.is_set():
                    return  # shutting down: whatever failed, nothing is to be reported or retried
                rv = None
                self.watching = False
                delay = self._backoff.next()
                self.log.error("watch_crashed", error_type=type(exc).__name__, retry_in_s=round(delay, 2))
                self.stop.wait(delay)

    def _watch_from(self, rv: str) -> str:
        """Watch from ``rv`` until the server ends the watch; the last resourceVersion seen. A
        failure mid-stream is raised with ``self.resume_rv`` set, so the watch resumes from there
        without a list (only a 410 needs one)."""
        self.resume_rv = rv
        self._on_start(self.label)
        while not self.stop.is_set():
            self.watching = True
            timeout = self._rng.randint(*self.watch_timeout)
            for event in self.api.watch(
                self.path, name=self.obj_name, resource_version=rv, timeout_seconds=timeout, read_timeout=READ_TIMEOUT
            ):
                if self.stop.is_set():
                    return rv
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise _Relist()
                    retry_after = ((obj.get("details") or {}).get("retryAfterSeconds")) or None
                    raise KubeError(
                        f"watch {self.label}",
                        code if isinstance(code, int) else None,
                        str(obj.get("reason")),
                        float(retry_after) if isinstance(retry_after, int) else None,
                    )
                new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    rv = self.resume_rv = new_rv
                    continue
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._accept(obj, str(kind))
                    if newer_or_equal(new_rv, rv):
                        rv = self.resume_rv = new_rv
        return rv

    def _failed(self, exc: KubeError) -> None:
        if exc.status in (401, 403):
            self._refused(exc)
            delay = self._rng.uniform(self.forbidden_retry / 2, self.forbidden_retry)
            self.log.error(
                "watch_forbidden" if exc.status == 403 else "watch_unauthorized",
                status=exc.status,
                error=str(exc),
                hint=self.rbac_hint if exc.status == 403 else TOKEN_HINT,
                retry_in_s=round(delay, 1),
            )
        else:
            delay = self._backoff.next()
            if exc.retry_after:
                delay = max(delay, min(exc.retry_after, 30.0))
            self.log.warning("watch_failed", status=exc.status, error=str(exc), retry_in_s=round(delay, 2))
        self.stop.wait(delay)

    rbac_hint = ""

    def _refused(self, exc: KubeError) -> None:
        """The API refused us (401/403): subclasses may tell the agent."""


class SecretWatcher(_Watcher):
    """Keeps one Secret's parsed state flowing to the agent."""

    def __init__(
        self,
        *,
        api: KubeAPI,
        namespace: str,
        name: str,
        sink: UpdateSink,
        stop: threading.Event,
        on_start: Callable[[str], None],
        forbidden_retry: float = FORBIDDEN_RETRY,
        watch_timeout: tuple[int, int] = WATCH_TIMEOUT_RANGE,
    ) -> None:
        self.namespace = namespace
        self.path = f"namespaces/{namespace}/secrets"
        self._sink = sink
        self._seen = False
        super().__init__(
            api=api, name=name, stop=stop, on_start=on_start, forbidden_retry=forbidden_retry,
            watch_timeout=watch_timeout,
        )  # fmt: skip
        self.rbac_hint = (
            f"grant get/list/watch on secrets named {name!r} in namespace {namespace!r} to the agent's "
            "service account (a Role with resourceNames and a RoleBinding)"
        )

    @property
    def label(self) -> str:
        return f"secret:{self.namespace}/{self.obj_name}"

    def _list(self) -> tuple[dict[str, Any] | None, str]:
        return self.api.list_secret(self.namespace, self.obj_name)

    def _refused(self, exc: KubeError) -> None:
        # Not "absent": the Secret may well exist. The agent applies the other sources, keeps
        # whatever this one gave before, and stays not ready naming it.
        error = f"{exc.status} {'Unauthorized' if exc.status == 401 else 'Forbidden'}: "
        error += TOKEN_HINT if exc.status == 401 else self.rbac_hint
        self._sink(SourceUpdate(self.label, "unreadable", time.monotonic(), error=error))

    def _apply(self, event_type: str, obj: dict[str, Any] | None) -> None:
        now = time.monotonic()
        metadata = (obj or {}).get("metadata") or {}
        rv = metadata.get("resourceVersion")
        if obj is None or event_type == "DELETED":
            kind: UpdateKind = "deleted" if self._seen or event_type == "DELETED" else "absent"
            self._sink(SourceUpdate(self.label, kind, now, error="Secret not found", resource_version=rv))
            return
        self._seen = True
        selector = (metadata.get("annotations") or {}).get(NODE_SELECTOR_ANNOTATION)
        try:
            result = parse_secret(obj, source=self.label)
        except InputError as exc:
            self._sink(
                SourceUpdate(self.label, "invalid", now, error=exc.reason, node_selector=selector, resource_version=rv)
            )
            return
        self._sink(SourceUpdate(self.label, "data", now, result=result, node_selector=selector, resource_version=rv))


class NodeWatcher(_Watcher):
    """Follows the agent's own Node's labels (for node-scoped Secrets) and uid (for Events)."""

    path = "nodes"

    def __init__(
        self,
        *,
        api: KubeAPI,
        name: str,
        on_labels: Callable[[dict[str, str], str], None],
        stop: threading.Event,
        on_start: Callable[[str], None],
        forbidden_retry: float = FORBIDDEN_RETRY,
    ) -> None:
        self._on_labels = on_labels
        super().__init__(api=api, name=name, stop=stop, on_start=on_start, forbidden_retry=forbidden_retry)
        self.rbac_hint = "grant get, list and watch on nodes to the agent's service account (a ClusterRole)"

    @property
    def label(self) -> str:
        return f"node:{self.obj_name}"

    def _list(self) -> tuple[dict[str, Any] | None, str]:
        return self.api.list_node(self.obj_name)

    def _apply(self, event_type: str, obj: dict[str, Any] | None) -> None:
        if obj is None or event_type == "DELETED":
            return
        metadata = obj.get("metadata") or {}
        self._on_labels(dict(metadata.get("labels") or {}), str(metadata.get("uid") or ""))
