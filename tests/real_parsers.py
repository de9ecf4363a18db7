"""The real consumers' parsers, for judging the files nodeagent writes (style.md: judge output with
the consumer's own parser).

* containerd's hosts.toml loader: ``tests/harness/containerd`` (Go, containerd v1.6.20's
  ``remotes/docker/config``, the version Debian 12 ships), built from the Go module proxy into
  ``.cache/harness/`` on first use and rebuilt when its sources change;
* containerd's config loader: Debian's ``containerd`` binary, ``containerd --config FILE config dump``;
* the kubelet's credential code: ``tests/harness/kubelet`` (Go, k8s.io/kubernetes v1.34.4's
  ``pkg/credentialprovider`` keyring and ``plugin`` manager), built the same way into
  ``.cache/k8s/bin/`` (``make k8s``); one long-lived ``kubelet-credentials serve`` process answers
  the many config.json questions a test run asks;
* a real API server: kube-apiserver and etcd of the same release, started by
  ``scripts/kube-apiserver.sh``.

A missing prerequisite (Go, containerd) fails under ``CI`` and skips elsewhere.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN_DIRS = {"kubelet": REPO / ".cache/k8s/bin", "containerd": REPO / ".cache/harness/bin"}
"""Where ``make k8s`` / ``make harness`` (scripts/build-harness.sh) put each module's commands."""


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is needed for the real-parser tests (make test installs it)")
    pytest.skip(f"{what} is not installed")


_built: set[str] = set()


