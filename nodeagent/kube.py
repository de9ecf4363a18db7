"""The Kubernetes API seam: the few calls the agent makes, behind a narrow Protocol.

:class:`KubeAPI` is what the rest of the agent sees; :class:`KubernetesClient` implements it
with the official ``kubernetes`` client (configuration, authentication, TLS and HTTP), asking
for raw JSON (``_preload_content=False``) so watch events are read line by line exactly as the
server sends them, and Secrets never pass through model objects. Every transport failure
becomes a :class:`KubeError`; nothing else in the agent sees a client or urllib3 exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from nodeagent.errors import NodeagentError
from nodeagent.model.decoding import DecodeError, loads_json

__all__ = ["KubeAPI", "KubeError", "KubernetesClient"]


class KubeError(NodeagentError):
    """An API call failed. ``status`` is the HTTP status, or None for a connection failure."""

    def __init__(self, what: str, status: int | None, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{what}: {status or 'connection'} {reason}".strip())
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class KubeAPI(Protocol):
    def list_secret(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The Secret (raw JSON) or None, and the list's resourceVersion."""

    def watch(
        self, path: str, *, name: str, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> Iterator[dict[str, Any]]:
        """Watch events (raw JSON) of one named object in a collection path, e.g. ``namespaces/ns/secrets``."""

    def get_node(self, name: str) -> dict[str, Any]:
        """The Node (raw JSON)."""

    def list_node(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The Node (raw JSON) or None, and the list's resourceVersion (a watch starts there)."""

    def patch_node_annotations(self, name: str, annotations: dict[str, str | None]) -> None:
        """Merge-patch the Node's annotations (None deletes a key)."""

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a core/v1 Event."""

    def remove_node_taint(self, name: str, key: str) -> bool:
        """Remove the Node's taint with this key (False: it had none)."""

    def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The DaemonSet (raw JSON), or None when it does not exist."""

    def delete_daemonset(self, namespace: str, name: str) -> None:
        """Delete the DaemonSet (its pods follow through garbage collection)."""


def _api_reason(exc: Any) -> str:
    """What the API server said: the ``message`` of the Status it answered (an admission policy's
    denial, an RBAC refusal naming the verb and resource), else the HTTP reason. Status messages
    name objects, never their data; bounded all the same."""
    try:
        body = loads_json(exc.body) if exc.body else None
    except DecodeError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    reason = str(exc.reason or "")
    if isinstance(message, str) and message:
        return f"{reason}: {message[:300]}" if reason else message[:300]
    return reason


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers and headers.get("Retry-After") else None
    except (TypeError, ValueError):
        return None


_TOKEN_WHITESPACE = (
    "the API token contains a newline or other whitespace that HTTP headers cannot carry: check the token "
    "(or tokenFile) in the kubeconfig"
)


def _strip_token(configuration: Any) -> None:
    """A token file written with a trailing newline (``echo TOKEN > file``) is the token: strip
    the whitespace around it, now and whenever the client refreshes it from the file."""

    def strip(config: Any) -> None:
        config.api_key = {k: v.strip() if isinstance(v, str) else v for k, v in (config.api_key or {}).items()}

    strip(configuration)
    refresh = configuration.refresh_api_key_hook
    if refresh is not None:

        def refreshed(config: Any) -> None:
            refresh(config)
            strip(config)

        configuration.refresh_api_key_hook = refreshed


class KubernetesClient:
    """:class:`KubeAPI` over the official client; in-cluster config unless a kubeconfig is given."""

    def __init__(self, kubeconfig: str | None = None, *, connect_timeout: float = 5.0) -> None:
        from kubernetes import client, config  # the edge of the agent: imported only here

        configuration = client.Configuration()
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except Exception as exc:  # the loaders raise several unrelated types
            where = kubeconfig or "the in-cluster service account"
            raise KubeError(f"loading API credentials from {where}", None, type(exc).__name__) from None
        _strip_token(configuration)
        configuration.retries = 0  # the agent does its own backoff with jitter
        self._api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._apps = client.AppsV1Api(self._api_client)
        self._connect_timeout = connect_timeout

    def _call(self, what: str, fn: Any, *args: Any, read_timeout: float = 30.0, **kwargs: Any) -> Any:
        from kubernetes.client import ApiException

        try:
            return fn(*args, _preload_content=False, _request_timeout=(self._connect_timeout, read_timeout), **kwargs)
        except ApiException as exc:
            raise KubeError(what, exc.status, _api_reason(exc), _retry_after(exc.headers)) from None
        except ValueError as exc:
            if "header" in str(exc).lower():  # http.client refuses a header value with a newline
                raise KubeError(what, None, _TOKEN_WHITESPACE) from None
            raise KubeError(what, None, type(exc).__name__) from None
        except Exception as exc:  # urllib3 / socket errors: never surface the transport type
            raise KubeError(what, None, type(exc).__name__) from None

    def list_secret(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        what = f"list secret {namespace}/{name}"
        response = self._call(
            what, self._core.list_namespaced_secret, namespace, field_selector=f"metadata.name={name}"
        )
        return self._one_item(what, response.data)

    def list_node(self, name: str) -> tuple[dict[str, Any] | None, str]:
        what = f"list node {name}"
        return self._one_item(what, self._call(what, self._core.list_node, field_selector=f"metadata.name={name}").data)

    def _one_item(self, what: str, data: bytes) -> tuple[dict[str, Any] | None, str]:
        body = self._decode(what, data)
        items = body.get("items") or []
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else None
        return item, str((body.get("metadata") or {}).get("resourceVersion", ""))

    def watch(
        self, path: str, *, name: str, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> Iterator[dict[str, Any]]:
        fn: Any
        args: tuple[str, ...]
        if path == "nodes":
            fn, args = self._core.list_node, ()
        else:
            _, namespace, _ = path.split("/")
            fn, args = self._core.list_namespaced_secret, (namespace,)
        response = self._call(
            f"watch {path}/{name}",
            fn,
            *args,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            watch=True,
            read_timeout=read_timeout,
        )
        try:
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._decode(f"watch {path}/{name}", line)
            if buffer.strip():
                yield self._decode(f"watch {path}/{name}", buffer)
        except KubeError:
            raise
        except Exception as exc:
            raise KubeError(f"watch {path}/{name}", None, type(exc).__name__) from None
        finally:
            response.release_conn()

    def get_node(self, name: str) -> dict[str, Any]:
        response = self._call(f"get node {name}", self._core.read_node, name)
        return self._decode(f"get node {name}", response.data)

    @staticmethod
    def _decode(what: str, data: bytes) -> dict[str, Any]:
        """An API answer through the one strict decoder; anything else than an object is a KubeError."""
        try:
            body = loads_json(data)
        except DecodeError as exc:
            raise KubeError(what, None, f"undecodable answer ({exc})") from None
        if not isinstance(body, dict):
            raise KubeError(what, None, "answer is not a JSON object")
        return body

    def patch_node_annotations(self, name: str, annotations: dict[str, str | None]) -> None:
        body = {"metadata": {"annotations": annotations}}
        merge = "application/merge-patch+json"
        what = f"patch node {name}"
        _ = self._call(what, self._core.patch_node, name, body, _content_type=merge, read_timeout=10.0).data  # drained

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._call(f"create event in {namespace}", self._core.create_namespaced_event, namespace, body)

    def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"get daemonset {namespace}/{name}"
        try:
            response = self._call(what, self._apps.read_namespaced_daemon_set, name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return self._decode(what, response.data)

    def delete_daemonset(self, namespace: str, name: str) -> None:
        try:
            self._call(f"delete daemonset {namespace}/{name}", self._apps.delete_namespaced_daemon_set, name, namespace)
        except KubeError as exc:
            if exc.status != 404:
                raise

    def remove_node_taint(self, name: str, key: str) -> bool:

        taints = (self.get_node(name).get("spec") or {}).get("taints") or []
        indexes = [i for i, t in enumerate(taints) if isinstance(t, dict) and t.get("key") == key]
        if not indexes:
            return False
        # Every taint with the key (one per effect: NoSchedule and NoExecute may both be there) in
        # one JSON patch, the last first so the earlier indexes hold, each tested first: a list
        # changed since the read fails (422) rather than removes someone else's taint; and one
        # patch leaves the list as the Node policy allows (all of ours gone), where a patch per
        # taint would be refused half way.
        body = [
            op
            for index in reversed(indexes)
            for op in (
                {"op": "test", "path": f"/spec/taints/{index}/key", "value": key},
                {"op": "remove", "path": f"/spec/taints/{index}"},
            )
        ]
        what = f"remove taint from node {name}"
        self._call(
            what, self._core.patch_node, name, body, _content_type="application/json-patch+json", read_timeout=10.0
        )
        return True
