"""The chart's RBAC and Node policy, and the real agent, against a real kube-apiserver (k8s 1.34.4,
built from the Go module proxy by tests/harness/kubelet, with etcd): the chart's objects are
rendered by the Helm engine and created in the server; the agent runs with only a token of the
chart's ServiceAccount (TokenRequest, bound to a Pod on a Node, as the kubelet would get it)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kube import KubeError, KubernetesClient
from nodeagent.sources import SourceUpdate
from nodeagent.sources.kube import SecretWatcher
from tests.conftest import b64
from tests.integration.conftest import start_real_agent, wait_for
from tests.real_parsers import RealAPIServer
from tests.test_chart import only, render

NS = "nodeagent"
COLLECTIONS = {
    "Namespace": "/api/v1/namespaces",
    "Node": "/api/v1/nodes",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "ValidatingAdmissionPolicy": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
}


NODE_TOKEN = "node-a-test-token"
STARTUP_TAINT = {"key": "nodeagent.io/agent-not-ready", "effect": "NoSchedule"}
TAINTS = [STARTUP_TAINT, {"key": "other.io/dedicated", "value": "x", "effect": "NoSchedule"}]


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAPIServer]:
    """The server, with the NodeRestriction admission plugin a real cluster runs and a static
    token for the kubelet of node-a (user system:node:node-a, group system:nodes)."""
    directory = tmp_path_factory.mktemp("kube")
    (directory / "extra-tokens.csv").write_text(f'{NODE_TOKEN},system:node:node-a,node-a,"system:nodes"\n')
    server = RealAPIServer(directory, "--enable-admission-plugins=NodeRestriction").start()
    yield server
    server.stop()


def _create(server: RealAPIServer, obj: dict[str, Any]) -> dict[str, Any]:
    namespace = obj.get("metadata", {}).get("namespace", NS)
    status, body = server.request("POST", COLLECTIONS[obj["kind"]].format(ns=namespace), obj)
    assert status in (200, 201), body
    return dict(body)


def _secret(name: str, password: str) -> dict[str, Any]:
    config = {"auths": {"registry.example.com": {"auth": b64(f"puller:{password}")}}}
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": NS},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }  # fmt: skip


@pytest.fixture(scope="module")
def chart_token(apiserver: RealAPIServer) -> str:
    """The chart (annotations and events on) installed in the real server, two Nodes, a Pod of the
    agent's ServiceAccount bound to node-a, and a token for it bound to that Pod."""
    _create(apiserver, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    values = {
        "secrets": [{"name": "central"}], "annotations": {"enabled": True}, "events": {"enabled": True},
        "startupTaint": {"enabled": True},
        "credentialProvider": {"enabled": True, "providerPreset": "kubeadm", "serviceAccountTokens": {"enabled": True}},
    }  # fmt: skip
    objects = [o for o in render(values) if o["kind"] in COLLECTIONS]
    for obj in objects:
        _create(apiserver, obj)
    for name in ("node-a", "node-b"):
        _create(apiserver, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"pool": "x"}},
                            "spec": {"taints": TAINTS}})  # fmt: skip
    _create(apiserver, _secret("central", "SENTINEL-real-1"))
    _create(apiserver, _secret("other", "SENTINEL-not-granted"))
    (account,) = [o["metadata"]["name"] for o in only(objects, "ServiceAccount")]
    pod = _create(apiserver, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-a", "namespace": NS},
        "spec": {"serviceAccountName": account, "nodeName": "node-a",
                 "containers": [{"name": "agent", "image": "example/nodeagent:test"}]},
    })  # fmt: skip
    status, body = apiserver.request(
        "POST",
        f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "agent-a",
                                     "uid": pod["metadata"]["uid"]}, "expirationSeconds": 3600}},
    )  # fmt: skip
    assert 201 == status, body
    return str(body["status"]["token"])


def _patch_node(server: RealAPIServer, node: str, metadata: dict[str, Any], token: str) -> int:
    status, _ = server.request(
        "PATCH",
        f"/api/v1/nodes/{node}",
        {"metadata": metadata},
        token=token,
        content_type="application/merge-patch+json",
    )
    return status


