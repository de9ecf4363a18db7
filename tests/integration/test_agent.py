"""The real ``nodeagent run`` process against the fake API server: every Secret life-cycle event."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fake_kube import FakeKube, Fault
from tests.integration.conftest import NODE, SENTINEL, AgentProcess, dockerconfig, wait_for

NS, NAME = "registry-creds", "central"
PW1, PW2 = f"{SENTINEL}-one", f"{SENTINEL}-two"
Start = Callable[..., AgentProcess]


def _put(kube: FakeKube, entries: dict[str, str], **kwargs: object) -> int:
    return kube.put_secret(NS, NAME, data={".dockerconfigjson": dockerconfig(entries)}, **kwargs)  # type: ignore[arg-type]


def test_create_update_and_status(kube: FakeKube, start_agent: Start) -> None:
    """A Secret reaches config.json; a rotation follows; status shows in annotations, events, metrics, probes."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    wait_for(lambda: agent.http("/readyz")[0] == 200, "readiness")
    assert 200 == agent.http("/healthz")[0]
    _put(kube, {"r.example.com": PW2, "s.example.com": PW1})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2, "s.example.com": PW1}, "rotation")
    annotations = wait_for(
        lambda: (
            (a := kube.node(NODE)["metadata"]["annotations"]).get("nodeagent.io/credentials-revision")
            and agent.events("sync_done")[-1]["revision"] == a["nodeagent.io/credentials-revision"]
            and a
        ),
        "revision annotation",
    )
    assert "nodeagent.io/synced-at" in annotations
    assert "CredentialsSynced" in {e["reason"] for e in kube.events}
    assert all(e["involvedObject"]["name"] == NODE for e in kube.events)
    assert agent.metric('nodeagent_syncs_total{result="success"}') >= 2
    assert 2 == agent.metric("nodeagent_managed_registries")
    assert agent.metric("nodeagent_propagation_seconds_count") >= 2
    assert all(SENTINEL not in json.dumps(e) for e in kube.events)
    assert SENTINEL not in agent.http("/metrics")[1]
    assert SENTINEL not in json.dumps(kube.node(NODE))


def test_invalid_secret_keeps_last_good_and_recovers(kube: FakeKube, start_agent: Start) -> None:
    """Malformed content or a wrong type keeps the node's credentials, is reported, and heals when fixed."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    kube.put_secret(NS, NAME, data={".dockerconfigjson": b'{"auths": {"r.example.com": {"auth": "' + PW2.encode()})
    wait_for(lambda: agent.events("source_invalid"), "invalid reported")
    wait_for(lambda: "SourceInvalid" in {e["reason"] for e in kube.events}, "SourceInvalid event")
    assert 0 == agent.metric('nodeagent_source_valid{source="secret:registry-creds/central"}')
    kube.put_secret(NS, NAME, type_="Opaque", data={"x": b"y"})
    wait_for(lambda: len(agent.events("source_invalid")) >= 2, "wrong type reported")
    assert {"r.example.com": PW1} == agent.passwords()
    _put(kube, {"r.example.com": PW2})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2}, "recovery")


def test_rejected_entry_named_rest_applies(kube: FakeKube, start_agent: Start) -> None:
    """One bad entry is rejected and named; the good ones apply."""
    data = json.loads(dockerconfig({"good.example.com": PW1}))
    data["auths"]["bad.example.com"] = {"auth": PW2 + "!"}
    kube.put_secret(NS, NAME, data={".dockerconfigjson": json.dumps(data).encode()})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"good.example.com": PW1}, "good entry")
    # The pass logs after it writes: wait for the log line rather than read it at once.
    wait_for(lambda: agent.events("entry_rejected"), "rejection logged")
    assert ["bad.example.com"] == [e["registry"] for e in agent.events("entry_rejected")][:1]


def test_delete_keeps_by_default_then_recreate(kube: FakeKube, start_agent: Start) -> None:
    """A deleted Secret leaves the credentials on the node (warned loudly); a recreated one applies."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    kube.delete_secret(NS, NAME)
    wait_for(lambda: agent.events("source_deleted"), "delete reported")
    wait_for(lambda: "SourceDeleted" in {e["reason"] for e in kube.events}, "SourceDeleted event")
    assert {"r.example.com": PW1} == agent.passwords()
    _put(kube, {"r.example.com": PW2})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2}, "recreated")


def test_delete_with_remove_policy(kube: FakeKube, start_agent: Start) -> None:
    """--on-secret-deleted=remove takes the credentials off the node."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}", "--on-secret-deleted", "remove")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    kube.delete_secret(NS, NAME)
    wait_for(lambda: agent.config() is None, "credentials removed")


def test_empty_auths_removes(kube: FakeKube, start_agent: Start) -> None:
    """A Secret whose auths is empty removes its credentials."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    _put(kube, {})
    wait_for(lambda: agent.config() is None, "credentials removed")


