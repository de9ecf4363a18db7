"""The Helm chart, rendered and linted by the real Helm engine and validated against Kubernetes' schemas."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from nodeagent import cli
from nodeagent.config import CONTAINERD_PRESETS, PROVIDER_PRESETS
from nodeagent.model.credentials import parse_secret
from nodeagent.model.registry_settings import parse_registry_settings

CHART = Path(__file__).resolve().parent.parent / "daemonset"
PRESETS = ["kubeadm", "eks", "k3s", "rke2", "microk8s", "aks", "gke"]
KUBE_VERSIONS = ["1.29.0", "1.34.0"]
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}  # prometheus-operator CRDs: not in the core schemas

FEATURES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything": {
        "secrets": [{"name": "a"}, {"name": "b", "namespace": "other"}, {"name": "c", "namespace": "other"}],
        "mountedSecrets": [{"name": "mounted"}],
        "createSecret": {"enabled": True, "dockerconfigjson": {"auths": {"r.example.com": {"auth": "dTpw"}}}},
        "metrics": {"service": {"enabled": True}, "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/x"}},
        "podAnnotations": {"a": "b"},
        "annotations": {"enabled": True},
        "image": {"repository": "example/nodeagent", "digest": "sha256:" + "a" * 64},
    },
    "minimal-rbac": {"events": {"enabled": False}, "annotations": {"enabled": False}},
    "mounted-only": {"secrets": [], "mountedSecrets": [{"name": "creds"}]},
    "cleanup": {"cleanupMode": True},
    "ecr-eks": {
        "ecr": {
            "enabled": True,
            "providerPreset": "eks",
            "regions": ["us-east-1"],
            "credentialsSecret": "kube-system/aws",
        }
    },
    "ecr-kubeadm": {
        "ecr": {
            "enabled": True,
            "providerPreset": "kubeadm",
            "registries": ["123456789012.dkr.ecr.eu-west-1.amazonaws.com"],
        }
    },
    "ecr-tokens-only": {"ecr": {"enabled": True, "registries": ["123456789012.dkr.ecr.eu-west-1.amazonaws.com"]}},
    "containerd": {
        "containerd": {
            "enabled": True,
            "registryConfig": '[registries."harbor.internal:8443"]\nmirrors = ["https://mirror.internal:5000"]\n',
            "tlsSecret": "registry-tls",
            "extraHostsDirs": ["/etc/docker/certs.d"],
        }
    },
    "containerd-auth": {"containerd": {"enabled": True, "auth": True, "existingConfigMap": "my-registries"}},
    "operator-knobs": {
        "global": {
            "imageRegistry": "registry.internal:5000",
            "imagePullSecrets": ["internal-pull"],
            "storageClass": "x",
        },
        "image": {"repository": "ghcr.io/nodeagent/nodeagent", "tag": 20240101},
        "commonLabels": {"team": "platform"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
        "envFrom": [{"configMapRef": {"name": "proxy-env"}}],
        "extraArgs": ["--forbidden-retry", "30"],
        "extraVolumes": [{"name": "extra", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
        "podSecurityContext": {"fsGroup": 0},
        "revisionHistoryLimit": 3,
        "updateStrategy": {"type": "RollingUpdate", "maxUnavailable": "10%", "maxSurge": 0},
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "metrics": {
            "service": {"enabled": True},
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "scrapeTimeout": "10s",
                "relabelings": [{"action": "labeldrop", "regex": "pod"}],
            },
        },
        "networkPolicy": {"enabled": True, "ingressFrom": [{"namespaceSelector": {}}], "egress": [{}]},
        "priorityClassQuota": {"enabled": True},
    },
    "startup-taint": {"startupTaint": {"enabled": True}},
    "credential-provider": {
        "credentialProvider": {
            "enabled": True,
            "providerPreset": "kubeadm",
            "ports": [5000, 8443],
            "serviceAccountTokens": {"enabled": True},
        }
    },
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values or {}, name="na", namespace="nodeagent", is_install=True)
    objects = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def only(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of a kind the release installs (Helm hooks apart: see hooks())."""
    return [o for o in objects if o["kind"] == kind and "helm.sh/hook" not in o["metadata"].get("annotations", {})]


