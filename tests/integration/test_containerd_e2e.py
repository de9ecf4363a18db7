"""End-to-end with real components: Debian's containerd pulling over CRI (as the kubelet does)
from Debian's distribution registry (TLS from a test CA, htpasswd auth), with nodeagent writing
containerd's hosts.toml and config.toml.

The agent runs as a process (``python -m nodeagent sync``) with ``--host-root /`` and every host
path pointing into the test's directory, so containerd and the agent see the same files.
Under ``CI`` a missing containerd or docker-registry fails these tests (make test installs them).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.peers import CONTAINERD_CONFIG, Containerd, PullFailed, Registry, free_port, node_address
from tests.tls import make_ca_and_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="containerd needs root")


@dataclass
class Node:
    """A test node: the directory every host path points into, its containerd and the registry."""

    root: Path
    registry: Registry
    containerd: Containerd
    image: str

    @property
    def config(self) -> Path:
        return self.root / "etc/containerd/config.toml"

    @property
    def certs(self) -> Path:
        return self.root / "etc/containerd/certs.d"

    def write_secret(self, password: str) -> Path:
        path = self.root / "secret.json"
        auth = base64.b64encode(f"{self.registry.username}:{password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.registry.host: {"auth": auth}}}))
        return path

    def write_settings(self, **settings: Any) -> Path:
        import tomlkit

        path = self.root / "registries.toml"
        path.write_text(tomlkit.dumps({"registries": {self.registry.host: settings}}))
        return path

    def agent(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        base = [
            sys.executable, "-m", "nodeagent", command, "--host-root", "/", "--log-format", "json",
            "--kubelet-root-dir", str(self.root / "kubelet"), "--state-dir", str(self.root / "state"),
        ]  # fmt: skip
        if command == "sync":
            base += ["--containerd-config", str(self.config)]
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60, check=False)

    def sync(self, *args: str) -> list[dict[str, Any]]:
        result = self.agent("sync", "--from-file", str(self.root / "secret.json"), *args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert self.registry.password not in result.stdout + result.stderr
        return [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]

    def kubelet_credential(self) -> tuple[str, str]:
        """What the kubelet would send over CRI: the config.json entry the agent wrote."""
        document = json.loads((self.root / "kubelet/config.json").read_text())
        user, _, password = base64.b64decode(document["auths"][self.registry.host]["auth"]).decode().partition(":")
        return user, password


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    # A short directory: containerd's socket path must fit in sun_path (108 bytes).
    short = Path(tempfile.mkdtemp(prefix="na-", dir="/tmp"))
    pki = tmp_path / "pki"
    pki.mkdir()
    address = node_address()
    ca, cert, key = make_ca_and_server(pki, ips=(address,))
    registry = Registry(tmp_path / "registry", ca, cert, key, free_port(address), address=address)
    registry.directory.mkdir()
    registry.start()
    registry.push_image("team/hello", "1", b"hello from the test registry\n")
    root = tmp_path / "node"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        CONTAINERD_CONFIG.format(root=short, certs=root / "etc/containerd/certs.d")
    )
    containerd = Containerd(root / "etc/containerd/config.toml", short)
    containerd.start()
    node = Node(root, registry, containerd, f"{registry.host}/team/hello:1")
    try:
        yield node
    finally:
        containerd.stop()
        registry.stop()
        subprocess.run(["umount", "-R", str(short)], capture_output=True, check=False)
        shutil.rmtree(short, ignore_errors=True)


def test_ca_in_hosts_toml_makes_tls_pull_work_without_restart(node: Node) -> None:
    """Before: x509 failure. After the agent writes hosts.toml with the CA: the kubelet-style pull
    (credentials from the config.json the agent wrote) works, same containerd process."""
    node.write_secret(node.registry.password)
    pid = node.containerd.pid
    with pytest.raises(PullFailed, match=r"x509|certificate"):
        node.containerd.pull(node.image, auth=(node.registry.username, node.registry.password))
    node.sync("--registry-config", str(node.write_settings(ca=str(node.registry.ca))))
    hosts = node.certs / node.registry.host / "hosts.toml"
    assert hosts.exists() and (node.certs / node.registry.host / "ca.crt").read_bytes() == node.registry.ca.read_bytes()
    assert node.containerd.pull(node.image, auth=node.kubelet_credential()).startswith("sha256:")
    assert pid == node.containerd.pid
    with pytest.raises(PullFailed, match=r"401|nauthorized"):
        node.containerd.pull(node.image)  # hosts.toml carries no credentials by itself


def test_header_mode_authenticates_without_restart(node: Node) -> None:
    """containerd_auth = "header": a pull with no CRI credentials works at once, same process."""
    node.write_secret(node.registry.password)
    pid = node.containerd.pid
    node.sync("--registry-config", str(node.write_settings(ca=str(node.registry.ca), containerd_auth="header")))
    assert 0o600 == (node.certs / node.registry.host / "hosts.toml").stat().st_mode & 0o777
    assert node.containerd.pull(node.image).startswith("sha256:")
    assert pid == node.containerd.pid


def test_rotated_password_works_after_sync(node: Node) -> None:
    """Registry password and Secret rotated together: the old header fails, the agent's sync fixes it."""
    node.write_secret(node.registry.password)
    settings = node.write_settings(ca=str(node.registry.ca), containerd_auth="header")
    node.sync("--registry-config", str(settings))
    assert node.containerd.pull(node.image).startswith("sha256:")
    node.registry.set_password("rotated-password")
    with pytest.raises(PullFailed, match=r"401|nauthorized"):
        node.containerd.pull(node.image)
    node.write_secret("rotated-password")
    node.sync("--registry-config", str(settings))
    assert node.containerd.pull(node.image).startswith("sha256:")


