"""The agent's parts, each alone and in-process with an injected clock: the loop's scheduling,
status reports, the startup taint, containerd restarts and the ECR source."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from nodeagent.agent.book import Recorded
from nodeagent.agent.loop import Loop, Pending
from nodeagent.agent.status import REVISION_ANNOTATION, Status
from nodeagent.agent.taint import STARTUP_TAINT, StartupTaint
from nodeagent.config import ContainerdSettings
from nodeagent.ecr.service import ECR_SOURCE, EcrService
from nodeagent.ecr.tokens import Token
from nodeagent.host.containerd_restart import ContainerdProcess, ContainerdRestarts, Restarter
from nodeagent.kube import KubeError
from nodeagent.model.credentials import EntryProblem
from nodeagent.observe.metrics import Metrics
from nodeagent.reconcile import SyncReport
from nodeagent.sources import SourceUpdate


class Log:
    """A structlog-shaped recorder: (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_: Any) -> Log:
        return self

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


class API:
    def __init__(self, taint_errors: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.taint_calls = 0
        self.taint_errors = taint_errors

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)

    def patch_node_annotations(self, name: str, annotations: dict[str, Any]) -> None:
        self.annotations.append(annotations)

    def remove_node_taint(self, name: str, key: str) -> bool:
        self.taint_calls += 1
        if self.taint_calls <= self.taint_errors:
            raise KubeError("patch node", 503, "unavailable")
        return True


# -- the loop -------------------------------------------------------------------------------------
def _loop(now: list[float]) -> Loop:
    return Loop(resync_interval=600, clock=lambda: now[0], stop=threading.Event())


def test_a_change_wakes_the_loop_and_a_quiet_one_waits_for_the_resync() -> None:
    now = [100.0]
    loop = _loop(now)
    loop.changed(since=99.0)
    assert loop.wait() is True
    assert Pending(since=99.0, drift=False, cause="change") == loop.take()
    assert Pending(cause="resync") == loop.take()  # taken once
    loop.passed(True)
    now[0] += 599
    assert loop.wait() is False  # nothing changed: the wait times out (1 s) and the resync is not due yet
    now[0] += 1
    assert loop.wait() is True


def test_a_failed_pass_retries_with_backoff_and_keeps_its_changes() -> None:
    now = [0.0]
    loop = _loop(now)
    loop.drifted()
    loop.changed(since=-1.0)
    assert loop.wait()
    pending = loop.take()
    loop.changed(since=5.0)  # another change arrives during the failed pass
    delays = []
    for _ in range(9):
        loop.passed(False, pending)
        due = min(t for t in (loop._retry_at, loop._next_resync) if t is not None)
        delays.append(due - now[0])
    assert [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0] == delays
    assert Pending(since=-1.0, drift=True, cause="change") == loop.take()  # the earliest start, and the drift, kept
    loop.passed(False)
    assert Pending(cause="retry") == loop.take()
    loop.drifted()
    assert Pending(drift=True, cause="drift") == loop.take()
    loop.passed(True)
    assert loop._retry_at is None


def test_a_due_restart_wakes_the_loop() -> None:
    now = [0.0]
    loop = _loop(now)
    assert loop.wait(also_due=0.0) is True


def test_stop_ends_the_wait() -> None:
    now = [0.0]
    loop = _loop(now)
    loop.stop.set()
    loop.wake()
    assert loop.wait() is False


# -- status ---------------------------------------------------------------------------------------
def _status(api: API, log: Log) -> Status:
    return Status(
        metrics=Metrics(), log=log, api=api, node_name="n1", events=True, annotations=True,
        event_namespace="default", on_secret_deleted="keep", clock=lambda: 0.0,
    )  # fmt: skip


def test_an_unreadable_source_is_one_event_per_change() -> None:
    api, log = API(), Log()
    status = _status(api, log)
    status.poster.start()
    update = SourceUpdate("secret:ns/a", "unreadable", 0.0, error="403 forbidden")
    status.source_recorded(update, Recorded("unreadable", "valid", "403 forbidden", True))
    status.source_recorded(update, Recorded("unreadable", "unreadable", "403 forbidden", True))
    status.poster.stop()
    assert ["SourceUnreadable"] == [e["reason"] for e in api.events]
    assert ["source_unreadable", "source_unreadable"] == log.events()


def test_an_applied_pass_is_reported_and_annotated_once_per_revision() -> None:
    api, log = API(), Log()
    status = _status(api, log)
    status.poster.start()
    report = SyncReport(registries=2, revision="abc", written=["/var/lib/kubelet/config.json"])
    status.pass_done(report, changes=1, latency=0.2, held_because=[], sources={})
    status.poster.stop(timeout=5)
    quiet = SyncReport(registries=2, revision="abc")
    status.pass_done(quiet, changes=0, latency=None, held_because=[], sources={})  # annotated already
    assert ["CredentialsSynced"] == [e["reason"] for e in api.events]
    assert ["abc"] == [a[REVISION_ANNOTATION] for a in api.annotations]
    assert status.health.first_sync_done
    assert 2.0 == status.metrics.registry.get_sample_value("nodeagent_syncs_total", {"result": "success"})


