"""Build the real image from the Dockerfile (buildah, no container engine) and run the agent in it.

Needs root, buildah and debootstrap (`make test` installs the Debian packages when missing). In
CI a missing prerequisite is a failure; elsewhere the test is skipped with the reason. The
bootstrapped base is cached between runs on one machine (localhost/nodeagent-base:bookworm).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FIGURES, docker_config
from tests.real_parsers import kubelet_read_config

ROOT = Path(__file__).resolve().parent.parent
IMAGE = f"localhost/nodeagent:test-{os.getpid()}"
ENV = {**os.environ, "STORAGE_DRIVER": "vfs"}


def _buildah(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *args], input=stdin, capture_output=True, text=True, env=ENV, check=check, timeout=600
    )


@pytest.fixture(scope="module")
def image() -> Iterator[dict[str, Any]]:
    missing = [
        tool
        for tool in ("buildah", "debootstrap")
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")
    ]
    if missing or os.geteuid() != 0:
        reason = f"building the image needs root and {', '.join(missing) or 'buildah'}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts/build-image.sh")],
        env={**ENV, "IMAGE": IMAGE, "BASE_IMAGE": "local", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert 0 == result.returncode, result.stderr[-3000:]
    config = json.loads(_buildah("inspect", "--type", "image", IMAGE).stdout)["OCIv1"]
    sizes = _buildah("images", "--format", "{{.Name}}:{{.Tag}} {{.Size}}").stdout.splitlines()
    size = next(line.split(" ", 1)[1].strip() for line in sizes if line.startswith(IMAGE))
    FIGURES["container image"] = f"{size} built from the Dockerfile with buildah in {time.monotonic() - started:.0f} s"
    container = _buildah("from", "--pull-never", IMAGE).stdout.strip()
    yield {"config": config, "container": container}
    _buildah("rm", container, check=False)
    _buildah("rmi", IMAGE, check=False)


def _run(
    image: dict[str, Any], *command: str, volumes: tuple[str, ...] = (), stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    mounts = [arg for volume in volumes for arg in ("-v", volume)]
    return _buildah(
        "run", "--isolation", "chroot", *mounts, image["container"], "--", *command, stdin=stdin, check=False
    )


def _entrypoint(image: dict[str, Any]) -> list[str]:
    return list(image["config"]["config"]["Entrypoint"])


def test_entrypoint_and_user_match_the_chart(image: dict[str, Any]) -> None:
    """The image runs as the user the chart's securityContext asks for, with the agent as entrypoint,
    and the chart's args are subcommands of it."""
    config = image["config"]["config"]
    values = yaml.safe_load((ROOT / "daemonset/values.yaml").read_text())
    security = values["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == config["User"]
    assert ["/opt/nodeagent/bin/nodeagent"] == config["Entrypoint"]
    template = (ROOT / "daemonset/templates/daemonset.yaml").read_text()
    assert "command:" not in template  # so the image's entrypoint is what runs
    assert "NODEAGENT_HOST_ROOT=/host" in config["Env"]


def test_version(image: dict[str, Any]) -> None:
    """`nodeagent --version` runs inside the image."""
    from nodeagent import __version__

    result = _run(image, *_entrypoint(image), "--version")
    assert 0 == result.returncode, result.stderr
    assert f"nodeagent {__version__}" == result.stdout.strip()


def test_sync_into_a_mounted_host_root(image: dict[str, Any], tmp_path: Path) -> None:
    """`nodeagent sync --once` inside the image writes the kubelet's config.json and containerd's
    hosts.toml into /host."""
    host = tmp_path / "host"
    (host / "var/lib/kubelet").mkdir(parents=True)
    (host / "src.json").write_bytes(docker_config({"registry.example.com": ("puller", "image-test-password")}))
    (host / "etc/containerd").mkdir(parents=True)
    (host / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
    )
    (host / "regs.toml").write_text('[registries."registry.example.com"]\nmirrors = ["https://m.example"]\n')
    result = _run(
        image,
        *_entrypoint(image), "sync", "--once", "--from-file", "/host/src.json", "--registry-config", "/host/regs.toml",
        volumes=(f"{host}:/host",),
    )  # fmt: skip
    assert 0 == result.returncode, result.stdout + result.stderr
    assert (host / "etc/containerd/certs.d/registry.example.com/hosts.toml").is_file()
    config = host / "var/lib/kubelet/config.json"
    assert [("registry.example.com", "puller", "image-test-password")] == [
        (c.key, c.username, c.password) for c in kubelet_read_config(config.read_bytes())
    ]
    assert 0o600 == config.stat().st_mode & 0o777


def test_nsenter_for_the_systemd_restart_policy(image: dict[str, Any]) -> None:
    """--containerd-restart systemd runs nsenter: the image has it."""
    result = _run(image, "nsenter", "--version")
    assert 0 == result.returncode, result.stderr


def test_plugin_runs_with_the_images_python(image: dict[str, Any], tmp_path: Path) -> None:
    """The ECR plugin at its documented path answers a request with the image's Python."""
    state = tmp_path / "state"
    state.mkdir()
    token = base64.b64encode(b"AWS:image-test-token").decode()
    (state / "ecr-tokens.json").write_text(
        json.dumps({"tokens": {"us-east-1": {"token": token, "expiresAt": time.time() + 6 * 3600}}})
    )
    request = {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1",
    }
    result = _run(
        image,
        "/opt/nodeagent/libexec/nodeagent-ecr-credential-provider",
        "--state-dir",
        "/state",
        volumes=(f"{state}:/state",),
        stdin=json.dumps(request),
    )
    assert 0 == result.returncode, result.stderr
    response = json.loads(result.stdout)
    assert "image-test-token" == response["auth"]["123456789012.dkr.ecr.us-east-1.amazonaws.com"]["password"]
