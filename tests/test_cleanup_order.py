"""cleanup and a running agent never overlap on a node: the agent holds the node's presence lock
(shared) while it runs, cleanup takes it exclusively. Without ``--wait`` cleanup refuses while an
agent runs (its drift repair would put back what cleanup removed, within milliseconds); with
``--wait`` (the uninstall hook) it waits for the agent to be gone, cleans, and keeps the lock so
an agent that starts meanwhile writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from tests.test_agent_inprocess import _users, _wait_for
from tests.test_idle import _agent

CLEANUP = [sys.executable, "-m", "nodeagent", "cleanup", "--log-format", "json"]


def test_cleanup_refuses_while_an_agent_runs(host_root: Path) -> None:
    """Exit 1 naming the running agent, the node's files untouched; after the agent stops, cleanup cleans."""
    config = host_root / "var/lib/kubelet/config.json"
    with _agent(host_root):
        _wait_for(lambda: _users(config) == "u1")
        refused = subprocess.run([*CLEANUP, "--host-root", str(host_root)], capture_output=True, text=True)
        assert 1 == refused.returncode
        assert "agent_running" in refused.stdout + refused.stderr
        assert "u1" == _users(config)
    done = subprocess.run([*CLEANUP, "--host-root", str(host_root)], capture_output=True, text=True)
    assert 0 == done.returncode, done.stderr
    assert not config.exists()


def test_cleanup_wait_outlasts_the_agent_and_holds_the_node(host_root: Path) -> None:
    """cleanup --wait waits while the agent runs, cleans once it stopped, and an agent started
    while it still holds the node stands down instead of writing config.json again."""
    config = host_root / "var/lib/kubelet/config.json"
    cmd = [*CLEANUP, "--host-root", str(host_root), "--wait", "--listen", "127.0.0.1:0"]
    with _agent(host_root):
        _wait_for(lambda: _users(config) == "u1")
        waiting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Event().wait(1.5)
        assert "u1" == _users(config)  # not cleaned under a running agent
        assert waiting.poll() is None
    try:
        _wait_for(lambda: not config.exists())
        with _agent(host_root) as (late, _):
            threading.Event().wait(1.5)
            assert not config.exists()  # stood down: nothing written while cleanup holds the node
            assert not late.status.health.first_sync_done
    finally:
        waiting.terminate()
        output, _ = waiting.communicate(timeout=30)
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "waiting_for_the_agent_to_stop" in events and "cleanup_done" in events