def test_a_conflict_is_one_event_when_it_appears() -> None:
    """A file left as it is (a provider config the kubelet would refuse) is a SyncConflict Event
    when the conflict appears, not again on every pass that still sees it."""
    api, log = API(), Log()
    status = _status(api, log)
    status.poster.start()
    conflict = EntryProblem("*", None, "not changed: the kubelet would refuse it", "/etc/kubernetes/providers")
    for _ in range(3):
        status.pass_done(SyncReport(conflicts=(conflict,)), changes=0, latency=None, held_because=[], sources={})
    status.poster.stop(timeout=5)
    (event,) = [e for e in api.events if e["reason"] == "SyncConflict"]
    assert "/etc/kubernetes/providers" in event["message"]


def test_rejected_entries_count_as_partial_but_pending_ecr_tokens_do_not() -> None:
    api, log = API(), Log()
    status = _status(api, log)
    ecr = EntryProblem("1.dkr.ecr.eu-west-1.amazonaws.com", None, "no valid ECR token yet", ECR_SOURCE)
    status.pass_done(SyncReport(rejected=(ecr,)), changes=0, latency=None, held_because=[], sources={})
    bad = EntryProblem("bad host", None, "not a registry", "secret:ns/a")
    status.pass_done(SyncReport(rejected=(bad,)), changes=0, latency=None, held_because=[], sources={})
    sample = status.metrics.registry.get_sample_value
    assert (1.0, 1.0) == (
        sample("nodeagent_syncs_total", {"result": "success"}),
        sample("nodeagent_syncs_total", {"result": "partial"}),
    )
    assert "ecr_token_pending" in log.events() and "entry_rejected" in log.events()


def test_a_rejected_entry_is_counted_and_logged_once_per_change() -> None:
    """The same bad entry on every pass: counted and logged at error level once, again only
    when it changes (before: one more count and one more error line per pass)."""
    api, log = API(), Log()
    status = _status(api, log)
    bad = EntryProblem("bad host", None, "not a registry", "secret:ns/a")
    worse = EntryProblem("bad host", None, "still not a registry", "secret:ns/a")
    for report in [SyncReport(rejected=(bad,))] * 3 + [SyncReport(rejected=(worse,))]:
        status.pass_done(report, changes=0, latency=None, held_because=[], sources={})
    sample = status.metrics.registry.get_sample_value
    assert 2.0 == sample("nodeagent_rejected_entries_total", {"source": "secret:ns/a"})
    assert 2 == sum(1 for level, event, _ in log.lines if (level, event) == ("error", "entry_rejected"))


def test_a_held_pass_is_not_a_success_and_annotates_nothing() -> None:
    """While a source's state is unknown the node keeps what it had: the pass counts as held and
    no revision is annotated (it would name a set of credentials the node does not have)."""
    api, log = API(), Log()
    status = _status(api, log)
    status.poster.start()
    report = SyncReport(registries=0, revision="empty", written=[])
    status.pass_done(report, changes=0, latency=None, held_because=["secret:ns/a: unreadable"], sources={})
    status.poster.stop(timeout=5)
    sample = status.metrics.registry.get_sample_value
    assert (1.0, None) == (
        sample("nodeagent_syncs_total", {"result": "held"}),
        sample("nodeagent_syncs_total", {"result": "success"}),
    )
    assert [] == api.annotations


def test_events_say_registry_and_registries_and_what_still_applies() -> None:
    """One registry is 'registry'; a lone source that is unreadable does not claim others apply."""
    api, log = API(), Log()
    status = _status(api, log)
    status.poster.start()
    status.pass_done(
        SyncReport(registries=1, revision="r", written=["/x"]), changes=1, latency=0.1, held_because=[], sources={}
    )
    update = SourceUpdate("secret:ns/a", "unreadable", 0.0, error="403 forbidden")
    status.source_recorded(update, Recorded("unreadable", "valid", "403 forbidden", True))
    status.poster.stop(timeout=5)
    messages = {e["reason"]: e["message"] for e in api.events}
    assert messages["CredentialsSynced"].startswith("1 registry, ")
    assert "other sources" not in messages["SourceUnreadable"]


