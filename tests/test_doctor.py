"""`nodeagent doctor`: every finding produced by a broken sandbox node, and absent on a healthy one."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import b64
from tests.tls import make_ca_and_server

CONFIG = "var/lib/kubelet/config.json"


def _doctor(host_root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "nodeagent", "doctor", "--host-root", str(host_root), "--json", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 1, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def _ids(report: dict[str, Any]) -> set[str]:
    return {f["id"] for f in report["findings"]}


def _sync(host_root: Path, tmp_path: Path, auths: dict[str, Any]) -> None:
    source = tmp_path / "src.json"
    source.write_text(json.dumps({"auths": auths}))
    subprocess.run(
        [sys.executable, "-m", "nodeagent", "sync", "--from-file", str(source), "--host-root", str(host_root)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    os.utime(host_root / CONFIG, (time.time() - 600, time.time() - 600))


def test_healthy_node(host_root: Path, tmp_path: Path) -> None:
    """A node the agent synced, with nothing odd: exit 0, only the healthy and informational findings."""
    _sync(host_root, tmp_path, {"r.example.com": {"auth": b64("u:SENTINEL-doctor")}})
    code, report = _doctor(host_root, "--no-discover")
    assert 0 == code
    assert "healthy" == report["status"] and 1 == report["schemaVersion"]
    assert {"node.healthy", "discovery.kubelet-not-found", "state.revision", "containerd.config-missing"} == _ids(
        report
    )


@pytest.mark.parametrize(
    ("setup", "finding", "exit_code"),
    [
        ("nothing", "kubelet.config.missing", 2),
        ("bad-auth", "kubelet.config.unparseable", 2),
        ("wide-mode", "kubelet.config.permissions", 1),
        ("recent", "kubelet.config.recently-changed", 0),
        ("creds-store", "kubelet.config.credsstore", 0),
        ("token-only", "kubelet.config.token-only-entry", 1),
        ("docker-hub", "kubelet.config.docker-hub", 1),
        ("ledger-mismatch", "state.ledger-mismatch", 1),
        ("temp-file", "state.temp-files", 1),
        ("unmanaged", "state.nothing-managed", 1),
    ],
)
def test_each_finding(host_root: Path, tmp_path: Path, setup: str, finding: str, exit_code: int) -> None:
    """Each broken state produces its finding (and the right exit status), without printing a secret."""
    config = host_root / CONFIG
    if setup != "nothing" and setup != "unmanaged":
        _sync(host_root, tmp_path, {"r.example.com": {"auth": b64("u:SENTINEL-doctor")}})
    if setup == "bad-auth":
        doc = json.loads(config.read_text())
        doc["auths"]["broken.example.com"] = {"auth": "SENTINEL%%"}
        config.write_text(json.dumps(doc))
    elif setup == "wide-mode":
        config.chmod(0o644)
    elif setup == "recent":
        os.utime(config)
    elif setup in ("creds-store", "token-only", "docker-hub", "ledger-mismatch"):
        doc = json.loads(config.read_text())
        if setup == "creds-store":
            doc["credsStore"] = "desktop"
        elif setup == "token-only":
            doc["auths"]["t.example.com"] = {"identitytoken": "SENTINEL-token"}
        elif setup == "docker-hub":
            doc["auths"]["https://index.docker.io/v1/"] = {"auth": b64("u:SENTINEL-hub")}
        else:
            del doc["auths"]["r.example.com"]
        config.write_text(json.dumps(doc))
        os.utime(config, (time.time() - 600, time.time() - 600))
    elif setup == "temp-file":
        (config.parent / ".config.json.nodeagent-tmp-abc").write_text("partial")
    elif setup == "unmanaged":
        config.write_text(json.dumps({"auths": {"r.example.com": {"auth": b64("u:SENTINEL-doctor")}}}))
        os.utime(config, (time.time() - 600, time.time() - 600))
    code, report = _doctor(host_root, "--no-discover")
    assert finding in _ids(report)
    assert exit_code == code
    assert "SENTINEL" not in json.dumps(report)


def test_image_answer(host_root: Path, tmp_path: Path) -> None:
    """--image lists the credentials the kubelet would try, in order, and the providers it would call."""
    _sync(host_root, tmp_path, {
        "registry.example.com": {"auth": b64("a:1")},
        "registry.example.com/team": {"auth": b64("b:2")},
        "other.example.com": {"auth": b64("c:3")},
    })  # fmt: skip
    _, report = _doctor(
        host_root, "--no-discover", "--image", "registry.example.com/team/app:1.0", "--provider-preset", "eks"
    )
    assert ["registry.example.com/team", "registry.example.com"] == [c["key"] for c in report["image"]["credentials"]]
    _, ecr = _doctor(
        host_root,
        "--no-discover",
        "--image",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/app",
        "--provider-preset",
        "eks",
    )
    assert ["nodeagent-ecr-credential-provider"] == ecr["image"]["providers"]
    assert "provider.config-missing" in _ids(ecr)
    _, nothing = _doctor(host_root, "--no-discover", "--image", "unknown.example.com/app")
    assert "image.no-credentials" in _ids(nothing)


def test_provider_checks(host_root: Path) -> None:
    """An installed provider with no running agent: the socket and cache findings name the fix."""
    subprocess.run(
        [sys.executable, "-m", "nodeagent", "install-provider", "--host-root", str(host_root),
         "--provider-preset", "eks"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    _, report = _doctor(host_root, "--no-discover", "--provider-preset", "eks")
    ids = _ids(report)
    assert {"provider.socket-down", "provider.token-cache-missing"} <= ids
    assert not ids & {"provider.not-listed", "provider.plugin-missing", "provider.config-missing"}


@pytest.fixture
def fake_kubelet(tmp_path: Path) -> Iterator[int]:
    """A real process named kubelet with known flags (a shell script that sleeps), for discovery."""
    binary = tmp_path / "bin" / "kubelet"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nsleep 300\n")
    binary.chmod(0o755)
    workdir = tmp_path / "kubelet-cwd"
    workdir.mkdir()
    proc = subprocess.Popen(
        [str(binary), "--root-dir=/data/kubelet", "--image-credential-provider-config", "/etc/cp.yaml"],
        cwd=workdir, env={"HOME": "/home/kube"},
    )  # fmt: skip
    yield proc.pid
    proc.kill()
    proc.wait()


def test_discovery_reads_the_kubelets_flags(host_root: Path, fake_kubelet: int, tmp_path: Path) -> None:
    """The running kubelet's --root-dir, provider flags, cwd and HOME are found; a root-dir mismatch is an error."""
    from nodeagent.doctor import discover

    facts = discover(kubelet_root_dir="/var/lib/kubelet", provider_config=None, provider_bin_dir=None)
    assert (fake_kubelet, "process", "/data/kubelet", "/etc/cp.yaml", "/home/kube") == (
        facts.kubelet_pid, facts.source, facts.kubelet_root_dir, facts.provider_config, facts.kubelet_home,
    )  # fmt: skip
    assert str(tmp_path / "kubelet-cwd") == facts.kubelet_cwd
    _, report = _doctor(host_root)
    assert "kubelet.root-dir-mismatch" in _ids(report)


