"""Start one watcher per source (a Secret through the API, a file on disk) and, with a node name,
the Node watcher; each reports to the agent from its own thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from nodeagent.config import SourceSpec
from nodeagent.errors import NodeagentError
from nodeagent.kube import KubeAPI

from . import UpdateSink
from .files import FileWatcher
from .kube import NodeWatcher, SecretWatcher

__all__ = ["start_watchers"]


def start_watchers(
    specs: Sequence[SourceSpec],
    *,
    api: KubeAPI | None,
    sink: UpdateSink,
    node_name: str | None,
    on_node: Callable[[dict[str, str], str], None],
    stop: threading.Event,
    forbidden_retry: float,
    on_start: Callable[[str], None],
    into: list[Any],
) -> None:
    """Start every watcher, appending each to ``into`` before it starts (the agent's liveness
    reads that list)."""
    for spec in specs:
        if spec.kind == "file":
            watcher: Any = FileWatcher(spec.ref, sink, namespaces=spec.namespaces)
        elif api is None:
            raise NodeagentError("a --secret source needs API access")
        else:
            namespace, name = spec.ref.split("/", 1)
            watcher = SecretWatcher(
                api=api, namespace=namespace, name=name, sink=sink, on_start=on_start, stop=stop,
                forbidden_retry=forbidden_retry,
            )  # fmt: skip
        into.append(watcher)
        watcher.start()
        if spec.kind == "file":
            on_start(watcher.label)
    if api is not None and node_name:
        node = NodeWatcher(
            api=api, name=node_name, on_labels=on_node, on_start=on_start, stop=stop, forbidden_retry=forbidden_retry
        )
        into.append(node)
        node.start()