def test_chart_grants_exactly_its_secrets(apiserver: RealAPIServer, chart_token: str) -> None:
    """The chart's token reads the Secret it names, and is refused (403) any other Secret and a
    cluster-wide list."""
    assert (200, 403, 403) == (
        apiserver.request("GET", f"/api/v1/namespaces/{NS}/secrets/central", token=chart_token)[0],
        apiserver.request("GET", f"/api/v1/namespaces/{NS}/secrets/other", token=chart_token)[0],
        apiserver.request("GET", "/api/v1/secrets", token=chart_token)[0],
    )


def test_node_policy_fences_the_node_patch(apiserver: RealAPIServer, chart_token: str) -> None:
    """With the chart's ValidatingAdmissionPolicy the agent's token may set nodeagent.io/*
    annotations on its own Node only: labels, finalizers, ownerReferences, foreign annotations,
    the spec and other Nodes are refused."""
    # The policy takes effect once the server's policy informer has it: probe with a foreign
    # annotation whose value changes each time (an unchanged value would be no change at all).
    probes = iter(range(10_000))
    wait_for(
        lambda: (
            _patch_node(apiserver, "node-b", {"annotations": {"probe.io/n": str(next(probes))}}, chart_token) != 200
        ),
        "policy active",
        timeout=60,
    )
    assert (200, 422, 422, 422) == (
        _patch_node(apiserver, "node-a", {"annotations": {"nodeagent.io/credentials-revision": "r1"}}, chart_token),
        _patch_node(apiserver, "node-a", {"labels": {"pool": "hijacked"}}, chart_token),
        _patch_node(apiserver, "node-a", {"annotations": {"other.io/x": "y"}}, chart_token),
        _patch_node(apiserver, "node-b", {"annotations": {"nodeagent.io/credentials-revision": "r1"}}, chart_token),
    )
    _, node = apiserver.request("GET", "/api/v1/nodes/node-a")
    assert "x" == node["metadata"]["labels"]["pool"]

    def json_patch(node: str, ops: list[dict[str, Any]]) -> int:
        path = f"/api/v1/nodes/{node}"
        return apiserver.request("PATCH", path, ops, token=chart_token, content_type="application/json-patch+json")[0]

    # Metadata beyond annotations: a finalizer (blocks deletion), an ownerReference (the garbage
    # collector deletes a Node whose owner is missing): both were 200 before the policy checked them.
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "00000000-0000-0000-0000-000000000001"}
    assert (422, 422) == (
        _patch_node(apiserver, "node-a", {"finalizers": ["nodeagent.io/hold"]}, chart_token),
        _patch_node(apiserver, "node-a", {"ownerReferences": [owner]}, chart_token),
    )
    _, node = apiserver.request("GET", "/api/v1/nodes/node-a")
    assert ([], []) == (node["metadata"].get("finalizers", []), node["metadata"].get("ownerReferences", []))

    # Taints: only removing the startup taint is allowed (and only on node-a, tested by the agent below).
    assert (422, 422, 422, 422) == (
        json_patch("node-a", [{"op": "remove", "path": "/spec/taints/1"}]),
        json_patch("node-a", [{"op": "add", "path": "/spec/taints/-", "value": {"key": "x", "effect": "NoSchedule"}}]),
        json_patch("node-a", [{"op": "add", "path": "/spec/unschedulable", "value": True}]),
        json_patch("node-b", [{"op": "remove", "path": "/spec/taints/0"}]),
    )


