"""A real kubelet (k8s 1.34.4, built by tests/harness/kubelet) runs a pod whose image sits in a
private registry, with no imagePullSecrets: the only credential on the node is the config.json
nodeagent wrote into the kubelet's root directory.

The node: Debian's containerd over CRI (runc, cgroup v1) with a private root, state and socket;
Debian's distribution registry with TLS from a test CA and htpasswd; the kubelet in standalone
mode (no API server: a static pod, host network, so no CNI is needed), HOME and its working
directory empty so that its config.json search finds only the one under --root-dir. The pod
sandbox image is a static binary imported into containerd (the machine has no access to
registry.k8s.io); the pod's image is pulled by the kubelet with the credential from config.json,
through the hosts.toml (the test CA) nodeagent wrote for containerd.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIGURES
from tests.integration.conftest import wait_for
from tests.peers import CONTAINERD_CONFIG, Containerd, Registry, free_port, image_layer, need, node_address
from tests.real_parsers import harness_binary
from tests.tls import make_ca_and_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="the kubelet needs root")

PAUSE = "nodeagent.test/pause:1"
PROGRAM = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static void done(int s) { (void)s; _exit(0); }
int main(int argc, char **argv) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (int i = 1; i < argc; i++) puts(argv[i]);
    fflush(stdout);
    for (;;) pause();
}
"""


def _static_program(directory: Path) -> bytes:
    """A static binary that prints its arguments and waits: the pod's program and the sandbox's."""
    source = directory / "hello.c"
    source.write_text(PROGRAM)
    gcc = need("gcc")
    subprocess.run([gcc, "-static", "-O2", "-o", str(directory / "hello"), str(source)], check=True, timeout=120)
    return (directory / "hello").read_bytes()


def _oci_archive(path: Path, program: bytes, name: str) -> None:
    """An OCI image archive (what `ctr images import` reads) of one layer holding /pause."""
    layer, raw = image_layer({"pause": (program, 0o755)})
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }).encode()  # fmt: skip

    def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "size": len(blob), "digest": "sha256:" + hashlib.sha256(blob).hexdigest()}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }).encode()  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        **descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.split(":")[-1]},
    }]}).encode()  # fmt: skip
    with tarfile.open(path, "w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        for blob in (layer, config, manifest):
            files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class Kubelet:
    """The kubelet in standalone mode: static pods from a directory, no API server."""

    def __init__(self, root: Path, runtime: Path) -> None:
        self.root, self.runtime = root, runtime
        self.proc: subprocess.Popen[bytes] | None = None
        self.flags: list[str] = []
        self.log = root / "kubelet.log"

    @property
    def root_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def start(self) -> None:
        self.manifests.mkdir(parents=True, exist_ok=True)
        empty = self.root / "empty"  # HOME and the working directory: no other config.json
        empty.mkdir(exist_ok=True)
        config = self.root / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "staticPodPath": str(self.manifests),
            "containerRuntimeEndpoint": f"unix://{self.runtime}/containerd.sock",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "cgroupsPerQOS": False, "enforceNodeAllocatable": [], "localStorageCapacityIsolation": False,
            "enableServer": False, "readOnlyPort": 0, "healthzPort": 0,
            "podLogsDir": str(self.root / "pod-logs"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {}, "serializeImagePulls": True, "fileCheckFrequency": "1s",
        }))  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(empty)}
        command = [str(harness_binary("kubelet", "kubelet")), "--config", str(config),
                   "--root-dir", str(self.root_dir), "--hostname-override", "kubelet-e2e", "--v=2",
                   *self.flags]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=empty, env=env)

    def running(self, message: str) -> bool:
        """Whether a container of a pod has printed ``message`` (the kubelet's own pod logs)."""
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"the kubelet exited: {self.log.read_text(errors='replace')[-3000:]}")
        logs = self.root / "pod-logs"
        return any(message.encode() in p.read_bytes() for p in logs.rglob("*.log") if p.is_file())

    def run_pod(self, name: str, image: str, message: str) -> None:
        """A static pod (host network, no imagePullSecrets) whose container prints ``message``."""
        self.manifests.mkdir(parents=True, exist_ok=True)
        (self.manifests / f"{name}.json").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hostNetwork": True, "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "Always", "command": ["/hello", message]}]},
        }))  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def _remove_pods(containerd: Containerd) -> None:
    import grpc
    from cri_api.v1 import api_pb2, api_pb2_grpc

    with grpc.insecure_channel(f"unix://{containerd.socket}") as channel:
        runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        for sandbox in runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items:
            runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60)
            runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, Registry, Containerd, Kubelet, bytes]]:
    runtime = Path(tempfile.mkdtemp(prefix="nk-", dir="/tmp"))  # sun_path is 108 bytes
    pki = tmp_path / "pki"
    pki.mkdir()
    address = node_address()
    ca, cert, key = make_ca_and_server(pki, ips=(address,))
    registry = Registry(tmp_path / "registry", ca, cert, key, free_port(address), address=address)
    registry.directory.mkdir()
    registry.start()
    program = _static_program(tmp_path)
    root = tmp_path / "node"
    (root / "etc/containerd").mkdir(parents=True)
    # restrict_oom_score_adj: the kubelet asks for -998 for a sandbox, which needs CAP_SYS_RESOURCE;
    # these machines' root lacks it (a node's containerd has it), so containerd caps it at its own.
    sandbox = f'  disable_tcp_service = true\n  restrict_oom_score_adj = true\n  sandbox_image = "{PAUSE}"\n'
    config = CONTAINERD_CONFIG.format(root=runtime, certs=root / "etc/containerd/certs.d").replace(
        "  disable_tcp_service = true\n", sandbox
    )
    (root / "etc/containerd/config.toml").write_text(config)
    containerd = Containerd(root / "etc/containerd/config.toml", runtime)
    containerd.start()
    kubelet = Kubelet(root, runtime)
    try:
        yield root, registry, containerd, kubelet, program
    finally:
        kubelet.stop()
        _remove_pods(containerd)  # the shims and the pods' processes outlive containerd otherwise
        containerd.stop()
        registry.stop()
        subprocess.run(["umount", "-R", str(runtime)], capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(root / "kubelet")], capture_output=True, check=False)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.parametrize("credential", [True, False], ids=["nodeagent-wrote-it", "control-no-credential"])
