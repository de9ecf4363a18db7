"""An idle agent does no work: after each kind of start (a fresh node, a node whose config.json is
already current, a node whose config.json drifted while the agent was away) the agent passes to
converge, then nothing until something changes, with the real file watcher (watchdog) on
config.json. Counted by the agent's own metric of passes by cause.

The bug this class covers: watchdog reports the agent's own reads (``opened``, ``closed_no_write``)
and the drift check did not know the version a pass had only read, so a restart on a current node
passed about 9.5 times a second. The quiet window is a few seconds, not a minute: the assertion
is on a count (zero), and the spin it guards against shows dozens of passes in that time."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from nodeagent.agent import Agent
from nodeagent.sources.files import CHANGE_EVENTS
from tests.test_agent_inprocess import _users, _wait_for
from tests.test_agent_inprocess import running_agent as _agent

QUIET_SECONDS = 3.0
CAUSES = ("change", "drift", "retry", "resync")


def _passes(agent: Agent) -> dict[str, float]:
    registry = agent.metrics.registry
    return {cause: registry.get_sample_value("nodeagent_passes_total", {"cause": cause}) or 0.0 for cause in CAUSES}


def _quiet_window(agent: Agent) -> dict[str, float]:
    """Passes by cause during a quiet window after the agent converged."""
    _wait_for(lambda: agent.ready() == (True, "ok"))
    threading.Event().wait(0.5)  # the watcher's debounce and a drift repair's own pass settle
    before = _passes(agent)
    threading.Event().wait(QUIET_SECONDS)
    after = _passes(agent)
    return {cause: after[cause] - before[cause] for cause in CAUSES}


def _converge_once(host_root: Path) -> None:
    with _agent(host_root) as (agent, _):
        _wait_for(lambda: _users(host_root / "var/lib/kubelet/config.json") == "u1")
        _wait_for(lambda: agent.ready() == (True, "ok"))


def test_a_fresh_node_is_quiet_after_its_first_pass(host_root: Path) -> None:
    """No pass after the first one on a node the agent never saw."""
    with _agent(host_root) as (agent, _):
        _wait_for(lambda: _users(host_root / "var/lib/kubelet/config.json") == "u1")
        assert dict.fromkeys(CAUSES, 0.0) == _quiet_window(agent)


def test_a_restart_on_a_current_node_is_quiet(host_root: Path) -> None:
    """Restarted on a node whose config.json is current, the agent reads it, writes nothing and
    stays quiet (before: about 9.5 passes a second, woken by its own reads)."""
    _converge_once(host_root)
    with _agent(host_root) as (agent, _):
        assert dict.fromkeys(CAUSES, 0.0) == _quiet_window(agent)
        assert 1.0 == sum(_passes(agent).values())


def test_a_restart_on_a_drifted_node_repairs_once_then_is_quiet(host_root: Path) -> None:
    """A node whose config.json lost the agent's entry while the agent was away: one pass
    repairs it, then nothing."""
    _converge_once(host_root)
    config = host_root / "var/lib/kubelet/config.json"
    document = json.loads(config.read_text())
    document["auths"]["registry.example.com"]["username"] = "someone-else"
    config.write_text(json.dumps(document))
    with _agent(host_root) as (agent, _):
        _wait_for(lambda: _users(config) == "u1")
        assert dict.fromkeys(CAUSES, 0.0) == _quiet_window(agent)


def test_a_foreign_write_after_start_is_drift(host_root: Path) -> None:
    """The watcher still sees a real change: a foreign rewrite is one drift pass, repaired."""
    config = host_root / "var/lib/kubelet/config.json"
    with _agent(host_root) as (agent, _):
        _wait_for(lambda: _users(config) == "u1")
        _quiet_window(agent)
        document = json.loads(config.read_text())
        document["auths"]["registry.example.com"]["username"] = "someone-else"
        config.write_text(json.dumps(document))
        _wait_for(lambda: _users(config) == "u1")
        assert _passes(agent)["drift"] >= 1.0


@pytest.mark.parametrize("event_type", ["opened", "closed_no_write"])
def test_reads_are_not_changes(event_type: str) -> None:
    """The watch counts no event type that a plain read produces."""
    assert event_type not in CHANGE_EVENTS