def test_agent_with_the_chart_token(apiserver: RealAPIServer, chart_token: str, tmp_path: Path) -> None:
    """The real agent with only the chart's token: first sync, the startup taint removed from its
    own Node (and only that taint), a rotation, delete and recreate, and its Node annotation and
    Events landing through the real RBAC and policy."""
    agent = start_real_agent(apiserver, chart_token, tmp_path, "--secret", f"{NS}/central", "--remove-startup-taint")
    proc, log_path = agent.proc, agent.log_path
    try:
        wait_for(lambda: agent.passwords() == {"registry.example.com": "SENTINEL-real-1"}, "first sync", timeout=60)

        def taints(node: str) -> list[str]:  # (the server adds node.kubernetes.io/not-ready itself)
            found = apiserver.request("GET", f"/api/v1/nodes/{node}")[1]["spec"].get("taints", [])
            return [t["key"] for t in found if t["key"] != "node.kubernetes.io/not-ready"]

        wait_for(lambda: taints("node-a") == ["other.io/dedicated"], "the startup taint gone from node-a", timeout=60)
        assert [t["key"] for t in TAINTS] == taints("node-b")
        status, _ = apiserver.request(
            "PUT", f"/api/v1/namespaces/{NS}/secrets/central", _secret("central", "SENTINEL-real-2")
        )
        assert 200 == status
        wait_for(lambda: agent.passwords() == {"registry.example.com": "SENTINEL-real-2"}, "rotation", timeout=60)
        status, _ = apiserver.request("DELETE", f"/api/v1/namespaces/{NS}/secrets/central")
        assert 200 == status
        wait_for(lambda: agent.events("source_deleted"), "the deletion seen", timeout=60)
        assert {"registry.example.com": "SENTINEL-real-2"} == agent.passwords()  # kept (--on-secret-deleted keep)
        _create(apiserver, _secret("central", "SENTINEL-real-3"))
        wait_for(lambda: agent.passwords() == {"registry.example.com": "SENTINEL-real-3"}, "recreated", timeout=60)

        def annotated() -> bool:
            node = apiserver.request("GET", "/api/v1/nodes/node-a")[1]
            revision = node["metadata"].get("annotations", {}).get("nodeagent.io/credentials-revision")
            return bool(revision) and revision == agent.events("sync_done")[-1]["revision"]

        wait_for(annotated, "the rotated revision annotated on node-a", timeout=60)
        events = wait_for(
            lambda: [e for e in apiserver.request("GET", "/api/v1/namespaces/default/events")[1]["items"]
                     if e["reason"] == "CredentialsSynced"],
            "CredentialsSynced event",
            timeout=60,
        )  # fmt: skip
        assert "node-a" == events[0]["involvedObject"]["name"]
        assert [] == agent.events("annotate_failed") + agent.events("watch_forbidden")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "SENTINEL" not in log_path.read_text()  # no password of either Secret in the log


def test_a_startup_taint_of_two_effects_is_removed_whole(
    apiserver: RealAPIServer, chart_token: str, tmp_path: Path
) -> None:
    """The startup taint registered with NoSchedule and NoExecute: the agent's one patch removes
    both, which the Node policy allows (one patch per taint would be refused half way, forever),
    and keeps every other taint."""
    key = STARTUP_TAINT["key"]
    status, node = apiserver.request("GET", "/api/v1/nodes/node-a")
    others = [t for t in node["spec"].get("taints", []) if t["key"] not in (key, "node.kubernetes.io/not-ready")]
    taints = [others[0], {"key": key, "effect": "NoSchedule"}, *others[1:], {"key": key, "effect": "NoExecute"}]
    patch = [{"op": "replace", "path": "/spec/taints", "value": taints}]
    status, _ = apiserver.request("PATCH", "/api/v1/nodes/node-a", patch, content_type="application/json-patch+json")
    assert 200 == status
    api = KubernetesClient(str(apiserver.kubeconfig(tmp_path / "kubeconfig.json", chart_token)))
    assert api.remove_node_taint("node-a", key)
    left = apiserver.request("GET", "/api/v1/nodes/node-a")[1]["spec"].get("taints", [])
    assert others == [t for t in left if t["key"] != "node.kubernetes.io/not-ready"]
    assert not api.remove_node_taint("node-a", key)


