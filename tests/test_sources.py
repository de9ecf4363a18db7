"""Source watch logic with a scripted API (the list/watch loop's decisions, without HTTP)."""

from __future__ import annotations

import base64
import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.kube import KubeError
from nodeagent.sources import Backoff, SourceUpdate
from nodeagent.sources.kube import SecretWatcher, newer_or_equal


def _secret(rv: int, password: str, **meta: Any) -> dict[str, Any]:
    auth = base64.b64encode(f"u:{password}".encode()).decode()
    data = base64.b64encode(json.dumps({"auths": {"r.example.com": {"auth": auth}}}).encode()).decode()
    return {
        "metadata": {"name": "s", "namespace": "ns", "resourceVersion": str(rv), **meta},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": data},
    }


class ScriptedAPI:
    """Answers list and watch calls from scripts; stops the watcher when a script runs out."""

    def __init__(self, lists: list[Any], watches: list[Any], stop: threading.Event) -> None:
        self.lists, self.watches, self.stop = lists, watches, stop
        self.watch_calls: list[str] = []

    def list_secret(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        if not self.lists:
            self.stop.set()
            raise KubeError("list", 503, "script exhausted")
        item = self.lists.pop(0)
        if isinstance(item, KubeError):
            raise item
        return item

    def watch(
        self, path: str, *, name: str, resource_version: str, timeout_seconds: int, read_timeout: float
    ) -> Iterator[dict[str, Any]]:
        if not self.watches:
            self.stop.set()
            return iter(())
        self.watch_calls.append(resource_version)
        script = self.watches.pop(0)
        if isinstance(script, KubeError):
            raise script
        return iter(script)


def _run(lists: list[Any], watches: list[Any]) -> tuple[list[SourceUpdate], ScriptedAPI]:
    stop = threading.Event()
    api = ScriptedAPI(lists, watches, stop)
    updates: list[SourceUpdate] = []
    watcher = SecretWatcher(api=api, namespace="ns", name="s", sink=updates.append, stop=stop, on_start=lambda _: None)
    watcher._backoff = Backoff(base=0.001, cap=0.002)
    watcher.run()
    return updates, api


def _passwords(updates: list[SourceUpdate]) -> list[str]:
    return [u.result.credentials[0].auth if u.result else u.kind for u in updates]


def test_resumes_from_last_resource_version_and_bookmarks() -> None:
    """After a clean end of stream the watch resumes from the newest resourceVersion, bookmarks included."""
    updates, api = _run(
        [(_secret(5, "a"), "6")],
        [
            [
                {"type": "MODIFIED", "object": _secret(7, "b")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
            ],
            [],
        ],
    )
    assert ["6", "9"] == api.watch_calls
    assert 2 == len(updates)


def test_410_error_event_relists() -> None:
    """An ERROR event with code 410 makes the watcher list again, not crash."""
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    updates, api = _run([(_secret(5, "a"), "6"), (_secret(8, "c"), "9")], [[gone], []])
    assert ["6", "9"] == api.watch_calls
    assert ["valid", "valid"] == ["valid" if u.kind == "data" else u.kind for u in updates]


def test_older_resource_version_never_overwrites_newer() -> None:
    """An object older than one already seen (e.g. a lagging re-list) is ignored."""
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
    updates, _ = _run(
        [(_secret(5, "a"), "6"), (_secret(4, "old"), "7")],
        [[{"type": "MODIFIED", "object": _secret(8, "new")}, gone], []],
    )
    assert 2 == len(updates)  # the list at rv 5 and the event at rv 8; the stale rv 4 is dropped
    assert updates[-1].resource_version == "8"


def test_failures_back_off_and_recover() -> None:
    """5xx, 429 and connection failures are retried; the watcher then lists and reports."""
    updates, _ = _run(
        [
            KubeError("l", 500, "x"),
            KubeError("l", 429, "x", retry_after=0.001),
            KubeError("l", None, "x"),
            (_secret(5, "a"), "6"),
        ],
        [[]],
    )
    assert ["data"] == [u.kind for u in updates]


def test_deleted_and_absent() -> None:
    """A Secret never seen is 'absent'; one seen and then deleted is 'deleted'."""
    updates, _ = _run([(None, "3")], [[]])
    assert ["absent"] == [u.kind for u in updates]
    updates, _ = _run([(_secret(5, "a"), "6")], [[{"type": "DELETED", "object": _secret(7, "a")}]])
    assert ["data", "deleted"] == [u.kind for u in updates]


def test_invalid_secret_reported() -> None:
    """A Secret of the wrong type is reported as invalid, naming the reason."""
    bad = _secret(5, "a")
    bad["type"] = "Opaque"
    updates, _ = _run([(bad, "6")], [[]])
    assert ["invalid"] == [u.kind for u in updates]
    assert "Opaque" in (updates[0].error or "")


@pytest.mark.parametrize(
    ("candidate", "current", "expected"),
    [("10", "9", True), ("9", "10", False), ("10", "10", True), ("abc", "10", True), ("5", None, True)],
)
def test_newer_or_equal(candidate: str, current: str | None, expected: bool) -> None:
    """resourceVersions compare as integers when both are integers."""
    assert expected == newer_or_equal(candidate, current)


def test_backoff_capped_with_jitter() -> None:
    """Backoff grows exponentially, never exceeds the cap, and resets."""
    backoff = Backoff(base=0.5, cap=30, rng=random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    assert all(d <= 30 for d in delays)
    assert max(delays) >= 15
    backoff.reset()
    assert backoff.next() <= 0.5


def test_an_unexpected_error_never_ends_the_watcher() -> None:
    """An object no code path anticipated (here metadata that is not a map) is logged and the watcher
    lists again and carries on; the thread never dies of it (a dead watcher stops rotation)."""
    odd = {"metadata": ["not", "a", "map"], "type": "kubernetes.io/dockerconfigjson", "data": {}}
    updates, _ = _run([(odd, "4"), (_secret(5, "a"), "6")], [[]])
    assert ["data"] == [u.kind for u in updates]


def test_hostile_secret_content_is_an_invalid_source() -> None:
    """Secret content with a 5,000-digit number, NaN or deep nesting is an invalid source, not a crash."""
    bodies = [b'{"auths": {}, "n": 1' + b"1" * 5000 + b"}", b'{"auths": {"r": NaN}}', b"[" * 50_000]
    lists: list[Any] = []
    for rv, body in enumerate(bodies, start=1):
        secret = _secret(rv, "a")
        secret["data"][".dockerconfigjson"] = base64.b64encode(body).decode()
        lists.append((secret, str(rv)))
    updates: list[SourceUpdate] = []
    for item in lists:
        more, _ = _run([item], [[]])
        updates += more
    assert ["invalid"] * 3 == [u.kind for u in updates]


def test_a_scoped_file_source_reports_scoped_credentials(tmp_path: Any) -> None:
    """A file watched with namespaces reports its credentials scoped to them (a mounted Secret's
    scope is never dropped)."""
    from nodeagent.sources.files import FileWatcher

    path = tmp_path / "config.json"
    auth = base64.b64encode(b"u:p").decode()
    path.write_text(json.dumps({"auths": {"r.example.com": {"auth": auth}}}))
    updates: list[SourceUpdate] = []
    watcher = FileWatcher(str(path), updates.append, namespaces=("team-a",))
    watcher._changed(0.0)
    assert [("data", ("team-a",))] == [(u.kind, u.result.namespaces if u.result else None) for u in updates]