def test_expired_and_dropped_watches_recover(kube: FakeKube, start_agent: Start) -> None:
    """410 Gone re-lists, a dropped stream reconnects, 500 and 429 back off; changes still arrive."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    wait_for(lambda: kube.active_watches >= 2, "watches open")
    kube.expire()
    wait_for(lambda: agent.events("watch_expired_relisting"), "relist after 410")
    _put(kube, {"r.example.com": PW2})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2}, "update after 410")
    kube.inject(Fault("status", 500), Fault("status", 429))
    kube.drop_watches()
    wait_for(lambda: len(agent.events("watch_failed")) >= 2, "faults seen")
    _put(kube, {"r.example.com": PW1})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "update after drops and faults")
    assert agent.metric("nodeagent_source_watch_starts_total") >= 3


def test_forbidden_reported_with_rbac_hint(kube: FakeKube, start_agent: Start) -> None:
    """A 403 is logged with an RBAC hint and the agent is not ready."""
    kube.forbidden_secrets.add((NS, NAME))
    agent = start_agent("--secret", f"{NS}/{NAME}")
    event = wait_for(lambda: agent.events("watch_forbidden"), "forbidden reported")[0]
    assert 403 == event["status"]
    assert "resourceNames" in event["hint"]
    assert 503 == agent.http("/readyz")[0]


def test_an_unreadable_secret_does_not_block_the_others(kube: FakeKube, start_agent: Start) -> None:
    """On a new node, a Secret the agent may not read (403) does not hold back the readable ones:
    they are written, /readyz names the unreadable one, one SourceUnreadable Event says so, and
    the node becomes ready once RBAC is fixed."""
    _put(kube, {"r.example.com": PW1})
    kube.put_secret(NS, "other", data={".dockerconfigjson": dockerconfig({"o.example.com": PW2})})
    kube.forbidden_secrets.add((NS, "other"))
    agent = start_agent("--secret", f"{NS}/{NAME}", "--secret", f"{NS}/other", "--forbidden-retry", "1")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "the readable Secret applied")
    status, body = agent.http("/readyz")
    assert (503, True) == (status, f"secret:{NS}/other" in body and "403" in body)
    wait_for(lambda: len(agent.events("source_unreadable")) >= 2, "retried")
    wait_for(lambda: "SourceUnreadable" in [e["reason"] for e in kube.events], "the Event (sent by the poster)")
    assert 1 == [e["reason"] for e in kube.events].count("SourceUnreadable")
    kube.forbidden_secrets.clear()
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1, "o.example.com": PW2}, "the other once readable")
    wait_for(lambda: agent.http("/readyz")[0] == 200, "ready")


def test_node_scoping_follows_relabel(kube: FakeKube, start_agent: Start) -> None:
    """A Secret scoped by node selector applies only while the node's labels match."""
    _put(kube, {"gpu.example.com": PW1}, annotations={"nodeagent.io/node-selector": "pool in (gpu), !tainted"})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.events("sync_done"), "first sync")
    assert {} == agent.passwords()
    kube.put_node(NODE, {"pool": "gpu"})
    wait_for(lambda: agent.passwords() == {"gpu.example.com": PW1}, "credentials after relabel")
    kube.put_node(NODE, {"pool": "gpu", "tainted": "yes"})
    wait_for(lambda: agent.config() is None, "credentials removed after relabel")


def test_drift_repaired(kube: FakeKube, start_agent: Start) -> None:
    """An external delete or edit of config.json is repaired, and counted."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    path = agent.host_root / "var/lib/kubelet/config.json"
    path.unlink()
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "repair after delete")
    path.write_text(json.dumps({"auths": {"other.example.com": {"auth": "dTpw"}}}))
    wait_for(lambda: agent.passwords().get("r.example.com") == PW1, "repair after edit")
    assert "other.example.com" in agent.passwords()  # a foreign entry someone added is kept
    # counted once the pass that wrote the file returns: wait for it, do not race it
    wait_for(lambda: agent.metric("nodeagent_drift_repairs_total") >= 2, "both repairs counted")


def test_drift_fight_backs_off(kube: FakeKube, start_agent: Start) -> None:
    """A writer that keeps fighting the agent makes it back off and report, not loop."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}", "--resync-interval", "1")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    path = agent.host_root / "var/lib/kubelet/config.json"
    for _ in range(12):
        before = agent.metric("nodeagent_drift_repairs_total")
        path.write_text('{"auths": {}}')
        if agent.events("drift_fight"):
            break
        try:
            wait_for(
                lambda b=before: agent.metric("nodeagent_drift_repairs_total") > b or agent.events("drift_fight"),
                "repair",
            )
        except pytest.fail.Exception:  # seen once in CI-like runs and never since: keep the evidence
            pytest.fail(f"no repair after a foreign write; agent log:\n{agent.log_path.read_text()[-4000:]}")
    wait_for(lambda: agent.events("drift_fight"), "fight reported")
    wait_for(lambda: "DriftFight" in {e["reason"] for e in kube.events}, "the DriftFight Event (sent by the poster)")