# -- --probe against real registries -------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_ca_and_server(tmp_path)


@pytest.fixture
def basic_registry(tmp_path: Path, tls: tuple[Path, Path, Path]) -> Iterator[str]:
    """Debian's docker-registry (distribution) with TLS from the test CA and htpasswd auth."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-registry is needed (make test installs it as root)")
        pytest.skip("docker-registry is not installed")
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("puller:" + bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=5)).decode() + "\n")
    config = tmp_path / "registry.yml"
    config.write_text(
        json.dumps({
            "version": 0.1,
            "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
            "http": {"addr": f"127.0.0.1:{port}", "tls": {"certificate": str(tls[1]), "key": str(tls[2])}},
            "auth": {"htpasswd": {"realm": "test", "path": str(htpasswd)}},
        })
    )  # fmt: skip
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(tls[0]))
    deadline = time.monotonic() + 30
    import urllib.error
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/", context=context, timeout=2)
        except urllib.error.HTTPError:
            break  # 401: up
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("docker-registry did not start")
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


@pytest.fixture
def bearer_registry(tls: tuple[Path, Path, Path]) -> Iterator[str]:
    """A registry that answers with a Bearer challenge and a token endpoint (the Docker Hub flow)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            port = self.server.server_address[1]
            if self.path.startswith("/token"):
                if auth == "Basic " + base64.b64encode(b"puller:right-password").decode():
                    self._answer(200, {"token": "issued-token"})
                else:
                    self._answer(401, {})
            elif auth == "Bearer issued-token":
                self._answer(200, {})
            else:
                challenge = f'Bearer realm="https://127.0.0.1:{port}/token",service="fake-registry"'
                self._answer(401, {}, {"WWW-Authenticate": challenge})

        def _answer(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls[1]), str(tls[2]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_probe_basic_and_bearer(
    host_root: Path, tmp_path: Path, tls: tuple[Path, Path, Path], basic_registry: str, bearer_registry: str
) -> None:
    """--probe reports valid and rejected credentials (Basic and Bearer registries), refused
    connections and TLS errors."""
    _sync(host_root, tmp_path, {
        basic_registry: {"auth": b64("puller:right-password")},
        f"{basic_registry}/wrong": {"auth": b64("puller:SENTINEL-wrong")},
        bearer_registry: {"auth": b64("puller:right-password")},
        "127.0.0.1:1": {"auth": b64("u:p")},
    })  # fmt: skip
    code, report = _doctor(host_root, "--no-discover", "--probe", "--ca-file", str(tls[0]))
    results = {r["registry"]: r["result"] for r in report["probe"]}
    assert {
        basic_registry: "valid",
        f"{basic_registry}/wrong": "rejected",
        bearer_registry: "valid",
        "127.0.0.1:1": "refused",
    } == results
    assert 2 == code  # a rejected credential is a failure (an unreachable registry only a warning)
    _sync(
        host_root,
        tmp_path,
        {
            basic_registry: {"auth": b64("puller:SENTINEL-wrong")},
            bearer_registry: {"auth": b64("puller:SENTINEL-wrong")},
        },
    )
    code, report = _doctor(host_root, "--no-discover", "--probe", "--ca-file", str(tls[0]))
    assert {"rejected"} == {r["result"] for r in report["probe"]}
    assert 2 == code
    _, no_ca = _doctor(host_root, "--no-discover", "--probe")
    assert {"tls-error"} == {r["result"] for r in no_ca["probe"]}
    assert "SENTINEL" not in json.dumps(report) + json.dumps(no_ca)


@pytest.mark.parametrize(
    ("breakage", "finding"),
    [
        ("no-ours", "provider.not-listed"),
        ("no-plugin", "provider.plugin-missing"),
        ("stale-token", "provider.token-stale"),
        ("garbage", "provider.config-unparseable"),
        ("old-api", "provider.api-version"),
    ],
)
def test_provider_findings(host_root: Path, breakage: str, finding: str) -> None:
    """Each broken piece of the credential-provider wiring has its finding; a complete install has none of them."""
    subprocess.run(
        [sys.executable, "-m", "nodeagent", "install-provider", "--host-root", str(host_root),
         "--provider-preset", "eks"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    python = host_root / "usr/bin/python3"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    state = host_root / "var/lib/nodeagent"
    token = base64.b64encode(b"AWS:SENTINEL-token").decode()
    (state / "ecr-tokens.json").write_text(
        json.dumps({"tokens": {"us-east-1": {"token": token, "expiresAt": time.time() + 6 * 3600}}})
    )
    _, before = _doctor(host_root, "--no-discover", "--provider-preset", "eks")
    provider_ids = {"provider.not-listed", "provider.plugin-missing", "provider.token-stale", "provider.no-python"}
    provider_ids |= {"provider.config-unparseable", "provider.api-version", "provider.token-cache-missing"}
    assert not _ids(before) & provider_ids
    config = host_root / "etc/eks/image-credential-provider/config.json"
    if breakage == "no-ours":
        config.write_text(
            json.dumps({"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig", "providers": []})
        )
    elif breakage == "no-plugin":
        (host_root / "etc/eks/image-credential-provider/nodeagent-ecr-credential-provider").unlink()
    elif breakage == "stale-token":
        stale = {"tokens": {"us-east-1": {"token": token, "expiresAt": time.time() + 60}}}
        (state / "ecr-tokens.json").write_text(json.dumps(stale))
    elif breakage == "garbage":
        config.write_text("{not json")
    else:
        doc = json.loads(config.read_text())
        doc["providers"][0]["apiVersion"] = "credentialprovider.kubelet.k8s.io/v2"
        config.write_text(json.dumps(doc))
    _, after = _doctor(host_root, "--no-discover", "--provider-preset", "eks")
    assert finding in _ids(after)
    assert "SENTINEL" not in json.dumps(after)


def _ca(directory: Path, *, expired: bool) -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry CA")])
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    )
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


CONTAINERD_V2 = """version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example.com".auth]
  username = "u"
  password = "SENTINEL-containerd"
"""


@pytest.mark.parametrize(
    ("ca", "finding"), [("valid", None), ("expired", "expired on"), ("missing", "missing"), ("garbage", "not a PEM")]
)
def test_containerd_hosts_toml_ca(host_root: Path, tmp_path: Path, ca: str, finding: str | None) -> None:
    """containerd's version, config_path and config.toml auth are reported; a hosts.toml CA that is
    missing, expired or not PEM is an error; --image names the hosts.toml containerd would use."""
    config = host_root / "etc/containerd/config.toml"
    hosts = host_root / "etc/containerd/certs.d/registry.example.com:5000"
    hosts.mkdir(parents=True)
    config.write_text(CONTAINERD_V2)
    (hosts / "hosts.toml").write_text(
        'server = "https://registry.example.com:5000"\n[host."https://registry.example.com:5000"]\n  ca = "ca.crt"\n'
    )
    if ca != "missing":
        (hosts / "ca.crt").write_bytes(b"garbage" if ca == "garbage" else _ca(tmp_path, expired=ca == "expired"))
    code, report = _doctor(host_root, "--no-discover", "--image", "registry.example.com:5000/team/app:1")
    ids = _ids(report)
    assert {"containerd.config", "containerd.registry-auth"} <= ids
    errors = [f["seen"] for f in report["findings"] if f["id"] == "containerd.ca-invalid"]
    if finding is None:
        assert [] == errors
    else:
        assert 1 == len(errors) and finding in errors[0]
        assert 2 == code
    assert "/etc/containerd/certs.d/registry.example.com:5000/hosts.toml" == report["image"]["containerdHostsToml"]
    assert "SENTINEL" not in json.dumps(report)


def test_containerd_v3_defaults_and_default_hosts(host_root: Path) -> None:
    """A version 3 config without config_path uses containerd 2.2's default roots; _default applies to other hosts."""
    config = host_root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n')
    default = host_root / "etc/docker/certs.d/_default"
    default.mkdir(parents=True)
    (default / "hosts.toml").write_text('[host."https://mirror.example.com"]\n  capabilities = ["pull"]\n')
    _, report = _doctor(host_root, "--no-discover", "--image", "nginx:1.27")
    seen = next(f["seen"] for f in report["findings"] if f["id"] == "containerd.config")
    assert "io.containerd.cri.v1.images" in seen and "/etc/containerd/certs.d:/etc/docker/certs.d" in seen
    assert "/etc/docker/certs.d/_default/hosts.toml" == report["image"]["containerdHostsToml"]


def test_containerd_unparseable(host_root: Path) -> None:
    """A config.toml containerd cannot parse is an error."""
    config = host_root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("version = [\n")
    code, report = _doctor(host_root, "--no-discover")
    assert "containerd.config-unparseable" in _ids(report)
    assert 2 == code


def test_containerd_restart_pending(host_root: Path, tmp_path: Path) -> None:
    """config.toml changed after the running containerd started: a restart is pending."""
    config = host_root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(CONTAINERD_V2)
    binary = tmp_path / "bin" / "containerd"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nsleep 300\n")
    binary.chmod(0o755)
    proc = subprocess.Popen([str(binary), "--config", "/etc/containerd/config.toml"])
    try:
        time.sleep(1.1)  # process start times have a resolution of one clock tick
        config.write_text(CONTAINERD_V2 + "\n# changed\n")
        _, pending = _doctor(host_root)
        assert "containerd.restart-pending" in _ids(pending)
        os.utime(config, (time.time() - 3600, time.time() - 3600))
        _, current = _doctor(host_root)
        assert "containerd.restart-pending" not in _ids(current)
    finally:
        proc.kill()
        proc.wait()


def test_containerd_managed_and_own_hosts_toml(host_root: Path, tmp_path: Path) -> None:
    """doctor tells the agent's hosts.toml (header line) from the node's own, and counts
    credentials in the agent's conf.d drop-in (containerd 2.x) as config.toml credentials."""
    config = host_root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n')
    own = host_root / "etc/containerd/certs.d/own.example/hosts.toml"
    own.parent.mkdir(parents=True)
    own.write_text('server = "https://own.example"\n[host."https://own.example"]\n  skip_verify = true\n')
    settings = tmp_path / "registries.toml"
    settings.write_text(
        '[registries."managed.example"]\nmirrors = [{ url = "https://mirror.example", credentials = true }]\n'
    )
    source = tmp_path / "src.json"
    source.write_text(json.dumps({"auths": {"managed.example": {"auth": b64("u:SENTINEL-doctor")}}}))
    subprocess.run(
        [sys.executable, "-m", "nodeagent", "sync", "--from-file", str(source), "--host-root", str(host_root),
         "--registry-config", str(settings), "--containerd-auth"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    _, report = _doctor(host_root, "--no-discover")
    findings = {f["id"]: f for f in report["findings"]}
    assert "managed by nodeagent: managed.example;" in findings["containerd.hosts"]["seen"]
    assert "own (never changed by nodeagent): own.example" in findings["containerd.hosts"]["seen"]
    assert "mirror.example" in findings["containerd.registry-auth"]["seen"]
    assert "SENTINEL" not in json.dumps(report)


def test_containerd_version_1_config(host_root: Path) -> None:
    """A version 1 config (no version key) is reported as unsupported, with the migration command."""
    config = host_root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[plugins.cri.registry]\n  config_path = "/etc/containerd/certs.d"\n')
    _, report = _doctor(host_root, "--no-discover")
    assert "containerd.config-unsupported" in _ids(report)
    assert "containerd.config" not in _ids(report)


def test_probe_never_follows_a_redirect_with_credentials(tls: tuple[Path, Path, Path]) -> None:
    """A registry that answers the credentialed request with a 302 to http:// (or another host)
    is reported as redirect-refused, and the other end never sees the Authorization header."""
    seen: list[str] = []

    class Plain(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    plain = ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=plain.serve_forever, daemon=True).start()

    class Redirecting(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            if self.headers.get("Authorization"):
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{plain.server_address[1]}/v2/")
            else:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="r"')
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls[1]), str(tls[2]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from nodeagent.doctor import probe

        results = probe(
            {f"127.0.0.1:{server.server_address[1]}": {"auth": b64("puller:SENTINEL-redirect")}},
            ca_file=str(tls[0]),
            timeout=5,
        )
    finally:
        server.shutdown()
        plain.shutdown()
    assert (["redirect-refused"], []) == ([r["result"] for r in results], seen)


# -- nodeagent-credential-provider, KEP-4412 and KEP-2535 ------------------------------------------
def _install_static(host_root: Path, *extra: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "nodeagent", "install-provider", "--host-root", str(host_root),
         "--provider-preset", "kubeadm", "--credential-provider", *extra],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _run_doctor(host_root: Path, image: str | None = None, **facts: Any) -> set[str]:
    from nodeagent.config import PROVIDER_PRESETS
    from nodeagent.doctor import NodeFacts, run_doctor
    from nodeagent.host.hostfs import HostFS

    bin_dir, config = PROVIDER_PRESETS["kubeadm"]
    node = NodeFacts("/var/lib/kubelet", provider_config=config, provider_bin_dir=bin_dir, **facts)
    report = run_doctor(
        hostfs=HostFS(host_root), facts=node, state_dir="/var/lib/nodeagent", agent_root_dir="/var/lib/kubelet",
        socket_path="/run/nodeagent/agent.sock", image=image,
    )  # fmt: skip
    ids = {f.id for f in report.findings}
    if image:
        ids |= {f"provider:{p}" for p in report.image["providers"]} if report.image else set()
    return ids


def test_credential_provider_findings(host_root: Path) -> None:
    """An installed nodeagent-credential-provider is recognised (no ECR findings), doctor --image
    says the kubelet asks it, and a missing credentials file is named."""
    _install_static(host_root)
    ids = _run_doctor(host_root, image="registry.example.com/app")
    assert "provider:nodeagent-credential-provider" in ids
    assert not ids & {"provider.not-listed", "provider.credentials-missing", "provider.socket-down",
                      "provider.token-cache-missing", "provider.plugin-missing"}  # fmt: skip
    (host_root / "var/lib/nodeagent/provider-credentials.json").unlink()
    assert "provider.credentials-missing" in _run_doctor(host_root)


@pytest.mark.parametrize(
    ("version", "finding"),
    [("v1.32.4", "provider.token-attributes-unsupported"), (None, "provider.token-attributes-unchecked")],
)
def test_token_attributes_on_an_old_or_unknown_kubelet(host_root: Path, version: str | None, finding: str) -> None:
    """tokenAttributes would stop a kubelet older than 1.33 at its next start: doctor says so."""
    _install_static(host_root, "--service-account-tokens")
    assert finding in _run_doctor(host_root, kubelet_version=version)
    assert not {"provider.token-attributes-unsupported", "provider.token-attributes-unchecked"} & _run_doctor(
        host_root, kubelet_version="v1.34.2"
    )


def test_a_node_wide_provider_that_needs_a_token_is_named(host_root: Path) -> None:
    """The node-wide entry asking for ServiceAccount tokens (an install by an older agent) is
    skipped by the kubelet during an API outage: doctor says so; this version's layout is clean."""
    _install_static(host_root, "--service-account-tokens")
    assert "provider.node-wide-needs-token" not in _run_doctor(host_root, kubelet_version="v1.34.2")
    config = host_root / "etc/kubernetes/credential-providers/nodeagent-ecr.yaml"
    document = yaml.safe_load(config.read_text())
    scoped, static = document["providers"]
    document["providers"] = [{**static, "tokenAttributes": scoped["tokenAttributes"]}]
    config.write_text(yaml.safe_dump(document))
    assert "provider.node-wide-needs-token" in _run_doctor(host_root, kubelet_version="v1.34.2")


def test_provider_installed_after_the_kubelet_started(host_root: Path) -> None:
    """A provider config newer than the kubelet process is not in effect: restart pending."""
    _install_static(host_root)
    config = host_root / "etc/kubernetes/credential-providers/nodeagent-ecr.yaml"
    changed = config.stat().st_mtime
    assert "provider.kubelet-restart-pending" in _run_doctor(host_root, kubelet_started=changed - 60)
    assert "provider.kubelet-restart-pending" not in _run_doctor(host_root, kubelet_started=changed + 60)


@pytest.mark.parametrize("policy", ["AlwaysVerify", "NeverVerify", None])
def test_image_pull_credentials_policy_is_reported(host_root: Path, policy: str | None) -> None:
    """doctor reports the kubelet's imagePullCredentialsVerificationPolicy (KEP-2535)."""
    from nodeagent.doctor import NodeFacts, run_doctor
    from nodeagent.host.hostfs import HostFS

    kubelet_config = host_root / "var/lib/kubelet/config.yaml"
    document = {
        "kind": "KubeletConfiguration",
        **({"imagePullCredentialsVerificationPolicy": policy} if policy else {}),
    }
    kubelet_config.write_text(json.dumps(document))
    facts = NodeFacts("/var/lib/kubelet", kubelet_config="/var/lib/kubelet/config.yaml")
    report = run_doctor(
        hostfs=HostFS(host_root), facts=facts, state_dir="/var/lib/nodeagent", agent_root_dir="/var/lib/kubelet",
        socket_path="/run/nodeagent/agent.sock",
    )  # fmt: skip
    (finding,) = [f for f in report.findings if f.id == "kubelet.image-pull-policy"]
    assert (policy or "not set") in finding.seen
    assert ("nothing to do" == finding.fix) == (policy == "AlwaysVerify")


def _plain_registry(tls: tuple[Path, Path, Path], handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls[1]), str(tls[2]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_probe_asks_every_registry_at_once(tls: tuple[Path, Path, Path]) -> None:
    """Three registries that answer only once all three have been asked: probes one after another
    would time out; at once, all three answer."""
    from nodeagent.doctor import probe

    barrier = threading.Barrier(3, timeout=20)

    class Waiting(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            barrier.wait()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    servers = [_plain_registry(tls, Waiting) for _ in range(3)]
    try:
        entries = {f"127.0.0.1:{s.server_address[1]}": {"auth": b64("u:p")} for s in servers}
        results = probe(entries, ca_file=str(tls[0]), timeout=10)
    finally:
        for server in servers:
            server.shutdown()
    assert ["anonymous-ok"] * 3 == [r["result"] for r in results]


def test_probe_names_what_failed(tls: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS, a refused port, a timeout and a 403 each get their own result and fix."""
    from nodeagent.doctor import probe
    from nodeagent.probe import FIXES

    real_getaddrinfo = socket.getaddrinfo

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:  # the machine's DNS kept out of the test
        if host == "registry.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    class Forbidding(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            self.send_response(403 if self.headers.get("Authorization") else 401)
            self.send_header("WWW-Authenticate", 'Basic realm="r"')
            self.send_header("Content-Length", "0")
            self.end_headers()

    forbidding = _plain_registry(tls, Forbidding)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never answers
    try:
        entries = {
            "registry.invalid": {"auth": b64("u:p")},
            "127.0.0.1:1": {"auth": b64("u:p")},
            f"127.0.0.1:{silent.getsockname()[1]}": {"auth": b64("u:p")},
            f"127.0.0.1:{forbidding.server_address[1]}": {"auth": b64("u:SENTINEL-probe")},
        }
        results = probe(entries, ca_file=str(tls[0]), timeout=1)
    finally:
        forbidding.shutdown()
        silent.close()
    assert ["dns-error", "refused", "timeout", "forbidden"] == [r["result"] for r in results]
    assert [FIXES[r["result"]] for r in results] == [r["fix"] for r in results]
    assert "SENTINEL" not in json.dumps(results)


def test_probe_uses_the_nodes_tls_settings(
    host_root: Path, tmp_path: Path, tls: tuple[Path, Path, Path], basic_registry: str
) -> None:
    """The CA the agent wrote into a registry's hosts.toml is trusted by the probe, as containerd
    trusts it: no --ca-file needed for a private-CA registry."""
    _sync(host_root, tmp_path, {basic_registry: {"auth": b64("puller:right-password")}})
    certs = host_root / "etc/containerd/certs.d" / basic_registry
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(tls[0].read_bytes())
    (certs / "hosts.toml").write_text(f'server = "https://{basic_registry}"\nca = "ca.crt"\n')
    config = host_root / "etc/containerd/config.toml"
    config.write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/containerd/certs.d"\n'
    )
    _, report = _doctor(host_root, "--no-discover", "--probe", "--containerd-config", "/etc/containerd/config.toml")
    assert ["valid"] == [r["result"] for r in report["probe"]]
    # The same CA in the [host] table of the registry's own origin: containerd uses it there too.
    (certs / "hosts.toml").write_text(
        f'server = "https://{basic_registry}"\n[host."https://{basic_registry}"]\n  ca = "ca.crt"\n'
    )
    _, in_host_table = _doctor(
        host_root, "--no-discover", "--probe", "--containerd-config", "/etc/containerd/config.toml"
    )
    assert ["valid"] == [r["result"] for r in in_host_table["probe"]]
    (certs / "hosts.toml").write_text(
        f'server = "https://{basic_registry}"\n[host."https://mirror.example"]\n  ca = "ca.crt"\n'
    )
    _, other_origin = _doctor(
        host_root, "--no-discover", "--probe", "--containerd-config", "/etc/containerd/config.toml"
    )
    assert ["tls-error"] == [r["result"] for r in other_origin["probe"]]  # a mirror's CA is the mirror's
    (certs / "hosts.toml").unlink()
    _, without = _doctor(host_root, "--no-discover", "--probe", "--containerd-config", "/etc/containerd/config.toml")
    assert ["tls-error"] == [r["result"] for r in without["probe"]]


# -- every check against corrupt and hostile node files ---------------------------------------------
_DOCTOR_FILES = [
    "var/lib/kubelet/config.json",
    "var/lib/nodeagent/state.json",
    "var/lib/nodeagent/ecr-tokens.json",
    "var/lib/nodeagent/provider-credentials.json",
    "etc/kubernetes/credential-providers/nodeagent-ecr.yaml",
    "etc/containerd/config.toml",
    "etc/containerd/conf.d/nodeagent.toml",
    "etc/containerd/certs.d/r.example.com/hosts.toml",
    "etc/containerd/certs.d/r.example.com/ca.crt",
    "var/lib/kubelet/kubelet-config.yaml",
]
_HOSTILE = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b"{}",
            b'{"auths": []}',
            b'{"auths": {"r.example.com": 5}}',
            b'{"auths": {"%": {}}}',
            b'{"auths": {"r.example.com": {"auth": "%%%"}}, "Auths": null}',
            b'{"a": 1, "a": 2}',
            b"\xff\xfe",
            b'{"version": 1, "files": {"/x": {"target": "kubelet", "owned": {"k": 1}}}}',
            b'{"version": 99}',
            b'{"tokens": {"us-east-1": {"token": 5, "expiresAt": "x"}}}',
            b'{"version": 1, "entries": "x"}',
            b"providers: 5",
            b"providers: [5]",
            b"providers: [{name: nodeagent-credential-provider, args: 7}]",
            b"providers: [{name: [1]}, {name: {a: 1}}]",
            b"kind: CredentialProviderConfig\nproviders:\n- {name: nodeagent-ecr-credential-provider, apiVersion: 5}",
            b'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = 5',
            b"version = 3\nimports = 5",
            b'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]',
            b'server = 5\n[host."https://x"]\nca = 7',
            b"ca = [1, 2]\nclient = [[1]]",
            b"[[[",
            b"-----BEGIN CERTIFICATE-----\nx",
            b"imagePullCredentialsVerificationPolicy: [1]",
            b"!!python/object:os.system x",
            b"a: &a [*a]",
            b"[" * 5000,
            b'{"x": ' * 200 + b"1" + b"}" * 200,
            b"9" * 5000,
            b"NaN",
            b'"\\ud800"',
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=st.lists(st.tuples(st.sampled_from(_DOCTOR_FILES), _HOSTILE), min_size=1, max_size=6))
def test_doctor_survives_any_node_file(
    tmp_path_factory: pytest.TempPathFactory, contents: list[tuple[str, bytes]]
) -> None:
    """doctor reads every node file it checks (config.json, the ledger, the token cache and the
    provider's credentials, the provider config, containerd's config, drop-in, hosts.toml and CA,
    the kubelet's config) and reports on it: no content of any of them makes doctor itself fail."""
    from nodeagent.config import PROVIDER_PRESETS
    from nodeagent.doctor import NodeFacts, run_doctor
    from nodeagent.host.hostfs import HostFS

    root = tmp_path_factory.mktemp("hostile-node")
    for name, content in contents:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    bin_dir, config = PROVIDER_PRESETS["kubeadm"]
    facts = NodeFacts(
        "/var/lib/kubelet", provider_config=config, provider_bin_dir=bin_dir, kubelet_started=0.0,
        kubelet_version="v1.32.0", kubelet_config="/var/lib/kubelet/kubelet-config.yaml",
        containerd_config="/etc/containerd/config.toml",
    )  # fmt: skip
    report = run_doctor(
        hostfs=HostFS(root), facts=facts, state_dir="/var/lib/nodeagent", agent_root_dir="/var/lib/kubelet",
        socket_path="/run/nodeagent/agent.sock", image="r.example.com/team/app:1",
    )  # fmt: skip
    assert report.status in ("healthy", "warnings", "failures")
    json.dumps(report.to_json())  # the --json output can always be written
    from nodeagent.doctor import registry_tls
    from nodeagent.probe import ProbeTarget, probe_one

    tls = registry_tls(HostFS(root), ["/etc/containerd/certs.d"], "r.example.com")  # what --probe would use
    target = ProbeTarget("r.example.com", "127.0.0.1:1", "u", "p", **tls)
    assert probe_one(target, ca_file=None, timeout=1) in ("refused", "tls-error")


def test_doctor_failing_itself_has_its_own_exit_code(host_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure of doctor itself exits 3, never 1 (warnings found) or 2 (failures found)."""
    from nodeagent import cli, doctor

    def broken(**_: Any) -> None:
        raise RuntimeError("a bug in a check")

    monkeypatch.setattr(doctor, "run_doctor", broken)
    assert 3 == cli.main(["doctor", "--no-discover", "--host-root", str(host_root), "--log-format", "json"])


def test_a_provider_directory_the_kubelet_would_refuse(host_root: Path) -> None:
    """A node file in the provider directory naming one of our providers: doctor names the
    duplicate and both files, as the kubelet's loader would refuse them at its next start."""
    directory = host_root / "etc/kubernetes/credential-providers"
    paths = ["--provider-bin-dir", "/usr/libexec/kubernetes/credential-providers"]
    paths += ["--provider-config", "/etc/kubernetes/credential-providers"]
    install = [sys.executable, "-m", "nodeagent", "install-provider", "--host-root", str(host_root), *paths]
    subprocess.run(install, check=True, capture_output=True, timeout=60)
    args = ["--no-discover", *paths]
    _, before = _doctor(host_root, *args)
    assert "provider.kubelet-refuses-config" not in _ids(before)
    ours = (directory / "nodeagent-ecr.yaml").read_text()
    (directory / "00-node.yaml").write_text(ours)
    _, after = _doctor(host_root, *args)
    (finding,) = [f for f in after["findings"] if f["id"] == "provider.kubelet-refuses-config"]
    assert "00-node.yaml" in finding["seen"] and "nodeagent-ecr.yaml" in finding["seen"]


@pytest.mark.parametrize("via", ["flag", "config"])
def test_a_startup_taint_nobody_removes_is_named(host_root: Path, via: str) -> None:
    """The kubelet registers the node with the startup taint and nodeagent manages nothing here
    (uninstalled, or never installed): only a running agent removes it, so doctor warns; with
    the agent's ledger on the node it is only noted."""
    kubelet_config = host_root / "var/lib/kubelet/config.yaml"
    taint = {"key": "nodeagent.io/agent-not-ready", "effect": "NoSchedule"}
    kubelet_config.write_text(yaml.safe_dump({"kind": "KubeletConfiguration", "registerWithTaints": [taint]}))
    facts: dict[str, Any] = (
        {"register_with_taints": "nodeagent.io/agent-not-ready=:NoSchedule"}
        if via == "flag"
        else {"kubelet_config": "/var/lib/kubelet/config.yaml"}
    )
    ids = _run_doctor(host_root, **facts)
    assert "kubelet.startup-taint-orphaned" in ids
    source = host_root / "src.json"
    source.write_text(json.dumps({"auths": {"r.example.com": {"auth": b64("u:p")}}}))
    sync = [sys.executable, "-m", "nodeagent", "sync", "--from-file", str(source), "--host-root", str(host_root)]
    subprocess.run(sync, check=True, capture_output=True, timeout=60)
    ids = _run_doctor(host_root, **facts)
    assert ("kubelet.startup-taint-orphaned" in ids, "kubelet.startup-taint" in ids) == (False, True)


def test_an_invalid_image_reference_is_named_not_looked_up(host_root: Path) -> None:
    """doctor --image with a reference the kubelet refuses says so (an error), and looks nothing up."""
    code, report = _doctor(host_root, "--no-discover", "--image", "not a valid image!!")
    (finding,) = [f for f in report["findings"] if f["id"] == "image.invalid-reference"]
    assert (2, "error") == (code, finding["severity"])
    assert "credentials" not in report["image"]
