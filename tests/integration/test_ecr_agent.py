"""`nodeagent run --ecr` with the real agent process, the fake API server and the AWS peer."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fake_aws import AwsPeer
from tests.fake_kube import FakeKube
from tests.integration.conftest import SENTINEL, AgentProcess, dockerconfig, wait_for

ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
Start = Callable[..., AgentProcess]


@pytest.fixture
def aws() -> Iterator[AwsPeer]:
    peer = AwsPeer().start()
    yield peer
    peer.stop()


NODE_PROVIDER = {
    "name": "ecr-credential-provider",
    "matchImages": ["*.dkr.ecr.*.amazonaws.com"],
    "defaultCacheDuration": "12h",
    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
}


def _aws_env(peer: AwsPeer, tmp_path: Path) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": peer.url,
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SENTINEL + "-aws",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def test_run_ecr_installs_serves_and_cleans_up(
    kube: FakeKube, aws: AwsPeer, start_agent: Start, tmp_path: Path
) -> None:
    """The agent installs the plugin and config, keeps a token in config.json for --ecr-registries,
    answers the plugin, and `cleanup` leaves the node as it was."""
    kube.put_secret("ns", "creds", data={".dockerconfigjson": dockerconfig({"r.example.com": SENTINEL})})

    def prepare(root: Path) -> None:
        # An EKS node as it boots: AWS's own provider configured and its binary in the bin dir.
        config = root / "etc/eks/image-credential-provider/config.json"
        config.parent.mkdir(parents=True)
        document = {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig"}
        config.write_text(json.dumps({**document, "providers": [NODE_PROVIDER]}))
        (config.parent / NODE_PROVIDER["name"]).write_text("#!/bin/sh\nexit 1\n")
        (config.parent / NODE_PROVIDER["name"]).chmod(0o755)

    agent = start_agent(
        "--secret", "ns/creds", "--ecr", "--provider-preset", "eks", "--ecr-registries", ECR_HOST,
        env=_aws_env(aws, tmp_path), prepare=prepare,
    )  # fmt: skip
    root = agent.host_root
    wait_for(lambda: agent.passwords().get(ECR_HOST), "ECR token in config.json")
    assert SENTINEL == agent.passwords()["r.example.com"]
    plugin = root / "etc/eks/image-credential-provider/nodeagent-ecr-credential-provider"
    assert 0o755 == stat.S_IMODE(plugin.stat().st_mode)
    providers = json.loads((root / "etc/eks/image-credential-provider/config.json").read_text())["providers"]
    assert ["ecr-credential-provider", "nodeagent-ecr-credential-provider"] == [p["name"] for p in providers]
    assert 0o600 == stat.S_IMODE((root / "var/lib/nodeagent/ecr-tokens.json").stat().st_mode)

    # The kubelet's view: run the installed plugin with the args from the installed config.
    args = [
        a.replace("/var/lib/nodeagent", str(root / "var/lib/nodeagent")).replace("/run/", str(root / "run") + "/")
        for a in providers[1]["args"]
    ]
    request = {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1beta1",
        "kind": "CredentialProviderRequest",
        "image": f"{ECR_HOST}/app:1",
    }
    result = subprocess.run(
        [sys.executable, str(plugin), *args], input=json.dumps(request), capture_output=True, text=True,
        env={"PATH": os.environ["PATH"]}, timeout=60,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    response = json.loads(result.stdout)
    assert "credentialprovider.kubelet.k8s.io/v1beta1" == response["apiVersion"]
    token = json.loads((root / "var/lib/nodeagent/ecr-tokens.json").read_text())["tokens"]["us-east-1"]["token"]
    assert base64.b64decode(token).decode().split(":", 1)[1] == response["auth"][ECR_HOST]["password"]
    assert agent.metric("nodeagent_ecr_tokens_fetched_total") >= 1

    assert 0 == agent.stop()
    done = subprocess.run(
        [sys.executable, "-m", "nodeagent", "cleanup", "--host-root", str(root), "--log-format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert not plugin.exists()
    assert [NODE_PROVIDER] == json.loads((root / "etc/eks/image-credential-provider/config.json").read_text())[
        "providers"
    ]
    assert not (root / "var/lib/nodeagent/ecr-tokens.json").exists()
    assert not (root / "var/lib/kubelet/config.json").exists()
    assert SENTINEL not in done.stdout + done.stderr


def test_static_keys_and_role_from_a_secret(kube: FakeKube, aws: AwsPeer, start_agent: Start, tmp_path: Path) -> None:
    """--ecr-credentials-secret: the Secret's keys assume its role_arn, whose keys sign the ECR call (never logged)."""
    kube.put_secret("ns", "creds", data={".dockerconfigjson": dockerconfig({"r.example.com": SENTINEL})})
    kube.put_secret(
        "ns",
        "aws",
        type_="Opaque",
        data={
            "aws_access_key_id": b"AKIASTATICEXAMPLE",
            "aws_secret_access_key": (SENTINEL + "-static").encode(),
            "role_arn": b"arn:aws:iam::123456789012:role/ecr-pull",
        },
    )
    env = {k: v for k, v in _aws_env(aws, tmp_path).items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    env.pop("AWS_SECRET_ACCESS_KEY")
    agent = start_agent(
        "--secret", "ns/creds", "--ecr", "--ecr-regions", "eu-central-1", "--ecr-credentials-secret", "ns/aws", env=env
    )
    wait_for(lambda: (agent.host_root / "var/lib/nodeagent/ecr-tokens.json").exists(), "token cache")
    assert 1 <= aws.calls["AssumeRole"]  # the static keys assumed the Secret's role_arn first
    assert "AKIASTATICEXAMPLE" in aws.access_keys
    assert len(aws.access_keys) == 2  # ... and ECR was called with the role's temporary keys
    assert "eu-central-1" in json.loads((agent.host_root / "var/lib/nodeagent/ecr-tokens.json").read_text())["tokens"]
