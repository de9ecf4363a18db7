"""Watches back off across failures: for any sequence of faults the API server can answer with
(a 410 on the list's version, as after a restart; 500; 429 with Retry-After; a dropped stream; a
list that fails), a watcher makes at most a handful of requests in the 30 s after the fault
began, on a simulated clock. The class of bug: the delay reset after every list that worked, and
a 410 relisted after 0-0.2 s, so a Node watch started from an old object version asked the real
API server 11-18 times a second, forever."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.kube import KubeError
from nodeagent.sources import Backoff
from nodeagent.sources.kube import BACKOFF_BASE, BACKOFF_CAP, BACKOFF_RESET, NodeWatcher, SecretWatcher

WINDOW = 30.0
MAX_ROUNDS = 7
"""1 s doubling, each delay drawn from the upper half of its step: 0.5+1+2+4+8+16 > 30, so the
first attempt and at most 6 retries fit in the window."""
MAX_REQUESTS_PER_WATCH = 2 * MAX_ROUNDS
"""Each round is a watch, or a list and a watch (at start and after a 410). Before the fix the same
window held 330-540 requests against the real API server."""

FAULTS = ("watch-410-event", "watch-410-status", "watch-500", "watch-429", "drop", "list-500", "list-429")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


class _SimulatedStop(threading.Event):
    """``wait(delay)`` moves the simulated clock instead of sleeping; set once past the window."""

    def __init__(self, clock: _Clock, until: float) -> None:
        super().__init__()
        self.clock, self.until = clock, until

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += timeout or 0.0
        if self.clock.now >= self.until:
            self.set()
        return self.is_set()


class _FaultyAPI:
    """Every request fails with the fault its turn names (the sequence repeats), and takes 10 ms."""

    def __init__(self, faults: list[str], clock: _Clock) -> None:
        self.faults, self.clock = faults, clock
        self.requests: list[tuple[float, str]] = []

    def _next(self, verb: str) -> str:
        self.requests.append((self.clock.now, verb))
        self.clock.now += 0.01
        return self.faults[(len(self.requests) - 1) % len(self.faults)]

    def _list(self) -> tuple[dict[str, Any] | None, str]:
        fault = self._next("list")
        if fault == "list-500":
            raise KubeError("list", 500, "InternalError")
        if fault == "list-429":
            raise KubeError("list", 429, "TooManyRequests", retry_after=1.0)
        return None, "100"

    def list_secret(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        return self._list()

    def list_node(self, name: str) -> tuple[dict[str, Any] | None, str]:
        return self._list()

    def watch(self, path: str, **_: Any) -> Iterator[dict[str, Any]]:
        fault = self._next("watch")
        if fault == "watch-410-event":
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
        elif fault == "watch-410-status":
            raise KubeError("watch", 410, "Gone")
        elif fault == "watch-500":
            raise KubeError("watch", 500, "InternalError")
        elif fault == "watch-429":
            raise KubeError("watch", 429, "TooManyRequests", retry_after=2.0)
        else:
            raise KubeError("watch", None, "ProtocolError")


def _requests_in_window(watcher_type: str, faults: list[str], seed: int) -> list[tuple[float, str]]:
    import random

    clock = _Clock()
    stop = _SimulatedStop(clock, WINDOW)
    api = _FaultyAPI(faults, clock)
    kwargs: dict[str, Any] = {"api": api, "stop": stop, "on_start": lambda _: None}
    watcher: Any
    if watcher_type == "node":
        watcher = NodeWatcher(name="node-a", on_labels=lambda *_: None, **kwargs)
    else:
        watcher = SecretWatcher(namespace="ns", name="s", sink=lambda _: None, **kwargs)
    watcher._rng = random.Random(seed)
    watcher._backoff = Backoff(
        base=BACKOFF_BASE, cap=BACKOFF_CAP, reset_after=BACKOFF_RESET, rng=watcher._rng, clock=lambda: clock.now
    )
    watcher.run()
    return api.requests


@settings(max_examples=200, deadline=None)
@given(
    watcher_type=st.sampled_from(["node", "secret"]),
    faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_fault_sequence_costs_a_handful_of_requests(watcher_type: str, faults: list[str], seed: int) -> None:
    """Whatever the server answers, a watch asks it at most a handful of times in 30 s."""
    requests = _requests_in_window(watcher_type, faults, seed)
    assert len(requests) <= MAX_REQUESTS_PER_WATCH, requests


def test_a_410_after_every_list_is_not_a_loop() -> None:
    """The restart case: every watch from the list's version gets 410; the lists slow down too."""
    requests = _requests_in_window("node", ["ok-list", "watch-410-event"], seed=1)
    assert ["list", "watch"] * (len(requests) // 2) == [verb for _, verb in requests]
    assert len(requests) <= MAX_REQUESTS_PER_WATCH


def test_a_failed_watch_resumes_without_a_list() -> None:
    """A 500 or a dropped stream resumes the watch from its version: only a 410 lists again."""
    verbs = [verb for _, verb in _requests_in_window("secret", ["ok-list", "watch-500", "drop"], seed=2)]
    assert "list" == verbs[0]
    assert ["list"] == [v for v in verbs if v == "list"]


def test_the_delay_resets_only_after_a_quiet_spell() -> None:
    """A failure two minutes after the last one starts from the base delay again; one sooner does not."""
    now = [0.0]
    backoff = Backoff(base=1.0, cap=30.0, reset_after=120.0, clock=lambda: now[0])
    first = [backoff.next() for _ in range(4)]
    assert all(step / 2 <= delay <= step for delay, step in zip(first, [1.0, 2.0, 4.0, 8.0], strict=True))
    now[0] += 60
    assert 8.0 <= backoff.next() <= 16.0
    now[0] += 120
    assert 0.5 <= backoff.next() <= 1.0
