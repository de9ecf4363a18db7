"""The pure core never does host I/O or talks to Kubernetes (style.md: layers with one direction).

The layers between nodeagent's own modules, which modules may import kubernetes, botocore and
httpx, and that the pure modules import no I/O module of the standard library, are import-linter
contracts (.importlinter, checked by make lint and below); this file keeps what a contract cannot
express: one writer, a standard-library-only plugin (whatever its imports are named), the agent's
import weight and the length of a class."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nodeagent"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_hostfs_writes() -> None:
    """No module but hostfs calls os.rename/os.unlink/os.write on host paths."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "hostfs.py":
            continue
        text = path.read_text()
        offenders += [
            f"{path.name}:{call}" for call in ("os.rename", "os.unlink", "os.write(", "os.replace") if call in text
        ]
    assert [] == offenders


def test_plugin_imports_only_the_standard_library() -> None:
    """The ECR plugin runs on the host with the host's python3: standard library only, nothing of ours."""
    import sys

    imported = _imports(PACKAGE / "ecr" / "plugin.py")
    assert set() == {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}


def test_agent_import_stays_light() -> None:
    """The agent's import loads neither cryptography (~12 MB) nor tomlkit: only containerd registry
    settings with certificates, and containerd rendering, need them (the idle RSS budget is 80 MB)."""
    import subprocess
    import sys

    code = "import sys, nodeagent.cli, nodeagent.agent; print(sorted({'cryptography', 'tomlkit'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "[]" == result.stdout.strip()


def test_import_contracts_hold() -> None:
    """The declared import contracts (.importlinter) hold, all six: the data path's layers, the
    edge modules of the transport libraries, the pure core, independent targets, a plugin that
    imports nothing of ours, and no I/O module of the standard library in the pure modules."""
    import subprocess
    import sys

    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300, check=False
    )
    assert 0 == result.returncode, result.stdout[-3000:]
    assert "Contracts: 6 kept, 0 broken." in result.stdout


def test_no_class_is_longer_than_250_lines() -> None:
    """A class a newcomer can read in one sitting: none is longer than 250 lines (issue 16)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (node.end_lineno or 0) - node.lineno + 1 > 250:
                long.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert [] == long
