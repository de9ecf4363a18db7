"""Real peers for end-to-end tests: Debian's distribution registry (TLS + htpasswd), a test image
pushed through the registry HTTP API, and Debian's containerd pulling through CRI like the kubelet.

Each helper fails (under ``CI``) or skips (elsewhere) when its program is missing; nothing is faked.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest


def need(program: str) -> str:
    """The program's path; a missing one fails the test under CI (make test installs it as root)."""
    path = shutil.which(program) or (f"/usr/sbin/{program}" if os.path.exists(f"/usr/sbin/{program}") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is needed (make test installs it with apt-get as root)")
        pytest.skip(f"{program} is not installed")
    return path


def node_address() -> str:
    """A non-loopback IPv4 address of this machine. containerd treats loopback registries
    (127.0.0.0/8, localhost) as local and falls back to plain HTTP, so a TLS test needs another."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    if os.environ.get("CI"):
        pytest.fail("the containerd TLS tests need a non-loopback IPv4 address on this machine")
    pytest.skip("no non-loopback IPv4 address")


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@dataclass
class Registry:
    """A running docker-registry on 127.0.0.1 with TLS and one htpasswd user."""

    directory: Path
    ca: Path
    cert: Path
    key: Path
    port: int
    address: str = "127.0.0.1"
    username: str = "puller"
    password: str = "right-password"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        binary = need("docker-registry")
        htpasswd = self.directory / "htpasswd"
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        htpasswd.write_text(f"{self.username}:{hashed}\n")
        config = self.directory / "registry.yml"
        config.write_text(
            json.dumps({
                "version": 0.1,
                "log": {"level": "error"},
                "storage": {"filesystem": {"rootdirectory": str(self.directory / "storage")}},
                "http": {"addr": self.host, "tls": {"certificate": str(self.cert), "key": str(self.key)}},
                "auth": {"htpasswd": {"realm": "test", "path": str(htpasswd)}},
            })
        )  # fmt: skip
        self.proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"https://{self.host}/v2/", context=self.context(), timeout=2)
            except urllib.error.HTTPError:
                return  # 401: up
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    pytest.fail("docker-registry did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def set_password(self, password: str) -> None:
        """Rotate the user's password (distribution 2.8 reads htpasswd at start: restart it)."""
        self.stop()
        self.password = password
        self.start()

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def _request(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        full = url if url.startswith("https://") else f"https://{self.host}{url}"
        request = urllib.request.Request(full, body or None, method=method)  # noqa: S310 (https only)
        request.add_header("Authorization", f"Basic {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        return urllib.request.urlopen(request, context=self.context(), timeout=10)  # noqa: S310

    def push_image(self, repository: str, tag: str, content: bytes, *, mode: int = 0o644) -> str:
        """Build a one-layer image holding ``/hello`` (``mode``: 0o755 for a program) and push it;
        return the manifest digest."""
        layer, raw = image_layer({"hello": (content, mode)})
        config = json.dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        }).encode()  # fmt: skip
        for blob in (layer, config):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            with self._request("POST", f"/v2/{repository}/blobs/uploads/") as answer:
                location = answer.headers["Location"]
            separator = "&" if "?" in location else "?"
            octets = {"Content-Type": "application/octet-stream"}
            self._request("PUT", f"{location}{separator}digest={digest}", blob, octets).close()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer),
                        "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}],
        }).encode()  # fmt: skip
        oci = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        self._request("PUT", f"/v2/{repository}/manifests/{tag}", manifest, oci).close()
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


CONTAINERD_CONFIG = """# the node's own containerd config (the test's: private root, state and socket)
version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{root}/containerd.sock"

[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"""


def image_layer(files: dict[str, tuple[bytes, int]]) -> tuple[bytes, bytes]:
    """A gzipped tar layer of ``{name: (content, mode)}``, and the uncompressed tar (for diff_ids)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, (content, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


class PullFailed(Exception):
    """CRI PullImage failed; the message is containerd's (gRPC details)."""


class Containerd:
    """Debian's containerd with a private root/state/socket, driven over CRI like the kubelet."""

    def __init__(self, config: Path, runtime_dir: Path) -> None:
        self.config, self.runtime_dir = config, runtime_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = runtime_dir / "containerd.log"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "containerd.sock"

    def start(self) -> None:
        binary = need("containerd")
        self.socket.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([binary, "--config", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self._answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"containerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        if not self.socket.exists():
            return False
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            try:
                api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pull(self, image: str, auth: tuple[str, str] | None = None) -> str:
        """CRI ImageService/PullImage, as the kubelet sends it (with or without credentials)."""
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        if auth is not None:
            request.auth.CopyFrom(api_pb2.AuthConfig(username=auth[0], password=auth[1]))
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            try:
                return str(api_pb2_grpc.ImageServiceStub(channel).PullImage(request, timeout=60).image_ref)
            except grpc.RpcError as exc:
                raise PullFailed(f"{exc.code()}: {exc.details()}") from None  # type: ignore[attr-defined]