def harness_binary(module_name: str, name: str) -> Path:
    """One of the Go harness commands, built by scripts/build-harness.sh (the one build that
    ``make k8s`` runs too; a no-op when the module's sources are unchanged): each consumer is a Go
    module of its own under tests/harness/, pinned to the release it stands for."""
    out = BIN_DIRS[module_name]
    if module_name not in _built:
        result = subprocess.run(
            [str(REPO / "scripts/build-harness.sh"), module_name, str(out)],
            capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        if result.returncode == 2 and "Go is needed" in result.stderr:
            _missing("Go")
        if result.returncode != 0:
            pytest.fail(f"building the {module_name} harness failed:\n{result.stderr[-3000:]}")
        _built.add(module_name)
    return out / name


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


class KubeletRejects(Exception):
    """The kubelet ignores this whole config.json and moves on to the next search path."""


@dataclass(frozen=True)
class Cred:
    """One entry the kubelet loads from a config.json: its key as written, and what it decoded."""

    key: str
    username: str
    password: str


class _KubeletServer:
    """``kubelet-credentials serve``: one process for the whole test run, one JSON line a question."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [str(harness_binary("kubelet", "kubelet-credentials")), "serve"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                )  # fmt: skip
                atexit.register(self._proc.kill)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            pytest.fail("kubelet-credentials serve ended without an answer")
        return dict(json.loads(line))


_server = _KubeletServer()


def _text(raw: str | None) -> str:
    # The exact bytes the kubelet holds, read as text the way nodeagent reads a decoded auth.
    return base64.b64decode(raw or "").decode("utf-8", "replace")


def _pair(credential: dict[str, Any]) -> tuple[str, str]:
    return _text(credential["usernameBytes"]), _text(credential["passwordBytes"])


def kubelet_read_config(content: bytes) -> list[Cred]:
    """Every entry the kubelet 1.34 loads from a config.json with these bytes (its own
    ``ReadSpecificDockerConfigJSONFile``), sorted by key; ``KubeletRejects`` when it ignores the file."""
    answer = _server.ask({"op": "read", "content": base64.b64encode(content).decode()})
    if not answer["ok"]:
        raise KubeletRejects(answer["error"])
    return [Cred(e["key"], *_pair(e)) for e in answer["entries"]]


def kubelet_keyring_lookup(content: bytes, image: str) -> list[tuple[str, str]]:
    """The (username, password) pairs the kubelet 1.34's keyring returns for ``image``, in its
    order, when its config.json holds these bytes; ``KubeletRejects`` when it ignores the file."""
    request = {"op": "lookup", "content": base64.b64encode(content).decode(), "image": image}
    answer = _server.ask(request)
    if not answer["ok"]:
        raise KubeletRejects(answer["error"])
    return [_pair(c) for c in answer["credentials"]]


def kubelet_lookup(root_dir: Path, image: str) -> list[tuple[str, str]]:
    """The (username, password) pairs the kubelet 1.34's own keyring returns for ``image`` from the
    config.json it would read with ``--root-dir root_dir`` (its search order), in its order."""
    result = _kubelet("lookup", "--root-dir", str(root_dir), image)
    assert 0 == result.returncode, result.stderr[-500:]
    return [_pair(c) for c in json.loads(result.stdout)["credentials"]]


def kubelet_check_provider_config(path: Path, bin_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Whether the kubelet 1.34 would load a CredentialProviderConfig (exit 0), else its error:
    ``path`` a file or a directory it merges; with ``bin_dir``, the plugins must exist there."""
    extra = ["--bin-dir", str(bin_dir)] if bin_dir is not None else []
    return _kubelet("check-provider-config", *extra, str(path))


def kubelet_provide(
    config: Path, bin_dir: Path, image: str, *, service_account: str = "", token: str = ""
) -> list[tuple[str, str]]:
    """The credentials the kubelet 1.34's plugin manager gets for ``image`` by running the
    configured plugins as the kubelet does (with ``token`` for ``service_account`` NS/NAME when
    the provider asks for ServiceAccount tokens)."""
    extra = ["--service-account", service_account, "--token", token] if service_account else []
    result = _kubelet("provide", "--config", str(config), "--bin-dir", str(bin_dir), *extra, image)
    assert 0 == result.returncode, result.stderr[-500:]
    return [_pair(c) for c in json.loads(result.stdout)["credentials"]]


class KubeletPlugins:
    """One kubelet plugin manager (one cache) kept running: ``lookup(image)`` is what the kubelet
    gets for a pull now, so a test can change the node between two pulls."""

    def __init__(self, config: Path, bin_dir: Path, *, service_account: str = "", token: str = "") -> None:
        extra = ["--service-account", service_account, "--token", token] if service_account else []
        command = [str(harness_binary("kubelet", "kubelet-credentials")), "provide", "--config", str(config),
                   "--bin-dir", str(bin_dir), *extra, "-"]  # fmt: skip
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def lookup(self, image: str) -> list[tuple[str, str]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(image + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        assert line, "the kubelet's plugin manager ended (its error is on stderr)"
        return [_pair(c) for c in json.loads(line)["credentials"]]

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


class RealAPIServer:
    """kube-apiserver and etcd of k8s 1.34.4 on 127.0.0.1, started and stopped by
    scripts/kube-apiserver.sh (RBAC, the Node authorizer, ServiceAccount tokens, a static admin
    token); ``request`` speaks to it."""

    def __init__(self, directory: Path, *flags: str) -> None:
        self.dir, self.flags = directory, flags
        self.url = self.etcd_url = self.admin_token = ""

    def start(self) -> RealAPIServer:
        harness_binary("kubelet", "kube-apiserver")  # built by make k8s; fails clearly without Go
        script = str(REPO / "scripts/kube-apiserver.sh")
        result = subprocess.run(
            [script, "up", str(self.dir), *self.flags], capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"kube-apiserver did not start:\n{result.stderr[-3000:]}")
        env = dict(line.split("=", 1) for line in (self.dir / "server.env").read_text().splitlines())
        self.url, self.etcd_url = env["APISERVER_URL"], env["ETCD_URL"]
        self.admin_token = (self.dir / "admin.token").read_text().strip()
        return self

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dir / "certs/apiserver.crt"))

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
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": content_type}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=self._context(), timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def etcd(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call to etcd's JSON gateway (``/v3/kv/range``, ``/v3/kv/compaction``, ...)."""
        request = urllib.request.Request(  # noqa: S310 - the test's own etcd on 127.0.0.1
            f"{self.etcd_url}/v3/{method}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return dict(json.loads(response.read()))

    def compact_etcd(self) -> int:
        """Compact etcd up to its current revision (as the API server does every 5 minutes);
        returns that revision: a watch from an older resourceVersion then gets 410 Gone."""
        revision = int(self.etcd("kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        self.etcd("kv/compaction", {"revision": revision, "physical": True})
        return revision

    def kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for ``token``, trusting the server's own CA."""
        ca = base64.b64encode((self.dir / "certs/apiserver.crt").read_bytes()).decode()
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "t", "user": {"token": token}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        }))  # fmt: skip
        return path

    def restart(self) -> None:
        """Stop kube-apiserver alone and start it again on the same port and keys (etcd stays)."""
        script = str(REPO / "scripts/kube-apiserver.sh")
        result = subprocess.run([script, "restart", str(self.dir)], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.fail(f"kube-apiserver did not restart:\n{result.stderr[-3000:]}")

    def requests_by(self, user: str, since: float, until: float) -> list[tuple[float, str, str]]:
        """(time, verb, resource) of every request ``user`` made in [since, until) (Unix time), as
        the server's audit log records them: one entry a request, watches included."""
        import datetime

        seen: dict[str, tuple[float, str, str]] = {}
        for line in (self.dir / "audit.log").read_text().splitlines():
            entry = json.loads(line)
            if entry.get("user", {}).get("username") != user:
                continue
            when = datetime.datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00"))
            at = when.timestamp()
            if since <= at < until:
                seen[entry["auditID"]] = (at, entry["verb"], (entry.get("objectRef") or {}).get("resource", ""))
        return sorted(seen.values())

    def stop(self) -> None:
        subprocess.run([str(REPO / "scripts/kube-apiserver.sh"), "down", str(self.dir)], timeout=120, check=False)