# -- the startup taint ----------------------------------------------------------------------------
def test_the_taint_waits_for_every_source_then_retries_with_backoff() -> None:
    now, api, log, emitted = [0.0], API(taint_errors=2), Log(), []
    taint = StartupTaint(
        enabled=True, api=api, node_name="n1", clock=lambda: now[0], log=log,
        emit=lambda reason, message, **_: emitted.append(reason),
    )  # fmt: skip
    taint.tick(synced=False, fully_read=lambda: True)
    taint.tick(synced=True, fully_read=lambda: False)
    assert 0 == api.taint_calls
    taint.tick(synced=True, fully_read=lambda: True)  # fails: retry in 5 s
    taint.tick(synced=True, fully_read=lambda: True)
    now[0] = 5.0
    taint.tick(synced=True, fully_read=lambda: True)  # fails again: retry in 10 s
    now[0] = 14.0
    taint.tick(synced=True, fully_read=lambda: True)
    assert (2, False) == (api.taint_calls, taint.done)
    now[0] = 15.0
    taint.tick(synced=True, fully_read=lambda: True)
    assert (3, True, ["StartupTaintRemoved"]) == (api.taint_calls, taint.done, emitted)
    assert ("info", "startup_taint_removed", {"taint": STARTUP_TAINT}) == log.lines[-1]


# -- containerd restarts --------------------------------------------------------------------------
def _restarts(policy: str, kill: Any, now: list[float], emitted: list[str], procs: list[Any]) -> ContainerdRestarts:
    restarter = Restarter(
        ContainerdSettings(auth=True, restart=policy, restart_interval=300),
        kill=kill, processes=lambda: procs, start_time=lambda pid, fallback: 50.0, clock=lambda: now[0],
    )  # fmt: skip
    return ContainerdRestarts(
        restarter, real_path=lambda p: "/nonexistent" + p, metrics=Metrics(), log=Log(),
        emit=lambda reason, message, **_: emitted.append(reason),
        find=lambda config: ContainerdProcess(1, config, 50.0),
    )  # fmt: skip


class _Proc:
    def __init__(self) -> None:
        self.pid = 7
        self.info = {"name": "containerd", "cmdline": ["containerd"], "create_time": 1.0}


def test_a_credential_change_restarts_once_per_interval() -> None:
    now, emitted, killed = [1000.0], [], []
    restarts = _restarts("signal", lambda pid, sig: killed.append(pid), now, emitted, [_Proc()])
    restarts.after_pass(True, ["/etc/containerd/config.toml"])
    restarts.after_pass(True, ["/etc/containerd/config.toml"])  # within the interval: deferred
    assert (["ContainerdRestarted"], [7]) == (emitted, killed)
    assert restarts.due_at() == 1300.0
    now[0] = 1300.0
    restarts.run_due()
    assert (["ContainerdRestarted", "ContainerdRestarted"], [7, 7]) == (emitted, killed)


def test_a_failed_restart_is_reported() -> None:
    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    now, emitted = [0.0], []
    restarts = _restarts("signal", kill, now, emitted, [_Proc()])
    restarts.after_pass(True, [])
    assert ["ContainerdRestartFailed"] == emitted
    assert 1.0 == restarts.metrics.registry.get_sample_value("nodeagent_containerd_restart_pending")


# -- the ECR source -------------------------------------------------------------------------------
class _Tokens:
    def __init__(self, tokens: dict[str, Token]) -> None:
        self.tokens = tokens

    def token(self, key: str) -> Token | None:
        return self.tokens.get(key)


@pytest.mark.parametrize("expires_in", [3600.0, -1.0])
def test_ecr_registries_become_a_source_with_a_valid_token_only(expires_in: float) -> None:
    import time

    host = "111122223333.dkr.ecr.eu-west-1.amazonaws.com"
    service = EcrService(
        host_root="/", state_dir="/var/lib/nodeagent", socket_path=None, regions=(), registries=(host,),
        credentials_secret=None, api=None, metrics=Metrics(), log=Log(), redact=lambda values: None,
        on_token=lambda: None,
    )  # fmt: skip
    assert service.source() is None  # not started: no token manager yet
    service.tokens = _Tokens({"eu-west-1": Token("QVdTOnNlY3JldA==", time.time() + expires_in, 0.0)})  # type: ignore[assignment]
    result = service.source()
    assert result is not None
    if expires_in > 0:
        assert ([host], []) == ([c.key for c in result.credentials], list(result.rejected))
    else:
        assert ([], ["no valid ECR token yet"]) == (list(result.credentials), [p.reason for p in result.rejected])


def test_the_build_is_a_metric() -> None:
    """nodeagent_build_info names the version, the Python and the platform the agent runs."""
    import platform
    import sys

    from nodeagent import __version__

    labels = {
        "version": __version__,
        "python": platform.python_version(),
        "platform": f"{sys.platform}/{platform.machine()}",
    }
    assert 1.0 == Metrics().registry.get_sample_value("nodeagent_build_info", labels)
