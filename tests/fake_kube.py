"""A fake Kubernetes API server that speaks the real list/watch wire protocol, for tests.

No API server can run on the test machines, so the agent's Kubernetes client (the official
``kubernetes`` Python client, unmodified) talks to this over real HTTP/1.1. What it imitates,
and where each behaviour comes from:

* Paths, verbs and bodies of the core/v1 API: ``/api/v1/namespaces/{ns}/secrets``,
  ``/api/v1/nodes/{name}``, ``/api/v1/namespaces/{ns}/events`` (Kubernetes API reference).
* List responses carry the collection ``metadata.resourceVersion``; objects carry their own
  ``metadata.resourceVersion`` from one cluster-wide, increasing counter (etcd revision;
  "Resource versions", API concepts).
* ``fieldSelector=metadata.name=NAME`` filters lists and watches (supported for every resource).
* ``watch=true``: HTTP 200 with ``Transfer-Encoding: chunked``, one JSON object per line:
  ``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": ...}`` ("Efficient
  detection of changes", API concepts). Events strictly after the requested resourceVersion
  are replayed from history, then new ones stream live. A DELETED event carries the object's
  last state with a new resourceVersion.
* ``allowWatchBookmarks=true``: BOOKMARK events whose object holds only ``kind``, ``apiVersion``
  and ``metadata.resourceVersion`` ("Watch bookmarks"); the real server sends them about once
  a minute, here every ``bookmark_interval`` seconds.
* ``timeoutSeconds``: the server ends the watch after that many seconds (clean end of stream).
* A watch from a resourceVersion older than the compaction point gets HTTP 200 and then an
  ``ERROR`` event whose object is a ``Status`` with ``code: 410`` and ``reason: Expired``
  ("410 Gone responses"); a list with such a resourceVersion gets HTTP 410.
* Errors are ``Status`` objects: 401 without the bearer token, 403 for a Secret name not
  granted to the token (as with a Role restricted by ``resourceNames``), 404 for a missing
  object, 429 with ``Retry-After``, 500 (fault injection).
* Fault injection, beyond the real protocol: dropped streams, an event cut in the middle, 500,
  429 with ``Retry-After``, slow answers, compaction (410), a stale object replayed as a new
  event, and an outage during which every connection is dropped.
* PATCH of a Node accepts ``application/merge-patch+json`` and
  ``application/strategic-merge-patch+json`` (for maps, both merge keys and delete ``null``s).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class _Change:
    rv: int
    resource: str  # "secrets" or "nodes"
    namespace: str
    name: str
    type: str
    obj: dict[str, Any]


@dataclass
class Fault:
    """One injected fault, consumed by the next matching request."""

    kind: str  # "status" | "drop" | "slow"
    status: int = 500
    seconds: float = 0.0
    watch_only: bool = False


@dataclass
class FakeKube:
    token: str = "test-token"
    bookmark_interval: float = 1.0
    forbidden_secrets: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._rv = 1000
        self._secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._history: list[_Change] = []
        self._compacted = 0
        self._generation = 0  # bumped to drop every open watch
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: list[Fault] = []
        self.active_watches = 0
        self.outage = False
        self._cut_pending = False
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            kube = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.drop_watches()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def kubeconfig(self, url: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "agent", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
            "current-context": "fake",
        }

    # -- state changes (test side) -------------------------------------------------------------
    def _record(self, resource: str, ns: str, name: str, type_: str, obj: dict[str, Any]) -> int:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append(_Change(self._rv, resource, ns, name, type_, copy.deepcopy(obj)))
        self._lock.notify_all()
        return self._rv

    def put_secret(
        self,
        namespace: str,
        name: str,
        *,
        data: dict[str, bytes],
        type_: str = "kubernetes.io/dockerconfigjson",
        annotations: dict[str, str] | None = None,
    ) -> int:
        with self._lock:
            existing = self._secrets.get((namespace, name))
            obj = {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": (existing or {}).get("metadata", {}).get("uid", f"uid-{namespace}-{name}-{self._rv}"),
                    "annotations": dict(annotations or {}),
                },
                "type": type_,
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            }
            self._secrets[(namespace, name)] = obj
            return self._record("secrets", namespace, name, "MODIFIED" if existing else "ADDED", obj)

    def delete_secret(self, namespace: str, name: str) -> int:
        with self._lock:
            obj = self._secrets.pop((namespace, name))
            return self._record("secrets", namespace, name, "DELETED", obj)

    def put_node(self, name: str, labels: dict[str, str] | None = None) -> int:
        with self._lock:
            existing = self._nodes.get(name)
            obj = existing or {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": name, "uid": f"uid-node-{name}", "annotations": {}},
            }
            obj["metadata"]["labels"] = dict(labels or {})
            self._nodes[name] = obj
            return self._record("nodes", "", name, "MODIFIED" if existing else "ADDED", obj)

    def node(self, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._nodes[name])

    def expire(self) -> None:
        """Compact history: every resourceVersion up to now is too old; open watches get 410."""
        with self._lock:
            self._rv += 1  # writes to other objects move the cluster's revision on
            self._compacted = self._rv
            self._generation += 1
            self._lock.notify_all()

    def drop_watches(self) -> None:
        """Close every open watch stream abruptly (a connection drop)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    def cut_next_event(self) -> None:
        """The next watch event is cut in the middle: half its bytes, then the connection closes."""
        with self._lock:
            self._cut_pending = True

    def replay_stale(self, namespace: str, name: str, obj: dict[str, Any]) -> None:
        """Deliver ``obj`` (carrying an old resourceVersion) as a new MODIFIED event, as a buggy
        or lagging cache might."""
        with self._lock:
            self._history.append(_Change(self._rv + 1, "secrets", namespace, name, "MODIFIED", copy.deepcopy(obj)))
            self._rv += 1
            self._lock.notify_all()

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._secrets[(namespace, name)])

    def set_outage(self, down: bool) -> None:
        """While down, every connection is dropped before any answer (the API server is gone)."""
        with self._lock:
            self.outage = down
            if down:
                self._generation += 1
                self._lock.notify_all()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    # -- request side ----------------------------------------------------------------------------
    def _take_fault(self, watch: bool) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if not fault.watch_only or watch:
                    return self.faults.pop(i)
        return None

    def _watch(
        self, resource: str, ns: str, name: str | None, since: int, timeout: float, bookmarks: bool
    ) -> Iterator[dict[str, Any] | None]:
        """Yield watch events (None means: drop the stream abruptly). Never yields under the lock."""
        deadline = time.monotonic() + timeout
        with self._lock:
            generation = self._generation
            expired = since < self._compacted
            self.active_watches += 1
        try:
            if expired:
                yield _status(410, "Expired", f"too old resource version: {since} ({self._compacted})", event=True)
                return
            last = since
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                batch: list[dict[str, Any] | None] = []
                finished = False
                with self._lock:
                    if self._generation != generation:
                        if last < self._compacted:
                            batch.append(_status(410, "Expired", f"too old resource version: {last}", event=True))
                        else:
                            batch.append(None)
                        finished = True
                    else:
                        for change in self._history:
                            wanted = change.resource == resource and change.namespace == ns
                            if change.rv > last and wanted and (name is None or change.name == name):
                                batch.append({"type": change.type, "object": copy.deepcopy(change.obj)})
                        if self._history:
                            last = max(last, self._history[-1].rv)
                        now = time.monotonic()
                        if bookmarks and now >= next_bookmark:
                            kind = "Secret" if resource == "secrets" else "Node"
                            meta = {"resourceVersion": str(self._rv)}
                            batch.append(
                                {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1", "metadata": meta}}
                            )
                            last = max(last, self._rv)
                            next_bookmark = now + self.bookmark_interval
                        if now >= deadline:
                            finished = True
                        elif not batch:
                            self._lock.wait(max(0.0, min(deadline, next_bookmark) - now))
                yield from batch
                if finished:
                    return
        finally:
            with self._lock:
                self.active_watches -= 1


class _QuietServer(ThreadingHTTPServer):
    """Clients that vanish mid-request (a killed agent) are normal here, not worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


def _status(code: int, reason: str, message: str, *, event: bool = False) -> dict[str, Any]:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return {"type": "ERROR", "object": status} if event else status


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send_json(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(code, _status(code, reason, message), headers)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        kube = self.kube
        kube.requests.append((method, self.path))
        if kube.outage:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if self.headers.get("Authorization") != f"Bearer {kube.token}":
            self._error(401, "Unauthorized", "Unauthorized")
            return
        watch = query.get("watch") in ("true", "1")
        fault = kube._take_fault(watch)
        if fault is not None:
            if fault.kind == "slow":
                time.sleep(fault.seconds)
            elif fault.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            elif fault.kind == "status":
                headers = {"Retry-After": "1"} if fault.status == 429 else None
                self._error(
                    fault.status,
                    "TooManyRequests" if fault.status == 429 else "InternalError",
                    "injected fault",
                    headers,
                )
                return
        parts = [p for p in url.path.split("/") if p]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if parts[:2] != ["api", "v1"]:
            self._error(404, "NotFound", "not found")
            return
        rest = parts[2:]
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == "secrets" and method == "GET":
            self._secrets(rest[1], rest[3] if len(rest) > 3 else None, query, watch)
        elif rest[:1] == ["nodes"] and method == "GET":
            self._nodes(rest[1] if len(rest) > 1 else None, query, watch)
        elif rest[:1] == ["nodes"] and method == "PATCH" and len(rest) == 2:
            self._patch_node(rest[1], body)
        elif len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "events" and method == "POST":
            assert body is not None
            with kube._lock:
                kube.events.append(body)
            self._send_json(201, body)
        else:
            self._error(405, "MethodNotAllowed", f"{method} {url.path}")

    def _field_name(self, query: dict[str, str]) -> str | None:
        selector = query.get("fieldSelector", "")
        if selector.startswith("metadata.name="):
            return selector.split("=", 1)[1]
        return None

    def _secrets(self, ns: str, name: str | None, query: dict[str, str], watch: bool) -> None:
        kube = self.kube
        name = name or self._field_name(query)
        if name is None or (ns, name) in kube.forbidden_secrets:
            self._error(403, "Forbidden", f'secrets "{name}" is forbidden: cannot list resource "secrets" in "{ns}"')
            return
        if watch:
            self._stream("secrets", ns, name, query)
            return
        with kube._lock:
            item = kube._secrets.get((ns, name))
            body = {
                "kind": "SecretList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(kube._rv)},
                "items": [copy.deepcopy(item)] if item else [],
            }
        self._send_json(200, body)

    def _nodes(self, name: str | None, query: dict[str, str], watch: bool) -> None:
        kube = self.kube
        if watch:
            self._stream("nodes", "", name or self._field_name(query), query)
            return
        if name is None:  # a list (the agent's: by fieldSelector, one name)
            wanted = self._field_name(query)
            with kube._lock:
                items = [copy.deepcopy(n) for key, n in kube._nodes.items() if wanted in (None, key)]
                body = {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": str(kube._rv)}}
            self._send_json(200, {**body, "items": items})
            return
        with kube._lock:
            node = copy.deepcopy(kube._nodes.get(name))
        if node is None:
            self._error(404, "NotFound", f'nodes "{name}" not found')
        else:
            self._send_json(200, node)

    def _patch_node(self, name: str, body: Any) -> None:
        kube = self.kube
        ctype = self.headers.get("Content-Type", "")
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            self._error(415, "UnsupportedMediaType", ctype)
            return
        with kube._lock:
            node = kube._nodes.get(name)
            if node is None:
                self._error(404, "NotFound", f'nodes "{name}" not found')
                return
            for section in ("annotations", "labels"):
                patch = (body or {}).get("metadata", {}).get(section)
                if patch:
                    target = node["metadata"].setdefault(section, {})
                    for k, v in patch.items():
                        if v is None:
                            target.pop(k, None)
                        else:
                            target[k] = v
            kube._record("nodes", "", name, "MODIFIED", node)
            result = copy.deepcopy(node)
        self._send_json(200, result)

    def _stream(self, resource: str, ns: str, name: str | None, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in self.kube._watch(resource, ns, name, since, timeout, bookmarks):
                if event is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                data = json.dumps(event).encode() + b"\n"
                with self.kube._lock:
                    cut = self.kube._cut_pending and event["type"] != "BOOKMARK"
                    if cut:
                        self.kube._cut_pending = False
                if cut:
                    half = data[: len(data) // 2]
                    self.wfile.write(f"{len(data):x}\r\n".encode() + half)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._route("GET")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_POST(self) -> None:
        self._route("POST")
