"""The Dockerfile's structure, its pinned dependencies, and the wheel it installs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser


def _stages() -> list[list[dict[str, str]]]:
    stages: list[list[dict[str, str]]] = []
    for instruction in _parser().structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_multi_stage_with_a_clean_final_stage() -> None:
    """A build stage and a final stage that only copies the virtualenv: no build tools run there."""
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert [] == [i for i in final if i["instruction"] == "RUN"]
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert ["--from=build /opt/nodeagent /opt/nodeagent"] == copies


def test_dependencies_installed_offline_with_hashes_and_package_as_wheel() -> None:
    """The build stage installs requirements.lock with --require-hashes from the wheelhouse only
    (no index: the build needs no network), and the package from its wheel."""
    runs = " ".join(i["value"] for i in _stages()[0] if i["instruction"] == "RUN")
    assert "--require-hashes" in runs and "-r requirements.lock" in runs
    assert "--no-index --find-links /wheelhouse" in runs
    assert "/wheelhouse/nodeagent-*.whl" in runs
    copies = [i["value"] for i in _stages()[0] if i["instruction"] == "COPY"]
    assert "wheelhouse/ /wheelhouse/" in copies


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """requirements.lock pins (==, with hashes) every dependency pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project["dependencies"]}
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==\S+ \\\n\s+--hash=sha256:", lock, re.M)}
    assert declared <= pinned
    assert "file://" not in lock and "--find-links" not in lock


def test_labels_entrypoint_and_user_match_the_chart() -> None:
    """OCI labels are set; the entrypoint is the agent; the user is the one the chart's securityContext runs."""
    parser = _parser()
    assert {
        "org.opencontainers.image.title",
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
    } <= set(parser.labels)
    final = _stages()[-1]
    entrypoint = next(i["value"] for i in final if i["instruction"] == "ENTRYPOINT")
    assert '["/opt/nodeagent/bin/nodeagent"]' == entrypoint
    user = next(i["value"] for i in final if i["instruction"] == "USER")
    values = yaml.safe_load((ROOT / "daemonset/values.yaml").read_text())
    security = values["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    env = next(i["value"] for i in final if i["instruction"] == "ENV")
    assert "NODEAGENT_HOST_ROOT=/host" in env


def test_wheel_builds_from_the_tree(tmp_path: Path) -> None:
    """The wheel the image installs builds from this tree and carries the package and its entry point."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("nodeagent-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {
        "nodeagent/cli.py",
        "nodeagent/agent/agent.py",
        "nodeagent/targets/containerd/auth.py",
        "nodeagent/host/hostfs.py",
    } <= names
    assert "nodeagent = nodeagent.cli:main" in entry_points
    assert not any(n.startswith("tests/") for n in names)


def test_plugin_at_a_fixed_path() -> None:
    """The ECR plugin is installed at /opt/nodeagent/libexec/nodeagent-ecr-credential-provider, 0755."""
    runs = " ".join(i["value"] for i in _stages()[0] if i["instruction"] == "RUN")
    assert "install -D -m 0755 plugin.py /opt/nodeagent/libexec/nodeagent-ecr-credential-provider" in runs
    copies = [i["value"] for i in _stages()[0] if i["instruction"] == "COPY"]
    assert "nodeagent/ecr/plugin.py ./plugin.py" in copies
