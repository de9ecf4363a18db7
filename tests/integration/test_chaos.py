"""API chaos with the real agent: storms, cut streams, stale replays, error bursts, outages, two agents."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import FIGURES, b64
from tests.fake_kube import FakeKube, Fault
from tests.integration.conftest import SENTINEL, AgentProcess, dockerconfig, wait_for
from tests.real_parsers import kubelet_read_config

NS, NAME = "registry-creds", "central"
Start = Callable[..., AgentProcess]
STORM = 300


def _put(kube: FakeKube, password: str, name: str = NAME) -> int:
    return kube.put_secret(NS, name, data={".dockerconfigjson": dockerconfig({"r.example.com": password})})


def test_rotation_storm_converges_on_the_latest(kube: FakeKube, start_agent: Start) -> None:
    """Hundreds of updates a second: the node ends on the last one, and the bound is measured."""
    _put(kube, f"{SENTINEL}-start")
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-start"}, "first sync")
    began = time.monotonic()
    for i in range(STORM):
        _put(kube, f"{SENTINEL}-{i}")
    sent = time.monotonic()
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-{STORM - 1}"}, "convergence")
    converged = time.monotonic()
    rate = STORM / max(sent - began, 1e-6)
    FIGURES["rotation storm"] = (
        f"{STORM} updates at {rate:.0f}/s; node on the last one {1000 * (converged - sent):.0f} ms after it was sent"
    )


def test_cut_stream_stale_replay_and_410_after_bookmark(kube: FakeKube, start_agent: Start) -> None:
    """An event cut mid-way, a stale object replayed, and a 410 after a bookmark never regress the node."""
    _put(kube, f"{SENTINEL}-1")
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-1"}, "first sync")
    old_object = kube.secret(NS, NAME)
    kube.cut_next_event()
    _put(kube, f"{SENTINEL}-2")
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-2"}, "update after a cut event")
    kube.replay_stale(NS, NAME, old_object)
    wait_for(lambda: agent.events("stale_object_ignored"), "stale object ignored")
    assert {"r.example.com": f"{SENTINEL}-2"} == agent.passwords()
    time.sleep(0.6)  # let a bookmark (every 0.5 s here) arrive, then expire
    kube.expire()
    _put(kube, f"{SENTINEL}-3")
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-3"}, "update after 410")


def test_error_bursts_and_outage_keep_last_good(kube: FakeKube, start_agent: Start) -> None:
    """Bursts of 500/429 and an outage keep the node's credentials; the agent converges when the API returns."""
    _put(kube, f"{SENTINEL}-1")
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-1"}, "first sync")
    kube.inject(*[Fault("status", 500) for _ in range(3)], *[Fault("status", 429) for _ in range(3)])
    kube.drop_watches()
    _put(kube, f"{SENTINEL}-2")
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-2"}, "update after the bursts", timeout=60)
    kube.set_outage(True)
    outage_started = time.monotonic()
    time.sleep(5)
    assert {"r.example.com": f"{SENTINEL}-2"} == agent.passwords()
    _put(kube, f"{SENTINEL}-3")
    kube.set_outage(False)
    back = time.monotonic()
    wait_for(lambda: agent.passwords() == {"r.example.com": f"{SENTINEL}-3"}, "update after the outage", timeout=60)
    FIGURES["API outage"] = (
        f"{back - outage_started:.0f} s outage: credentials kept; converged "
        f"{1000 * (time.monotonic() - back):.0f} ms after the API returned (backoff cap 30 s)"
    )


def test_two_agents_one_node(kube: FakeKube, start_agent: Start, tmp_path: Path) -> None:
    """Two agents on one host root (a rolling update), with different Secrets in turn: the file is never
    torn, no foreign entry is lost, and the node ends with the new agent's credentials."""
    _put(kube, f"{SENTINEL}-old", name="old")
    kube.put_secret(NS, "new", data={".dockerconfigjson": dockerconfig({"s.example.com": f"{SENTINEL}-new"})})
    host = tmp_path / "shared"
    (host / "var/lib/kubelet").mkdir(parents=True)
    config = host / "var/lib/kubelet/config.json"
    config.write_text(json.dumps({"auths": {"foreign.example.com": {"auth": b64("node:own")}}}))
    first = start_agent("--secret", f"{NS}/old", host_root=host)
    wait_for(lambda: "r.example.com" in first.passwords(), "first agent")
    samples: list[bytes] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(config.read_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        second = start_agent("--secret", f"{NS}/new", host_root=host)
        wait_for(lambda: "s.example.com" in second.passwords(), "second agent")
        first.stop()
        wait_for(
            lambda: second.passwords() == {"s.example.com": f"{SENTINEL}-new", "foreign.example.com": "own"}, "handover"
        )
    finally:
        stop.set()
        sampler.join()
    for content in samples:
        creds = {c.key: c.password for c in kubelet_read_config(content)}  # never torn, always accepted
        assert "own" == creds["foreign.example.com"]
    FIGURES["two agents, one node"] = (
        f"{len(samples)} samples of config.json during the overlap: none torn, foreign entry kept"
    )