def test_a_refusal_carries_the_api_servers_message(apiserver: RealAPIServer, chart_token: str, tmp_path: Path) -> None:
    """A request the Node policy denies is a KubeError naming the policy's message (not only
    "422 Unprocessable Entity"); a token file written with a trailing newline still works."""
    token_file = tmp_path / "token"
    token_file.write_text(chart_token + "\n")
    kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig.json", chart_token)
    document = json.loads(kubeconfig.read_text())
    document["users"][0]["user"] = {"tokenFile": str(token_file)}
    kubeconfig.write_text(json.dumps(document))
    api = KubernetesClient(str(kubeconfig))
    with pytest.raises(KubeError) as refused:
        api.patch_node_annotations("node-b", {"nodeagent.io/credentials-revision": "r"})
    assert 422 == refused.value.status
    assert "nodeagent may patch only the Node its pod runs on" in str(refused.value)


class _RecordingAPI:
    """The agent's own client, recording what the server answered: lists made, and every watch
    that ended in an error (an ERROR event's code, or the HTTP status of a refused watch)."""

    def __init__(self, api: KubernetesClient) -> None:
        self.api, self.lists, self.watches, self.errors = api, 0, 0, list[int | None]()

    def list_secret(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        self.lists += 1
        return self.api.list_secret(namespace, name)

    def watch(self, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.watches += 1
        try:
            for event in self.api.watch(path, **kwargs):
                if event.get("type") == "ERROR":
                    self.errors.append((event.get("object") or {}).get("code"))
                yield event
        except KubeError as exc:
            self.errors.append(exc.status)
            raise


@pytest.fixture(scope="module")
def etcd_watch_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAPIServer]:
    """A server that watches Secrets straight from etcd (``--watch-cache-sizes=secrets#0``, a
    setting real clusters use), so a watch resumed from a compacted revision meets etcd's own 410."""
    server = RealAPIServer(tmp_path_factory.mktemp("kube-etcd-watch"), "--watch-cache-sizes=secrets#0").start()
    yield server
    server.stop()


def test_watch_resumed_after_compaction_relists(etcd_watch_apiserver: RealAPIServer, tmp_path: Path) -> None:
    """A watch resumed (after its server-side timeout) from a revision etcd has compacted away gets
    a real 410 Gone; the Secret watcher lists again and keeps following rotations."""
    server = etcd_watch_apiserver
    _create(server, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    _create(server, _secret("central", "SENTINEL-w-1"))
    api = _RecordingAPI(KubernetesClient(str(server.kubeconfig(tmp_path / "admin.json", server.admin_token))))
    updates: list[SourceUpdate] = []
    stop = threading.Event()
    watcher = SecretWatcher(
        api=api, namespace=NS, name="central", sink=updates.append, stop=stop, on_start=lambda _: None,
        watch_timeout=(1, 1),
    )  # fmt: skip
    watcher.start()
    try:
        wait_for(lambda: api.watches >= 2, "a watch resumed after its timeout", timeout=30)
        assert (1, []) == (api.lists, api.errors)
        # Other writes move etcd past the Secret's revision, which the watcher resumes from.
        for i in range(3):
            _create(server, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": NS}})
        server.compact_etcd()
        wait_for(lambda: api.lists >= 2, "a list after the 410", timeout=30)
        assert [410] == api.errors[:1]
        status, _ = server.request(
            "PUT", f"/api/v1/namespaces/{NS}/secrets/central", _secret("central", "SENTINEL-w-2")
        )
        assert 200 == status

        def password() -> str:
            last = updates[-1].result
            return last.credentials[0].auth if last else ""

        wait_for(lambda: password() == b64("puller:SENTINEL-w-2"), "the rotation after the relist", timeout=30)
    finally:
        stop.set()
        watcher.join(timeout=10)


def test_nodes_may_request_the_provider_audience(apiserver: RealAPIServer, chart_token: str, tmp_path: Path) -> None:
    """With the chart's grant, node-a's kubelet gets a ServiceAccount token with the provider's
    audience for a pod it runs (NodeRestriction checks exactly this), and no other audience;
    nodeagent-credential-provider reads the pod's namespace from that real token and serves the
    credentials scoped to it, through the kubelet's own plugin manager."""
    from nodeagent.ecr import plugin
    from tests.real_parsers import kubelet_provide
    from tests.test_credential_provider import Node, _scoped, _source

    _create(apiserver, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    _create(
        apiserver, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "team-a"}}
    )
    pod = _create(apiserver, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "team-a"},
        "spec": {"serviceAccountName": "app", "nodeName": "node-a",
                 "containers": [{"name": "app", "image": "team.example.com/app:1"}]},
    })  # fmt: skip

    def token_request(audience: str) -> tuple[int, Any]:
        return apiserver.request(
            "POST",
            "/api/v1/namespaces/team-a/serviceaccounts/app/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"audiences": [audience], "expirationSeconds": 3600,
                      "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "app",
                                         "uid": pod["metadata"]["uid"]}}},
            token=NODE_TOKEN,
        )  # fmt: skip

    # The node authorizer learns of the pod from its informers: wait until it lets node-a ask at all.
    answers: list[tuple[int, Any]] = []
    wait_for(lambda: answers.append(token_request("nodeagent")) or answers[-1][0] == 201, "a token", timeout=60)
    assert 403 == token_request("another-audience")[0]
    token = str(answers[-1][1]["status"]["token"])
    assert "team-a" == plugin.token_namespace(token)

    node = Node(tmp_path, audience="nodeagent")
    node.sync(_source({"shared.example.com": "node"}), _scoped({"team.example.com": "SCOPED-real"}, "team-a"))
    served = kubelet_provide(node.config_path, node.bin_dir, "team.example.com/app", service_account="team-a/app",
                             token=token)  # fmt: skip
    assert [("user-SCOPED-real", "SCOPED-real")] == served


