"""The source book: what each source last said, the last good content of each, and the node's
labels, turned into the credentials this node should have. No threads, no I/O, no logging: the
agent records updates into it (from its watcher threads) and asks it for the desired state.

Policy in one place: an invalid or unreadable source keeps its last good content (bad input or a
missing permission never takes credentials away); a deleted one keeps it unless
``on_secret_deleted`` is ``remove``; a source with nothing good yet holds what the node has.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from nodeagent.model.credentials import ParseResult
from nodeagent.model.selectors import InvalidSelector, Selector, parse_selector
from nodeagent.sources import SourceUpdate

__all__ = ["Recorded", "SourceBook", "SourceState"]


@dataclass
class SourceState:
    label: str
    reported: bool = False
    status: str = "unknown"
    last_good: ParseResult | None = None
    selector: Selector | None = None
    error: str | None = None
    resource_version: str | None = None


@dataclass(frozen=True)
class Recorded:
    """What one update changed: the source's status before and after, and its error."""

    status: str
    previous: str
    error: str | None
    kept_last_good: bool


class SourceBook:
    def __init__(self, labels: list[str], *, on_deleted: Literal["keep", "remove"] = "keep") -> None:
        self._states = {label: SourceState(label) for label in labels}
        self._on_deleted = on_deleted
        self._node_labels: dict[str, str] | None = None
        self._lock = threading.Lock()

    def record(self, update: SourceUpdate) -> Recorded:
        """Take in one source update (from any thread)."""
        with self._lock:
            state = self._states[update.source]
            previous = state.status
            state.reported = True
            state.resource_version = update.resource_version
            state.error = update.error
            selector_problem = None
            try:
                if update.kind != "unreadable":  # an unreadable source keeps the scoping it had
                    state.selector = parse_selector(update.node_selector) if update.node_selector else None
            except InvalidSelector as exc:
                selector_problem = str(exc)
            if selector_problem is not None:
                state.status = "invalid"
                state.error = f"annotation nodeagent.io/node-selector: {selector_problem}"
            elif update.kind == "data":
                state.status, state.last_good = "valid", update.result
            elif update.kind in ("invalid", "unreadable"):
                state.status = update.kind
            elif self._on_deleted == "remove":
                state.status, state.last_good = update.kind, None
            else:
                state.status = update.kind
            return Recorded(state.status, previous, state.error, state.last_good is not None)

    def set_node_labels(self, labels: dict[str, str]) -> bool:
        """The node's labels (for node-scoped sources); True when they changed."""
        with self._lock:
            changed = labels != self._node_labels
            self._node_labels = labels
            return changed

    def all_reported(self) -> bool:
        with self._lock:
            return all(s.reported for s in self._states.values())

    def waiting(self) -> list[str]:
        """Sources that have not reported yet."""
        with self._lock:
            return [label for label, s in self._states.items() if not s.reported]

    def unreadable(self) -> list[str]:
        """Sources the API refused us, each with its error."""
        with self._lock:
            return [f"{label} ({s.error})" for label, s in self._states.items() if s.status == "unreadable"]

    def fully_read(self) -> bool:
        """Every source has been read at least once (the node may lack nothing it should have)."""
        with self._lock:
            return not any(s.status in ("unreadable", "unknown") for s in self._states.values())

    def resource_versions(self) -> dict[str, str | None]:
        with self._lock:
            return {label: s.resource_version for label, s in self._states.items()}

    def desired(self) -> tuple[list[ParseResult], bool, list[str]]:
        """The sources that apply to this node, in order; whether to hold everything the node has
        (a source with nothing good yet, or node labels not known yet); and why."""
        results: list[ParseResult] = []
        hold_all = False
        held_because: list[str] = []
        with self._lock:
            labels = self._node_labels
            for state in self._states.values():
                if state.selector is not None:
                    if labels is None:
                        hold_all = True
                        held_because.append(f"{state.label}: node labels not known yet")
                        continue
                    if not state.selector.matches(labels):
                        continue
                if state.last_good is not None:
                    results.append(state.last_good)
                elif state.status in ("invalid", "unreadable") or (
                    state.status in ("deleted", "absent") and self._on_deleted == "keep"
                ):
                    hold_all = True
                    held_because.append(f"{state.label}: {state.status} with no last good content")
        return results, hold_all, held_because
