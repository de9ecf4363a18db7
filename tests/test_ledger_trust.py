"""A ledger is a file on the node: an edited one must never steer a pass or cleanup to a file the
agent does not write. For every record kind, a record naming a file outside what that target
writes (or a backup outside the state dir) is ignored and named; the file is left byte for byte.
The bug this covers: cleanup removed whatever a record (a plugin "it created", a backup) named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.config import ContainerdSettings, ProviderSettings, SyncSettings
from nodeagent.host.hostfs import HostFS
from nodeagent.model.ledger import RECORD_TYPES, Ledger
from nodeagent.reconcile import cleanup, sync

VICTIMS = [
    "/etc/shadow",
    "/etc/kubernetes/admin.conf",
    "/usr/bin/sudo",
    "/var/lib/kubelet/pki/kubelet.key",
    "/etc/kubernetes/pki/ca.crt",
    "/etc/ssl/private/client.key",
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(RECORD_TYPES)),
    victim=st.sampled_from(VICTIMS),
    as_backup=st.booleans(),
    created=st.booleans(),
    step=st.sampled_from(["sync", "cleanup"]),
)
def test_an_edited_ledger_never_touches_a_file_outside_the_agents(
    tmp_path_factory: object, kind: str, victim: str, as_backup: bool, created: bool, step: str
) -> None:
    """Whatever record kind names the victim (as its file, or as its backup), the victim stays."""
    root = tmp_path_factory.mktemp("host")  # type: ignore[attr-defined]
    (root / "var/lib/kubelet").mkdir(parents=True)
    target = root / victim.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"precious\n")
    path = "/var/lib/kubelet/config.json" if as_backup else victim
    record = RECORD_TYPES[kind](kind, created=created, backup=victim if as_backup else "", digest="0" * 64)
    ledger = Ledger(files={path: record}, revision="r")
    state = root / "var/lib/nodeagent"
    state.mkdir(parents=True)
    (state / "state.json").write_bytes(ledger.dump())
    provider = ProviderSettings(bin_dir="/usr/bin", config_path="/etc/kubernetes/admin.conf", credentials=True)
    settings_ = SyncSettings(host_root=str(root), provider=provider, containerd=ContainerdSettings(auth=True))
    try:
        report = sync(HostFS(root), settings_, []) if step == "sync" else cleanup(HostFS(root), settings_)
    except Exception as exc:  # a refusal is fine; what matters is the victim
        from nodeagent.errors import NodeagentError

        assert isinstance(exc, NodeagentError)
        report = None
    assert b"precious\n" == target.read_bytes()
    del report


@pytest.mark.parametrize(
    ("path", "kind", "backup"),
    [
        ("/usr/bin/sudo", "provider-plugin", ""),
        ("/etc/kubernetes/admin.conf", "containerd-config", ""),
        ("/etc/containerd/config.toml", "containerd-config", "/etc/shadow"),
        ("/etc/shadow", "containerd-hosts", ""),
        ("/etc/shadow", "provider-credentials", ""),
    ],
)
def test_an_untrusted_record_is_named(tmp_path: Path, path: str, kind: str, backup: str) -> None:
    """cleanup names the record it ignored, and exits the conflict way (the record stays)."""
    root = tmp_path / "host"
    (root / "var/lib/kubelet").mkdir(parents=True)
    state = root / "var/lib/nodeagent"
    state.mkdir(parents=True)
    record = RECORD_TYPES[kind](kind, created=True, backup=backup)
    (state / "state.json").write_bytes(Ledger(files={path: record}, revision="r").dump())
    report = cleanup(HostFS(root), SyncSettings(host_root=str(root), containerd=ContainerdSettings(auth=True)))
    assert [path] == [c.source for c in report.conflicts if "ledger" in c.reason]
    assert path in Ledger.load((state / "state.json").read_bytes(), source="l").files


def test_a_trusted_record_still_works(tmp_path: Path) -> None:
    """The check does not get in the way: the agent's own ledger still drives cleanup."""
    root = tmp_path / "host"
    (root / "var/lib/kubelet").mkdir(parents=True)
    source = tmp_path / "creds.json"
    source.write_text(json.dumps({"auths": {"r.example.com": {"username": "u", "password": "p"}}}))
    from nodeagent.reconcile import load_file_sources

    settings_ = SyncSettings(host_root=str(root), from_files=(str(source),))
    report = sync(HostFS(root), settings_, load_file_sources([str(source)]))
    assert [] == list(report.conflicts)
    assert (root / "var/lib/kubelet/config.json").exists()
    assert [] == list(cleanup(HostFS(root), settings_).conflicts)
    assert not (root / "var/lib/kubelet/config.json").exists()