def test_a_pod_pulls_a_private_image_with_only_what_nodeagent_wrote(
    node: tuple[Path, Registry, Containerd, Kubelet, bytes], credential: bool
) -> None:
    """A static pod without imagePullSecrets runs an image from a registry that demands a password:
    the kubelet found the credential in the config.json nodeagent wrote under its --root-dir, and
    containerd trusted the registry through the hosts.toml nodeagent wrote (its test CA). The
    control: the same node with nodeagent's Secret lacking that registry, and the pull is refused."""
    root, registry, containerd, kubelet, program = node
    digest = registry.push_image("team/private", "1", program, mode=0o755)
    archive = root / "pause.tar"
    _oci_archive(archive, program, PAUSE)
    ctr = need("ctr")
    subprocess.run([ctr, "-a", str(containerd.socket), "-n", "k8s.io", "images", "import", "--snapshotter", "native",
                    str(archive)], check=True, capture_output=True, timeout=60)  # fmt: skip
    secret = root / "secret.json"
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    secret.write_text(json.dumps({"auths": {registry.host if credential else "elsewhere.example": {"auth": auth}}}))
    settings = root / "registries.toml"
    settings.write_text(f'[registries."{registry.host}"]\nca = "{registry.ca}"\n')
    sync = subprocess.run([
        sys.executable, "-m", "nodeagent", "sync", "--host-root", "/", "--log-format", "json",
        "--from-file", str(secret), "--kubelet-root-dir", str(kubelet.root_dir), "--state-dir", str(root / "state"),
        "--containerd-config", str(root / "etc/containerd/config.toml"), "--registry-config", str(settings),
    ], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert 0 == sync.returncode, sync.stderr[-2000:]
    image = f"{registry.host}/team/private:1"
    (kubelet.manifests).mkdir(parents=True, exist_ok=True)
    (kubelet.manifests / "private.json").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "private", "namespace": "default"},
        "spec": {"hostNetwork": True, "containers": [{
            "name": "app", "image": image, "imagePullPolicy": "Always",
            "command": ["/hello", "hello from a private image"]}]},
    }))  # fmt: skip
    started = time.monotonic()
    kubelet.start()
    logs = root / "pod-logs"

    def greeting() -> bool:
        if kubelet.proc is not None and kubelet.proc.poll() is not None:
            pytest.fail(f"the kubelet exited: {kubelet.log.read_text(errors='replace')[-3000:]}")
        return any(b"hello from a private image" in p.read_bytes() for p in logs.rglob("*.log") if p.is_file())

    if not credential:
        refused = wait_for(
            lambda: [line for line in kubelet.log.read_text(errors="replace").splitlines()
                     if "Failed to pull image" in line and image in line],
            "the kubelet's pull refused", timeout=120,
        )  # fmt: skip
        assert "401 Unauthorized" in refused[0] or "authorization failed" in refused[0], refused[0][:500]
        assert not greeting()
        return
    try:
        wait_for(greeting, "the pod's container running the private image", timeout=180)
    except BaseException:
        print(kubelet.log.read_text(errors="replace")[-6000:])
        print(containerd.log.read_text(errors="replace")[-3000:])
        raise
    FIGURES["real kubelet"] = (
        f"k8s 1.34.4 kubelet ran a pod from a private registry with nodeagent's config.json only "
        f"(image {digest[:19]}..., {time.monotonic() - started:.0f} s from kubelet start)"
    )
    assert registry.password not in kubelet.log.read_text(errors="replace")