def hooks(objects: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == event]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (daemonset,) = only(objects, "DaemonSet")
    (main,) = daemonset["spec"]["template"]["spec"]["containers"]
    return dict(main)


def host_paths(objects: list[dict[str, Any]]) -> list[str]:
    (daemonset,) = only(objects, "DaemonSet")
    return [v["hostPath"]["path"] for v in daemonset["spec"]["template"]["spec"]["volumes"] if "hostPath" in v]


@pytest.mark.parametrize("distribution", PRESETS)
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_renders_lints_and_validates(distribution: str, feature: str) -> None:
    """Every preset with every feature set lints without errors and every object is schema-valid
    (containerd auth on k3s/RKE2/microk8s is refused instead: they regenerate containerd's config)."""
    values = {"distribution": distribution, **FEATURES[feature]}
    if feature == "containerd-auth" and distribution in ("k3s", "rke2", "microk8s"):
        with pytest.raises(helm.HelmError):
            render(values)
        return
    report = helm.lint(str(CHART), values, strict=False)
    assert [] == report["errors"]
    assert [] == [m for m in report["messages"] if m["severity"] >= 3]
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert {"selector"} <= set(obj["spec"])
            continue
        for version in KUBE_VERSIONS:
            if obj["kind"].startswith("ValidatingAdmissionPolicy") and version < "1.30":
                continue  # admissionregistration.k8s.io/v1 policies: Kubernetes >= 1.30 (documented)
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(
    ("distribution", "root_dir"),
    [(d, "/var/snap/microk8s/common/var/lib/kubelet" if d == "microk8s" else "/var/lib/kubelet") for d in PRESETS],
)
def test_presets_select_kubelet_root_dir(distribution: str, root_dir: str) -> None:
    """Each preset mounts its kubelet root dir under /host and tells the agent about it."""
    objects = render({"distribution": distribution})
    main = container(objects)
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert root_dir == env["NODEAGENT_KUBELET_ROOT_DIR"]
    assert f"/host{root_dir}" in {m["mountPath"] for m in main["volumeMounts"]}
    assert sorted([root_dir, "/var/lib/nodeagent"]) == sorted(host_paths(objects))


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_least_privilege(feature: str) -> None:
    """Never the host's /, never privileged or hostPID, capabilities dropped, root filesystem read-only."""
    objects = render(FEATURES[feature])
    assert "/" not in host_paths(objects)
    (daemonset,) = only(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert not pod.get("hostPID") and not pod.get("hostNetwork")
    security = container(objects)["securityContext"]
    assert (False, False, True) == (
        security["privileged"],
        security["allowPrivilegeEscalation"],
        security["readOnlyRootFilesystem"],
    )
    assert ["ALL"] == security["capabilities"]["drop"]
    assert "add" not in security["capabilities"]
    for role in only(objects, "Role") + only(objects, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            if "secrets" in rule["resources"]:
                assert rule["resourceNames"]


def test_secret_rbac_limited_by_resource_names() -> None:
    """One Role per Secret namespace, granting get/list/watch on exactly the named Secrets."""
    objects = render(FEATURES["everything"])
    roles = {
        r["metadata"]["namespace"]: r["rules"]
        for r in only(objects, "Role")
        if r["metadata"]["name"].endswith("-secrets")
    }
    assert {"nodeagent": [["a"]], "other": [["b", "c"]]} == {
        ns: [r["resourceNames"] for r in rules] for ns, rules in roles.items()
    }
    assert all(r["verbs"] == ["get", "list", "watch"] for rules in roles.values() for r in rules)


def test_features_off_grant_less() -> None:
    """Without events or annotations, no Events Role and no patch on nodes."""
    objects = render(FEATURES["minimal-rbac"])
    assert [] == [r for r in only(objects, "Role") if r["metadata"]["name"].endswith("-events")]
    (nodes,) = only(objects, "ClusterRole")
    assert ["get", "list", "watch"] == [v for rule in nodes["rules"] for v in rule["verbs"]]
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert ("false", "false") == (env["NODEAGENT_EVENTS"], env["NODEAGENT_ANNOTATIONS"])


def test_node_patch_is_off_by_default_and_fenced_when_on() -> None:
    """By default the agent cannot patch Nodes; with annotations on, the patch comes with a
    ValidatingAdmissionPolicy bound for the agent's own service account only."""
    (nodes,) = only(render({}), "ClusterRole")
    assert ["get", "list", "watch"] == [v for rule in nodes["rules"] for v in rule["verbs"]]
    objects = render({"annotations": {"enabled": True}})
    (policy,) = only(objects, "ValidatingAdmissionPolicy")
    (binding,) = only(objects, "ValidatingAdmissionPolicyBinding")
    (condition,) = policy["spec"]["matchConditions"]
    assert 'request.userInfo.username == "system:serviceaccount:nodeagent:na-nodeagent"' == condition["expression"]
    assert (policy["metadata"]["name"], ["Deny"]) == (
        binding["spec"]["policyName"],
        binding["spec"]["validationActions"],
    )
    assert any("node-name" in v["expression"] for v in policy["spec"]["validations"])


@pytest.mark.parametrize(
    "config", ["/etc/kubernetes/credential-provider-config.yaml", "/etc/kubernetes", "/var/lib/kubelet/x.json"]
)
def test_provider_config_in_a_shared_directory_is_refused(config: str) -> None:
    """A provider config whose directory holds the node's own files (pki, kubelet.conf) is refused:
    it would be mounted read-write into the agent."""
    with pytest.raises(helm.HelmError):
        render({"ecr": {"enabled": True, "providerBinDir": "/usr/libexec/kubernetes/credential-providers",
                        "providerConfig": config}})  # fmt: skip


def test_mounted_only_needs_no_secret_rbac() -> None:
    """With only mounted Secrets there is no Secret Role, and the agent reads the mounted file."""
    objects = render(FEATURES["mounted-only"])
    assert [] == [r for r in only(objects, "Role") if r["metadata"]["name"].endswith("-secrets")]
    args = container(objects)["args"]
    assert ["run", "--from-file", "/etc/nodeagent/sources/creds/.dockerconfigjson"] == args


def test_created_secret_is_what_kubectl_makes() -> None:
    """createSecret makes a kubernetes.io/dockerconfigjson Secret the agent parses."""
    objects = render(FEATURES["everything"])
    (secret,) = only(objects, "Secret")
    assert "kubernetes.io/dockerconfigjson" == secret["type"]
    result = parse_secret(secret, source="chart")
    assert ["r.example.com"] == [c.registry for c in result.credentials]
    assert {"auths": {"r.example.com": {"auth": "dTpw"}}} == json.loads(
        base64.b64decode(secret["data"][".dockerconfigjson"])
    )


def test_probes_and_node_name() -> None:
    """Liveness and readiness probe the agent's endpoints; NODE_NAME comes from the downward API."""
    main = container(render())
    assert ("/healthz", "/readyz") == (
        main["livenessProbe"]["httpGet"]["path"],
        main["readinessProbe"]["httpGet"]["path"],
    )
    node_name = next(e for e in main["env"] if e["name"] == "NODE_NAME")
    assert "spec.nodeName" == node_name["valueFrom"]["fieldRef"]["fieldPath"]


def test_daemonset_scheduling_defaults() -> None:
    """Runs on every node (tolerates all taints), node-critical priority, rolling update."""
    (daemonset,) = only(render(), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert [{"operator": "Exists"}] == pod["tolerations"]
    assert "system-node-critical" == pod["priorityClassName"]
    assert {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}} == daemonset["spec"]["updateStrategy"]


def test_cleanup_mode_runs_cleanup() -> None:
    """cleanupMode makes every pod run `nodeagent cleanup --wait`."""
    assert ["cleanup", "--wait"] == container(render(FEATURES["cleanup"]))["args"]


@pytest.mark.parametrize(
    "feature",
    [
        "defaults",
        "everything",
        "minimal-rbac",
        "mounted-only",
        "containerd",
        "containerd-auth",
        "credential-provider",
        "operator-knobs",
        "startup-taint",
    ],
)
def test_agent_accepts_the_rendered_flags(feature: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The args and NODEAGENT_* env the chart renders are accepted by the agent's own settings loader."""
    main = container(render(FEATURES[feature]))
    for var in [v for v in os.environ if v.startswith("NODEAGENT_")]:
        monkeypatch.delenv(var)
    for item in main["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            monkeypatch.setenv(item["name"], "node-a")  # what the kubelet's downward API gives
    monkeypatch.setenv("NODEAGENT_HOST_ROOT", str(tmp_path))
    args = cli.parse_args(main["args"])
    settings = cli._run_settings(args)
    assert len(settings.sources.specs) == len(FEATURES[feature].get("secrets", [{}])) + len(
        FEATURES[feature].get("mountedSecrets", [])
    )


@pytest.mark.parametrize(
    "values",
    [
        {"distribution": "openshift"},
        {"port": -1},
        {"port": 70000},
        {"onSecretDeleted": "maybe"},
        {"secrets": [{"name": "Bad_Name"}]},
        {"kubeletRootDir": "var/lib/kubelet"},
        {"kubeletRootDir": "/var/../etc"},
        {"securityContext": {"privileged": True}},
        {"updateStrategy": {"maxUnavailable": 0}},
        {"image": {"repository": "x", "digest": "latest"}},
        {"unknownKey": 1},
        {"containerd": {"restart": "reboot"}},
        {"containerd": {"configPath": "etc/containerd/config.toml"}},
        {"containerd": {"enabled": True, "restart": "signal"}},
        {"distribution": "k3s", "containerd": {"enabled": True, "auth": True}},
        {"credentialProvider": {"enabled": True}},
        {"metrics": {"serviceMonitor": {"enabled": True}}},
        {"updateStrategy": {"type": "Recreate"}},
        {"image": {"repository": "x", "architectures": []}},
        {"credentialProvider": {"ports": [0]}},
        {"credentialProvider": {"serviceAccountTokens": {"audience": "a b"}}},
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    """values.schema.json rejects bad values before anything renders."""
    with pytest.raises(helm.HelmError):
        render(values)


def test_no_source_fails_with_a_clear_message() -> None:
    """A release with no credential source fails to render, saying what to set."""
    with pytest.raises(helm.HelmError) as info:
        render({"secrets": [], "mountedSecrets": []})
    assert "secrets or mountedSecrets" in str(info.value)


@pytest.mark.parametrize("preset", sorted(PROVIDER_PRESETS))
def test_ecr_presets_match_the_agent(preset: str) -> None:
    """The chart's ECR provider presets are the agent's own, and exactly their directories are mounted."""
    objects = render({"ecr": {"enabled": True, "providerPreset": preset}})
    main = container(objects)
    env = {e["name"]: e.get("value") for e in main["env"]}
    bin_dir, config = PROVIDER_PRESETS[preset]
    assert (bin_dir, config) == (env["NODEAGENT_PROVIDER_BIN_DIR"], env["NODEAGENT_PROVIDER_CONFIG"])
    config_dir = os.path.dirname(config) if config.endswith((".json", ".yaml", ".yml")) else config
    assert sorted({bin_dir, config_dir, "/run/nodeagent", "/var/lib/kubelet", "/var/lib/nodeagent"}) == sorted(
        host_paths(objects)
    )
    assert "--ecr" in main["args"]


def test_ecr_static_keys_secret_gets_read_access() -> None:
    """With ecr.credentialsSecret, the agent may read exactly that Secret."""
    objects = render(FEATURES["ecr-eks"])
    roles = {
        r["metadata"]["namespace"]: r["rules"][0]["resourceNames"]
        for r in only(objects, "Role")
        if r["metadata"]["name"].endswith("-secrets")
    }
    assert ["aws"] == roles["kube-system"]


@pytest.mark.parametrize("distribution", PRESETS)
def test_containerd_paths_follow_the_distribution(distribution: str) -> None:
    """The agent gets the distribution's containerd config, and exactly its directory is mounted.
    Both come as environment, so `kubectl exec ... nodeagent doctor` in the pod reads them too."""
    objects = render({"distribution": distribution, **FEATURES["containerd"]})
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    config = env["NODEAGENT_CONTAINERD_CONFIG"]
    if distribution in CONTAINERD_PRESETS:
        assert CONTAINERD_PRESETS[distribution] == config
    assert {os.path.dirname(config), "/etc/docker/certs.d"} <= set(host_paths(objects))
    assert "/etc/nodeagent/registries/registries.toml" == env["NODEAGENT_REGISTRY_CONFIG"]


def test_containerd_registry_config_is_passed_through() -> None:
    """registryConfig becomes the ConfigMap's registries.toml, byte for byte, which the agent parses."""
    objects = render(FEATURES["containerd"])
    (configmap,) = only(objects, "ConfigMap")
    text = configmap["data"]["registries.toml"]
    assert FEATURES["containerd"]["containerd"]["registryConfig"] == text
    assert ["harbor.internal:8443"] == list(parse_registry_settings(text.encode(), source="chart").registries)
    mounts = {m["mountPath"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["/etc/nodeagent/registries"]["readOnly"] and mounts["/etc/nodeagent/tls"]["readOnly"]
    assert [] == only(render(FEATURES["containerd-auth"]), "ConfigMap")  # existingConfigMap: none made


@pytest.mark.parametrize(("restart", "host_pid", "privileged"), [("signal", True, False), ("systemd", True, True)])
def test_containerd_restart_privileges(restart: str, host_pid: bool, privileged: bool) -> None:
    """Only the chosen restart policy widens the pod: signal needs hostPID, systemd also privileged."""
    objects = render({"containerd": {"enabled": True, "auth": True, "restart": restart}})
    (daemonset,) = only(objects, "DaemonSet")
    security = container(objects)["securityContext"]
    assert (host_pid, privileged) == (
        daemonset["spec"]["template"]["spec"].get("hostPID", False),
        security["privileged"],
    )
    assert security["readOnlyRootFilesystem"]
    args = container(objects)["args"]
    assert restart == args[args.index("--containerd-restart") + 1]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_credential_provider_flags_mounts_and_token_audience_grant() -> None:
    """The credential provider gets its flags and the kubelet's plugin directories; with
    ServiceAccount tokens the nodes (and only they) may request exactly the chosen audience."""
    objects = render(FEATURES["credential-provider"])
    args = container(objects)["args"]
    assert ["--credential-provider", "--service-account-tokens", "--service-account-token-audience", "nodeagent",
            "--credential-provider-ports", "5000,8443"] == args[args.index("--credential-provider"):][:6]  # fmt: skip
    assert set(PROVIDER_PRESETS["kubeadm"]) <= set(host_paths(objects))
    (role,) = [o for o in only(objects, "ClusterRole") if o["metadata"]["name"].endswith("-token-audience")]
    assert [{"apiGroups": [""], "resources": ["nodeagent"], "verbs": ["request-serviceaccounts-token-audience"]}] == (
        role["rules"]
    )
    (binding,) = [o for o in only(objects, "ClusterRoleBinding") if o["metadata"]["name"].endswith("-token-audience")]
    assert [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}] == binding["subjects"]
    without = render({"credentialProvider": {"enabled": True, "providerPreset": "kubeadm"}})
    assert [] == [o for o in without if o["metadata"]["name"].endswith("-token-audience")]


def test_kubelet_dir_mount_lets_other_pods_unmount() -> None:
    """The kubelet's root dir is mounted HostToContainer: other pods' volume mounts under it are
    released when the kubelet unmounts them, not pinned in the agent's mount namespace."""
    mounts = {m["name"]: m for m in container(render())["volumeMounts"]}
    assert "HostToContainer" == mounts["kubelet-root"]["mountPropagation"]


def test_global_values_of_a_parent_chart() -> None:
    """As a subchart: `global` is accepted, global.imageRegistry replaces the image's registry and
    global.imagePullSecrets are added; the tag may be a number."""
    objects = render(FEATURES["operator-knobs"])
    (daemonset,) = only(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert "registry.internal:5000/nodeagent/nodeagent:20240101" == container(objects)["image"]
    assert [{"name": "internal-pull"}] == pod["imagePullSecrets"]
    assert all("platform" == o["metadata"]["labels"]["team"] for o in objects)


def test_schedules_only_where_it_can_run() -> None:
    """By default Linux nodes of the image's architectures; on EKS not Fargate; affinity replaces it."""

    def pod(values: dict[str, Any]) -> dict[str, Any]:
        (daemonset,) = only(render(values), "DaemonSet")
        return dict(daemonset["spec"]["template"]["spec"])

    default = pod({})
    assert {"kubernetes.io/os": "linux"} == default["nodeSelector"]
    (term,) = default["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}] == term["matchExpressions"]
    (eks,) = pod({"distribution": "eks"})["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]} in eks[
        "matchExpressions"
    ]
    assert {"podAffinity": {}} == pod({"affinity": {"podAffinity": {}}})["affinity"]


def test_doctor_in_the_pod_sees_the_agents_containerd_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """On k3s `kubectl exec ... nodeagent doctor` (NOTES.txt) reads the containerd config the agent
    manages: the chart passes it as environment, which doctor reads too."""
    env = {
        e["name"]: e.get("value") for e in container(render({"distribution": "k3s", **FEATURES["containerd"]}))["env"]
    }
    for name, value in env.items():
        if name.startswith("NODEAGENT_") and value is not None:
            monkeypatch.setenv(name, value)
    args = cli.parse_args(["doctor"])
    assert CONTAINERD_PRESETS["k3s"] == args.containerd_config


def test_operator_objects() -> None:
    """The ServiceMonitor goes where asked with its timeout and relabelings; the NetworkPolicy
    admits the metrics port; the quota names the pods' priority class."""
    objects = render(FEATURES["operator-knobs"])
    (monitor,) = only(objects, "ServiceMonitor")
    assert ("monitoring", "10s", ["nodeagent"]) == (
        monitor["metadata"]["namespace"], monitor["spec"]["endpoints"][0]["scrapeTimeout"],
        monitor["spec"]["namespaceSelector"]["matchNames"],
    )  # fmt: skip
    (policy,) = only(objects, "NetworkPolicy")
    assert [{"port": "http", "protocol": "TCP"}] == policy["spec"]["ingress"][0]["ports"]
    (quota,) = only(objects, "ResourceQuota")
    assert ["system-node-critical"] == quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"]
    (daemonset,) = only(objects, "DaemonSet")
    assert ("RollingUpdate", 3) == (
        daemonset["spec"]["updateStrategy"]["type"],
        daemonset["spec"]["revisionHistoryLimit"],
    )


def test_startup_taint_is_removed_by_the_agent_under_the_node_policy() -> None:
    """startupTaint gives the agent its flag, patch on nodes, and the policy that limits the patch
    (to removing that one taint, on its own Node: proved against a real API server)."""
    objects = render(FEATURES["startup-taint"])
    assert "--remove-startup-taint" in container(objects)["args"]
    rules = [r for o in only(objects, "ClusterRole") for r in o["rules"] if "patch" in r["verbs"]]
    assert [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}] == rules
    (policy,) = only(objects, "ValidatingAdmissionPolicy")
    assert any("nodeagent.io/agent-not-ready" in v["expression"] for v in policy["spec"]["validations"])


def test_helm_uninstall_restores_the_nodes() -> None:
    """helm uninstall runs a post-delete DaemonSet of `nodeagent cleanup --wait` (its own selector,
    no API token, no critical priority) and a Job that waits for it and may get and delete only it;
    cleanupHook=false (clusters without hooks) renders none of it."""
    objects = render()
    cleanup = [o for o in hooks(objects, "post-delete") if o["kind"] == "DaemonSet"]
    (daemonset,) = cleanup
    pod = daemonset["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    assert (["cleanup", "--wait"], False, None) == (
        main["args"],
        pod["automountServiceAccountToken"],
        pod.get("priorityClassName"),
    )
    assert "cleanup" == daemonset["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
    (job,) = [o for o in hooks(objects, "post-delete") if o["kind"] == "Job"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ["wait-cleanup", "--daemonset", daemonset["metadata"]["name"]] == args[:3]
    (role,) = [o for o in hooks(objects, "post-delete") if o["kind"] == "Role"]
    assert [{"apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": [daemonset["metadata"]["name"]],
             "verbs": ["get", "delete"]}] == role["rules"]  # fmt: skip
    assert [] == hooks(render({"uninstall": {"cleanupHook": False}}), "post-delete")
    assert [] == hooks(render(FEATURES["cleanup"]), "post-delete")  # the manual path needs none


def _notes(values: dict[str, Any]) -> str:
    manifests = helm.Chart.load(CHART).render(values, name="na", namespace="nodeagent", is_install=True)
    return "".join(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def test_notes_warn_that_the_startup_taint_outlives_the_release() -> None:
    """With startupTaint on, NOTES say the taint is in the nodes' own configuration and that nodes
    registering after helm uninstall stay tainted; without it, they say nothing of the kind."""
    assert ("nodeagent.io/agent-not-ready" in _notes(FEATURES["startup-taint"]), "agent-not-ready" in _notes({})) == (
        True,
        False,
    )


def test_a_scoped_mounted_secret_carries_its_scope() -> None:
    """A mounted Secret's volume has no annotations: its namespaces are given in values and passed
    with the source (--from-file-scoped), never dropped; one without stays --from-file."""
    values = {"mountedSecrets": [{"name": "team", "namespaces": "team-a, ci-*"}, {"name": "shared"}]}
    args = container(render(values))["args"]
    scoped = args[args.index("--from-file-scoped") + 1]
    assert "/etc/nodeagent/sources/team/.dockerconfigjson=team-a, ci-*" == scoped
    assert "/etc/nodeagent/sources/shared/.dockerconfigjson" == args[args.index("--from-file") + 1]


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping, as kustomize's parser does."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
    duplicated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicated:
        raise yaml.constructor.ConstructorError(None, None, f"key given twice: {duplicated}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_every_manifest_passes_a_strict_yaml_parser(feature: str) -> None:
    """Every rendered template, for every feature set, loads with a parser that refuses a key given
    twice (the cleanup DaemonSet's labels had app.kubernetes.io/component twice)."""
    manifests = helm.Chart.load(CHART).render(FEATURES[feature], name="na", namespace="nodeagent", is_install=True)
    for path, text in manifests.items():
        if not path.endswith("NOTES.txt"):
            list(yaml.load_all(text, Loader=_StrictLoader))


def test_the_agents_selectors_never_match_hook_pods() -> None:
    """The Service, PodMonitor and NetworkPolicy select the agent's pods by component, which the
    uninstall hook's pods (cleanup DaemonSet, wait-cleanup Job) do not carry."""
    objects = render(FEATURES["everything"])
    daemonsets = [o for o in objects if o["kind"] == "DaemonSet"]
    agent = next(d for d in daemonsets if "helm.sh/hook" not in d["metadata"].get("annotations", {}))
    hook_pods = [d["spec"]["template"]["metadata"]["labels"] for d in daemonsets if d is not agent]
    hook_pods += [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] == "Job"]
    selectors = [o["spec"]["selector"] for o in objects if o["kind"] == "Service"]
    selectors += [o["spec"]["selector"]["matchLabels"] for o in objects if o["kind"] == "PodMonitor"]
    assert len(selectors) == 2 and hook_pods
    for selector in selectors:
        assert selector.items() <= agent["spec"]["template"]["metadata"]["labels"].items()
        assert not any(selector.items() <= labels.items() for labels in hook_pods)


def test_the_wait_cleanup_job_can_run_where_the_cleanup_runs_and_ends_before_helm() -> None:
    """The post-delete Job tolerates what the cleanup DaemonSet tolerates (a lone control-plane
    node), pulls with the chart's and global pull secrets, gives up before helm uninstall's
    default 5-minute timeout, and has room for the kubernetes client (128Mi was exceeded)."""
    values = {"global": {"imagePullSecrets": ["from-global"]}, "imagePullSecrets": [{"name": "own"}]}
    objects = render(values)
    (job,) = hooks([o for o in objects if o["kind"] == "Job"], "post-delete")
    (cleanup,) = [d for d in hooks(objects, "post-delete") if d["kind"] == "DaemonSet"]
    pod = job["spec"]["template"]["spec"]
    assert cleanup["spec"]["template"]["spec"]["tolerations"] == pod["tolerations"]
    assert [{"name": "own"}, {"name": "from-global"}] == pod["imagePullSecrets"]
    timeout = int(pod["containers"][0]["args"][pod["containers"][0]["args"].index("--timeout") + 1])
    assert timeout < job["spec"]["activeDeadlineSeconds"] < 300
    assert pod["containers"][0]["resources"]["limits"]["memory"] == "256Mi"


def test_notes_say_first_when_the_image_is_the_placeholder() -> None:
    """No public registry publishes the image: with the default repository, NOTES open with a
    warning and the way out; with a real one, they do not."""
    assert _notes({}).lstrip().startswith("WARNING: image.repository is the chart's placeholder")
    assert "placeholder" not in _notes({"image": {"repository": "registry.example.com/platform/nodeagent"}})