def test_mounted_file_source_follows_kubelet_swap(tmp_path: Path, start_agent: Start) -> None:
    """--from-file follows the kubelet's ..data symlink swap of a Secret volume, without API access."""
    volume = tmp_path / "volume"
    volume.mkdir()
    first = volume / "..2026_01_01_00_00_00.1"
    first.mkdir()
    (first / ".dockerconfigjson").write_bytes(dockerconfig({"r.example.com": PW1}))
    (volume / "..data").symlink_to(first.name)
    (volume / ".dockerconfigjson").symlink_to("..data/.dockerconfigjson")
    agent = start_agent("--from-file", str(volume / ".dockerconfigjson"), kubeconfig=False)
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    second = volume / "..2026_01_01_00_01_00.2"
    second.mkdir()
    (second / ".dockerconfigjson").write_bytes(dockerconfig({"r.example.com": PW2}))
    (volume / "..data_tmp").symlink_to(second.name)
    os.rename(volume / "..data_tmp", volume / "..data")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2}, "update after swap")


def test_sources_merge_in_order(tmp_path: Path, kube: FakeKube, start_agent: Start) -> None:
    """--secret and --from-file merge in the order given; the later source wins per registry."""
    _put(kube, {"r.example.com": PW1, "s.example.com": PW1})
    override = tmp_path / "override.json"
    override.write_bytes(dockerconfig({"r.example.com": PW2}))
    agent = start_agent("--secret", f"{NS}/{NAME}", "--from-file", str(override))
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2, "s.example.com": PW1}, "merged")
    wait_for(lambda: agent.events("registry_conflict"), "conflict logged")  # logged after the write


def test_sigterm_exits_cleanly(kube: FakeKube, start_agent: Start) -> None:
    """SIGTERM stops the agent with exit code 0 and no temp file left."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    assert 0 == agent.stop()
    assert agent.events("agent_stopped")


def test_unauthorized_then_recovers(kube: FakeKube, start_agent: Start) -> None:
    """A revoked token (401) is reported; a slow API answer does not break the watch once fixed."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}", "--forbidden-retry", "2")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    good_token = kube.token
    kube.token = "revoked"
    kube.drop_watches()
    event = wait_for(lambda: agent.events("watch_unauthorized"), "401 reported")[0]
    assert 401 == event["status"]
    assert "token" in event["hint"] and "RBAC" not in event["hint"].replace("not an RBAC problem", "")
    assert 1 <= event["retry_in_s"] <= 2
    kube.token = good_token
    kube.inject(Fault("slow", seconds=1.0))
    kube.drop_watches()  # the next reconnect (after the slow retry) sees the fixed token
    _put(kube, {"r.example.com": PW2})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2}, "update after the token is fixed")


def test_periodic_resync_runs(kube: FakeKube, start_agent: Start) -> None:
    """With nothing changing, the periodic resync still runs full passes."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}", "--resync-interval", "1")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    before = agent.metric('nodeagent_syncs_total{result="success"}')
    wait_for(lambda: agent.metric('nodeagent_syncs_total{result="success"}') >= before + 2, "resync passes")


HOSTILE_BODIES = [
    b'{"auths": {"r.example.com": {"username": "u", "password": "x\\ud800"}}}',  # lone surrogate
    b'{"auths": {}, "n": 1' + b"1" * 5000 + b"}",  # past Python's int-string limit
    b'{"auths": {"r.example.com": {"auth": "dTpw", "n": NaN}}}',
    b"[" * 100_000,  # recursion
    b'{"auths": {"https://robot:pw@r.example.com": {"auth": "dTpw"}}}',
]


def test_hostile_secrets_never_stop_the_agent(kube: FakeKube, start_agent: Start) -> None:
    """The whole agent fed each hostile Secret value in turn keeps its last good credentials, stays
    live (/healthz 200, no crash event, process running) and applies the next good Secret."""
    _put(kube, {"r.example.com": PW1})
    agent = start_agent("--secret", f"{NS}/{NAME}")
    wait_for(lambda: agent.passwords() == {"r.example.com": PW1}, "first sync")
    for body in HOSTILE_BODIES:
        seen = len(agent.events("source_invalid")) + len(agent.events("entry_rejected"))
        kube.put_secret(NS, NAME, data={".dockerconfigjson": body})
        wait_for(
            lambda seen=seen: len(agent.events("source_invalid")) + len(agent.events("entry_rejected")) > seen,
            "hostile value reported",
        )
        assert (None, 200) == (agent.proc.poll(), agent.http("/healthz")[0])
    assert ([], []) == (agent.events("watch_crashed"), agent.events("sync_crashed"))
    _put(kube, {"r.example.com": PW2})
    wait_for(lambda: agent.passwords() == {"r.example.com": PW2}, "rotation after hostile values")
