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