def test_config_toml_auth_after_restart(node: Node) -> None:
    """--containerd-auth: credentials in config.toml are not used until containerd restarts;
    doctor reports "restart pending"; after a restart a pull without CRI credentials works."""
    node.write_secret(node.registry.password)
    node.sync("--registry-config", str(node.write_settings(ca=str(node.registry.ca))), "--containerd-auth")
    with pytest.raises(PullFailed, match=r"401|nauthorized"):
        node.containerd.pull(node.image)
    doctor = node.agent("doctor", "--json")
    findings = {f["id"] for f in json.loads(doctor.stdout)["findings"]}
    assert "containerd.restart-pending" in findings
    assert node.registry.password not in doctor.stdout
    assert "containerd: restart pending" in node.agent("show").stdout
    node.containerd.restart()
    assert node.containerd.pull(node.image).startswith("sha256:")
    show = node.agent("show").stdout
    assert "containerd: in effect" in show
    assert node.registry.password not in show


def test_signal_policy_restarts_containerd(node: Node) -> None:
    """--containerd-restart signal: the agent sends SIGTERM to this containerd (by its --config)
    once the credentials changed; the supervisor (here, the test) starts it again; pulls work.
    A second sync with nothing changed signals nothing."""
    node.write_secret(node.registry.password)
    settings = node.write_settings(ca=str(node.registry.ca))
    proc = node.containerd.proc
    assert proc is not None
    node.sync("--registry-config", str(settings), "--containerd-auth", "--containerd-restart", "signal")
    assert 0 == proc.wait(timeout=30)  # a clean shutdown on SIGTERM
    node.containerd.start()
    assert node.containerd.pull(node.image).startswith("sha256:")
    again = node.containerd.proc
    logs = node.sync("--registry-config", str(settings), "--containerd-auth", "--containerd-restart", "signal")
    time.sleep(0.5)
    assert again is not None and again.poll() is None
    assert not any(line["event"].startswith("containerd_restart") for line in logs)


def test_unmanaged_hosts_toml_is_left_byte_identical(node: Node) -> None:
    """The node's own hosts.toml (no header) is never changed, by sync or cleanup; pulls keep using it."""
    own = node.certs / node.registry.host / "hosts.toml"
    own.parent.mkdir(parents=True)
    url = f"https://{node.registry.host}"
    own_bytes = (
        f'# the node\'s own\nserver = "{url}"\n'
        f'[host."{url}"]\n  capabilities = ["pull", "resolve"]\n  ca = "{node.registry.ca}"\n'
    ).encode()
    own.write_bytes(own_bytes)
    node.write_secret(node.registry.password)
    logs = node.sync("--registry-config", str(node.write_settings(skip_verify=True, containerd_auth="header")))
    assert any(line["event"] == "registry_conflict" for line in logs)
    assert own_bytes == own.read_bytes()
    assert node.containerd.pull(node.image, auth=node.kubelet_credential()).startswith("sha256:")
    assert 0 == node.agent("cleanup").returncode
    assert own_bytes == own.read_bytes()


def test_cleanup_leaves_containerd_config_as_it_was(node: Node) -> None:
    """After hosts.toml + config.toml auth, cleanup restores config.toml byte for byte, removes the
    agent's directories, and containerd starts with the restored config."""
    original = node.config.read_bytes()
    node.write_secret(node.registry.password)
    node.sync("--registry-config", str(node.write_settings(ca=str(node.registry.ca))), "--containerd-auth")
    assert original != node.config.read_bytes()
    result = node.agent("cleanup")
    assert 0 == result.returncode, result.stderr
    assert original == node.config.read_bytes()
    assert not node.certs.exists()  # the agent created certs.d: cleanup removes it
    node.containerd.restart()
    with pytest.raises(PullFailed, match=r"x509|certificate"):
        node.containerd.pull(node.image, auth=(node.registry.username, node.registry.password))


def test_mirror_serves_with_the_registrys_credential(node: Node, tmp_path: Path) -> None:
    """A mirror in the settings is tried first; with --containerd-auth it gets the registry's
    credential (config.toml keyed by the mirror's host) only when marked credentials = true: the
    image exists only on the mirror, so the pull fails until then."""
    mirror = Registry(
        tmp_path / "mirror", node.registry.ca, node.registry.cert, node.registry.key,
        free_port(node.registry.address), address=node.registry.address,
    )  # fmt: skip
    mirror.directory.mkdir()
    mirror.start()
    try:
        mirror.push_image("team/only-on-mirror", "1", b"served by the mirror\n")
        image = f"{node.registry.host}/team/only-on-mirror:1"
        with pytest.raises(PullFailed):
            node.containerd.pull(image, auth=(node.registry.username, node.registry.password))
        node.write_secret(node.registry.password)
        settings = node.write_settings(ca=str(node.registry.ca), mirrors=[f"https://{mirror.host}"])
        node.sync("--registry-config", str(settings), "--containerd-auth")
        node.containerd.restart()
        with pytest.raises(PullFailed):  # the mirror gets no password it was not named for
            node.containerd.pull(image)
        settings = node.write_settings(
            ca=str(node.registry.ca), mirrors=[{"url": f"https://{mirror.host}", "credentials": True}]
        )
        node.sync("--registry-config", str(settings), "--containerd-auth")
        node.containerd.restart()
        assert node.containerd.pull(image).startswith("sha256:")
    finally:
        mirror.stop()
