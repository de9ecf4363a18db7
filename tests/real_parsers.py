"""The real consumers' parsers, for judging the files nodeagent writes (style.md: judge output with
the consumer's own parser).

* containerd's hosts.toml loader: ``tests/harness/containerd`` (Go, containerd v1.6.20's
  ``remotes/docker/config``, the version Debian 12 ships), built from the Go module proxy into
  ``.cache/harness/`` on first use and rebuilt when its sources change;
* containerd's config loader: Debian's ``containerd`` binary, ``containerd --config FILE config dump``;
* the kubelet's credential code: ``tests/harness/kubelet`` (Go, k8s.io/kubernetes v1.34.4's
  ``pkg/credentialprovider`` keyring and ``plugin`` manager), built the same way.

A missing prerequisite (Go, containerd) fails under ``CI`` and skips elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "tests/harness"
CACHE = REPO / ".cache/harness"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is needed for the real-parser tests (make test installs it)")
    pytest.skip(f"{what} is not installed")


def _sources_digest(module: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(module.rglob("*")):
        if path.is_file() and path.suffix in (".go", ".mod", ".sum"):
            digest.update(path.relative_to(module).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def harness_binary(module_name: str, name: str) -> Path:
    """Build (once per source version) and return one of the Go harness binaries: each consumer
    is a Go module of its own under tests/harness/, pinned to the release it stands for."""
    module = HARNESS / module_name
    known = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")
    go = shutil.which("go") or next((p for p in known if Path(p).exists()), None)
    if go is None:
        _missing("Go")
    binary = CACHE / module_name / _sources_digest(module) / name
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -mod=readonly").strip(), "CGO_ENABLED": "0"}
        result = subprocess.run(
            [str(go), "build", "-o", str(binary), f"./{name}"],
            cwd=module, capture_output=True, text=True, env=env, timeout=900, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"building the {name} harness failed:\n{result.stderr[-3000:]}")
    return binary


def containerd_hosts(root: Path, host: str) -> dict[str, Any]:
    """What containerd 1.6's hosts loader makes of ``<root>/<host>/hosts.toml``: the hosts it
    would try, in order, and the errors it logged (an unparseable file is ignored, not fatal)."""
    result = subprocess.run(
        [str(harness_binary("containerd", "containerd-hosts")), str(root), host],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(result.stdout))


def containerd_config_dump(config: Path) -> subprocess.CompletedProcess[str]:
    """``containerd --config FILE config dump``: exit 0 and the merged config when containerd
    would start with the file, non-zero with containerd's own error otherwise."""
    binary = shutil.which("containerd") or ("/usr/bin/containerd" if Path("/usr/bin/containerd").exists() else None)
    if binary is None:
        _missing("containerd")
    return subprocess.run(
        [str(binary), "--config", str(config), "config", "dump"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _kubelet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(harness_binary("kubelet", "kubelet-credentials")), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def kubelet_lookup(root_dir: Path, image: str) -> list[tuple[str, str]]:
    """The (username, password) pairs the kubelet 1.34's own keyring returns for ``image`` from the
    config.json it would read with ``--root-dir root_dir``, in its order."""
    result = _kubelet("lookup", "--root-dir", str(root_dir), image)
    assert 0 == result.returncode, result.stderr[-500:]
    return [(c["username"], c["password"]) for c in json.loads(result.stdout)["credentials"]]


def kubelet_check_provider_config(path: Path) -> subprocess.CompletedProcess[str]:
    """Whether the kubelet 1.34 would load a CredentialProviderConfig (exit 0), else its error."""
    return _kubelet("check-provider-config", str(path))


def kubelet_provide(config: Path, bin_dir: Path, image: str) -> list[tuple[str, str]]:
    """The credentials the kubelet 1.34's plugin manager gets for ``image`` by running the
    configured plugins as the kubelet does."""
    result = _kubelet("provide", "--config", str(config), "--bin-dir", str(bin_dir), image)
    assert 0 == result.returncode, result.stderr[-500:]
    return [(c["username"], c["password"]) for c in json.loads(result.stdout)["credentials"]]


class RealAPIServer:
    """kube-apiserver and etcd of k8s 1.34.4 (tests/harness/kubelet), on 127.0.0.1, with RBAC, the
    Node authorizer, ServiceAccount tokens and a static admin token; ``request`` speaks to it."""

    ADMIN_TOKEN = "admin-test-token"

    def __init__(self, directory: Path) -> None:
        import socket

        self.dir = directory
        ports = []
        for _ in range(3):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports.append(probe.getsockname()[1])
        self.etcd_url, self.port = f"http://127.0.0.1:{ports[0]}", ports[2]
        self.url = f"https://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> RealAPIServer:
        import ssl
        import time
        import urllib.request

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (self.dir / "sa.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        (self.dir / "tokens.csv").write_text(f"{self.ADMIN_TOKEN},admin,admin,system:masters\n")
        etcd, apiserver = harness_binary("kubelet", "etcd"), harness_binary("kubelet", "kube-apiserver")
        log = (self.dir / "etcd.log").open("wb")
        self.procs.append(subprocess.Popen([str(etcd), str(self.dir / "etcd"), self.etcd_url, self._peer()],
                                           stdout=log, stderr=log))  # fmt: skip
        log = (self.dir / "kube-apiserver.log").open("wb")
        self.procs.append(subprocess.Popen([
            str(apiserver), f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={self.port}", f"--cert-dir={self.dir / 'certs'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=Node,RBAC",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
        ], stdout=log, stderr=log))  # fmt: skip
        context = ssl._create_unverified_context()  # noqa: S323 - the test server's self-signed certificate
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"{self.url}/readyz", headers=self._auth(self.ADMIN_TOKEN))  # noqa: S310
                with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
                    if response.read() == b"ok":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                tail = (self.dir / "kube-apiserver.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"kube-apiserver did not become ready:\n{tail}")
            time.sleep(0.5)

    def _peer(self) -> str:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{probe.getsockname()[1]}"

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """One API call (as admin unless ``token``): (status, decoded JSON body)."""
        import ssl
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        headers = {**self._auth(token or self.ADMIN_TOKEN), "Content-Type": content_type}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)  # noqa: S310
        context = ssl._create_unverified_context()  # noqa: S323
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for ``token`` (the server's certificate is self-signed: not verified)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "t", "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
