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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Registry:
    """A running docker-registry on 127.0.0.1 with TLS and one htpasswd user."""

    directory: Path
    ca: Path
    cert: Path
    key: Path
    port: int
    username: str = "puller"
    password: str = "right-password"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

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

    def push_image(self, repository: str, tag: str, content: bytes) -> str:
        """Build a one-layer image holding ``/hello`` and push it; return the manifest digest."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo("hello")
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        layer = gzip.compress(raw.getvalue(), mtime=0)
        config = json.dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]},
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