def test_uninstall_job_waits_for_every_node_then_deletes_the_cleanup_daemonset(
    apiserver: RealAPIServer, chart_token: str, tmp_path: Path
) -> None:
    """`nodeagent wait-cleanup` with only the chart's uninstall-hook token: it waits while a node
    is not clean yet, and deletes the cleanup DaemonSet once every pod is ready (the status here is
    set as the DaemonSet controller would set it: no controller runs in this test server)."""
    from tests.test_chart import hooks

    objects = render({"secrets": [{"name": "central"}]})
    (daemonset,) = [o for o in hooks(objects, "post-delete") if o["kind"] == "DaemonSet"]
    name = daemonset["metadata"]["name"]
    status, created = apiserver.request("POST", f"/apis/apps/v1/namespaces/{NS}/daemonsets", daemonset)
    assert 201 == status, created

    def set_status(ready: int) -> None:
        body = {
            "status": {
                "desiredNumberScheduled": 2,
                "numberReady": ready,
                "currentNumberScheduled": 2,
                "numberMisscheduled": 0,
                "observedGeneration": created["metadata"]["generation"],
            }
        }
        path = f"/apis/apps/v1/namespaces/{NS}/daemonsets/{name}/status"
        assert 200 == apiserver.request("PATCH", path, body, content_type="application/merge-patch+json")[0]

    set_status(1)
    status, body = apiserver.request(
        "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/na-nodeagent-uninstall/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )  # fmt: skip
    assert 201 == status, body
    kubeconfig = apiserver.kubeconfig(tmp_path / "uninstall.json", body["status"]["token"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEAGENT_", "KUBERNETES_"))}
    command = [sys.executable, "-m", "nodeagent", "wait-cleanup", "--daemonset", name, "--namespace", NS,
               "--kubeconfig", str(kubeconfig), "--timeout", "60", "--log-format", "json"]  # fmt: skip
    log_path = tmp_path / "wait.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: b'"nodes_clean": 1' in log_path.read_bytes(), "one node of two clean", timeout=60)
        assert (None, 200) == (
            proc.poll(),
            apiserver.request("GET", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{name}")[0],
        )
        set_status(2)
        assert 0 == proc.wait(timeout=60), log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 404 == apiserver.request("GET", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{name}")[0]