def _import_pause(root: Path, containerd: Containerd, program: bytes) -> None:
    archive = root / "pause.tar"
    _oci_archive(archive, program, PAUSE)
    subprocess.run([need("ctr"), "-a", str(containerd.socket), "-n", "k8s.io", "images", "import",
                    "--snapshotter", "native", str(archive)], check=True, capture_output=True, timeout=60)  # fmt: skip


def test_the_kubelet_uses_a_rotation_on_its_next_pull_through_the_provider(
    node: tuple[Path, Registry, Containerd, Kubelet, bytes],
) -> None:
    """With nodeagent-credential-provider wired into the kubelet (its flags) and --provider-only,
    config.json holds nothing of the registry and the kubelet still pulls, by running the plugin;
    after the registry's password is rotated and the Secret with it, the very next pull uses the
    new password (the plugin's answers are not cached), with no kubelet restart."""
    root, registry, containerd, kubelet, program = node
    registry.push_image("team/private", "1", program, mode=0o755)
    _import_pause(root, containerd, program)
    secret, state = root / "secret.json", root / "state"
    bin_dir, provider_config = root / "provider-bin", root / "provider-config.yaml"
    (root / "registries.toml").write_text(f'[registries."{registry.host}"]\nca = "{registry.ca}"\n')

    def sync(password: str) -> None:
        auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
        secret.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        result = subprocess.run([
            sys.executable, "-m", "nodeagent", "sync", "--host-root", "/", "--log-format", "json",
            "--from-file", str(secret), "--kubelet-root-dir", str(kubelet.root_dir), "--state-dir", str(state),
            "--containerd-config", str(root / "etc/containerd/config.toml"),
            "--registry-config", str(root / "registries.toml"),
            "--credential-provider", "--provider-only", "--provider-bin-dir", str(bin_dir),
            "--provider-config", str(provider_config),
        ], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert 0 == result.returncode, result.stderr[-2000:]

    sync(registry.password)
    config_json = kubelet.root_dir / "config.json"
    assert not config_json.exists() or registry.host not in config_json.read_text()
    kubelet.flags = ["--image-credential-provider-config", str(provider_config),
                     "--image-credential-provider-bin-dir", str(bin_dir)]  # fmt: skip
    kubelet.start()
    image = f"{registry.host}/team/private:1"
    kubelet.run_pod("before", image, "pulled with the first password")
    wait_for(lambda: kubelet.running("pulled with the first password"), "the pull through the provider", timeout=120)

    registry.set_password("SENTINEL-rotated-password")
    sync(registry.password)
    rotated = time.monotonic()
    kubelet.run_pod("after", image, "pulled with the rotated password")
    wait_for(lambda: kubelet.running("pulled with the rotated password"), "the pull after the rotation", timeout=120)
    FIGURES["real kubelet, credential provider"] = (
        f"after a rotation the next pull used the new password: its container ran {time.monotonic() - rotated:.1f} s "
        "after the sync (the kubelet looks for new static pods every second)"
    )
    assert "SENTINEL" not in kubelet.log.read_text(errors="replace")
