"""The real ``nodeagent run --credential-provider`` process: it keeps the provider's credentials
file current, and the kubelet's own plugin manager (k8s 1.34.4), kept running as a kubelet would,
answers the first pull after a Secret rotation with the new credential."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from nodeagent.targets.provider import entry_scope
from tests.conftest import FIGURES
from tests.fake_kube import FakeKube
from tests.integration.conftest import SENTINEL, AgentProcess, dockerconfig, wait_for
from tests.real_parsers import KubeletPlugins

NS = "registry-creds"
Start = Callable[..., AgentProcess]
CONFIG = "etc/kubernetes/credential-providers/nodeagent-ecr.yaml"
BIN = "usr/libexec/kubernetes/credential-providers"
CREDENTIALS = "var/lib/nodeagent/provider-credentials.json"


def _local_config(host_root: Path) -> Path:
    """The agent's provider config with host paths made sandbox paths (the plugin runs here, not in a chroot)."""
    document = yaml.safe_load((host_root / CONFIG).read_text())
    for entry in document["providers"]:
        entry["args"] = [str(host_root) + a if a.startswith("/") else a for a in entry["args"]]
    local = host_root.parent / f"{host_root.name}-kubelet-config.yaml"
    local.write_text(yaml.safe_dump(document))
    return local


def test_rotation_reaches_the_kubelets_next_pull(kube: FakeKube, start_agent: Start) -> None:
    """A rotated Secret is the kubelet's answer for the next pull, well within a second of the
    change; a namespace-scoped Secret goes to the provider's file only, never to config.json."""
    kube.put_secret(NS, "central", data={".dockerconfigjson": dockerconfig({"r.example.com": f"{SENTINEL}-1"})})
    kube.put_secret(
        NS, "scoped", data={".dockerconfigjson": dockerconfig({"team.example.com": f"{SENTINEL}-team"})},
        annotations={"nodeagent.io/namespaces": "team-a"},
    )  # fmt: skip
    agent = start_agent(
        "--secret", f"{NS}/central", "--secret", f"{NS}/scoped", "--credential-provider", "--provider-preset", "kubeadm"
    )
    credentials = agent.host_root / CREDENTIALS
    # The provider config is written after the credentials file in the same pass: wait for both.
    wait_for(
        lambda: credentials.exists() and b"team.example.com" in credentials.read_bytes()
        and (agent.host_root / CONFIG).exists(),
        "first sync",
    )  # fmt: skip
    assert {"r.example.com": f"{SENTINEL}-1"} == agent.passwords()  # config.json: never the scoped Secret
    document = json.loads(credentials.read_text())
    scopes = [entry_scope(e, document["scopes"]) for e in document["entries"]]
    assert [("team.example.com", ("team-a",)), ("r.example.com", None)] == [
        (e["key"], scope) for e, scope in zip(document["entries"], scopes, strict=True)
    ]
    assert 0o600 == credentials.stat().st_mode & 0o777
    kubelet = KubeletPlugins(_local_config(agent.host_root), agent.host_root / BIN)
    try:
        assert [("user", f"{SENTINEL}-1")] == kubelet.lookup("r.example.com/app")
        delays = []
        for i in range(2, 7):
            kube.put_secret(
                NS, "central", data={".dockerconfigjson": dockerconfig({"r.example.com": f"{SENTINEL}-{i}"})}
            )
            sent = time.monotonic()
            wait_for(lambda i=i: kubelet.lookup("r.example.com/app") == [("user", f"{SENTINEL}-{i}")], "rotation")
            delays.append(time.monotonic() - sent)
    finally:
        kubelet.close()
    FIGURES["credential provider rotation"] = (
        f"Secret change to the kubelet plugin manager's next answer: {1000 * max(delays):.0f} ms at most over "
        f"{len(delays)} rotations (polling the kubelet, each lookup one plugin run)"
    )
