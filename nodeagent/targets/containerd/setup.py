"""containerd's configuration as the agent finds it: which version and CRI plugin, where
``hosts.toml`` files are read from, whether a conf.d drop-in is imported, and the checks every
file the agent writes for containerd must pass (containerd 1.x parses TOML with Go's go-toml v1).
Also the planning context the hosts.toml and config.toml planners share."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodeagent.errors import TargetError
from nodeagent.model.credentials import EntryProblem
from nodeagent.model.decoding import DecodeError, loads_toml, parse_toml_document
from nodeagent.model.ledger import ConfigTomlRecord, FileRecord, HostsTomlRecord
from nodeagent.targets import FileChange, HostView, Plan

__all__ = [
    "CONFIG_TARGET",
    "DEFAULT_ROOTS_V3",
    "DOCKER_HUB_SERVER",
    "DROPIN_NAME",
    "HOSTS_TARGET",
    "MANAGED_HEADER",
    "PLUGINS",
    "ContainerdSetup",
    "PlanContext",
    "detect_setup",
    "dropin_path",
    "go_toml_v1_problems",
    "is_managed",
]

PLUGINS = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.images"}
"""The CRI plugin that holds registry settings, by config version."""
DEFAULT_ROOTS_V3 = ("/etc/containerd/certs.d", "/etc/docker/certs.d")
"""containerd >= 2.2's default ``config_path`` (a version 3 config without one)."""
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
MANAGED_HEADER = "# nodeagent: managed file; the agent rewrites and removes it. Delete this line to keep it as yours."
HOSTS_TARGET = HostsTomlRecord.KIND
CONFIG_TARGET = ConfigTomlRecord.KIND
DROPIN_NAME = "nodeagent.toml"
_CAPABILITIES = ["pull", "resolve"]


@dataclass(frozen=True)
class ContainerdSetup:
    """What the node's containerd config says about registry settings."""

    config: str
    exists: bool
    version: int
    roots: tuple[str, ...]
    """``config_path`` roots, in containerd's lookup order; empty when hosts.toml is not read."""
    dropin_dir: str | None = None
    """A conf.d directory the config imports (used for credentials on version 3 only)."""

    @property
    def plugin(self) -> str:
        return PLUGINS[self.version]


def _table(document: Any, *keys: str) -> Any:
    node = document
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def detect_setup(config: str, content: bytes | None) -> ContainerdSetup:
    """Read the config's version, ``config_path`` roots and conf.d import (TargetError if unusable)."""
    if content is None:
        return ContainerdSetup(config, exists=False, version=2, roots=())
    try:
        document = loads_toml(content)  # read-only: the fast, strict stdlib parser
    except DecodeError as exc:
        raise TargetError(config, f"cannot be read ({exc}); leaving containerd alone") from None
    version = document.get("version", 1)
    if version not in PLUGINS:
        raise TargetError(
            config,
            f"containerd config version {version} is not supported (2 or 3); "
            "migrate it with 'containerd config migrate'",
        )
    registry = _table(document, "plugins", PLUGINS[version], "registry")
    config_path = registry.get("config_path", "")
    roots = tuple(r for r in str(config_path).split(":") if r) if isinstance(config_path, str) else ()
    for root in roots:
        if not root.startswith("/") or ".." in root.split("/") or "\x00" in root:
            raise TargetError(
                config,
                f"registry config_path root {root!r} is not an absolute path without '..'; leaving containerd alone",
            )
    if not roots and version == 3 and "config_path" not in registry:
        roots = DEFAULT_ROOTS_V3
    dropin = None
    imports = document.get("imports", [])
    for pattern in imports if isinstance(imports, list) else []:
        if isinstance(pattern, str) and pattern.endswith("/*.toml") and pattern.startswith("/"):
            dropin = pattern[: -len("/*.toml")]
            break
    return ContainerdSetup(config, exists=True, version=version, roots=roots, dropin_dir=dropin)


def go_toml_v1_problems(text: str) -> list[str]:
    """What containerd 1.6's TOML parser (go-toml v1) would refuse in a document tomllib accepts.

    Its table-header lexer ends a header at the first ``]`` and refuses a ``[`` inside one, quoted
    or not ("table key cannot contain ']'"); quoted keys in key/value lines and inline tables are
    read correctly (checked with containerd's own hosts loader and ``containerd config dump``,
    tests/test_containerd_parsers.py). A model for run time, compared with the real parser in tests.
    """
    from tomlkit.items import AoT, Table

    problems: list[str] = []

    def walk(container: Any, path: list[str]) -> None:
        for key, item in container.body:
            if key is None:
                continue
            full = [*path, key.key]
            tables = list(item.body) if isinstance(item, AoT) else [item] if isinstance(item, Table) else []
            for table in tables:
                headed = isinstance(item, AoT) or not table.is_super_table()
                if headed and any("[" in part or "]" in part for part in full):
                    problems.append(f"table [{'.'.join(full)}] has '[' or ']' in its name")
                walk(table.value, full)

    walk(parse_toml_document(text), [])
    return problems


@functools.lru_cache(maxsize=4096)
def _containerd_problems(content: bytes) -> tuple[str, ...]:
    """go_toml_v1_problems of rendered bytes, cached: a pass checks every hosts.toml again, and the
    rendered bytes repeat from pass to pass."""
    try:
        return tuple(go_toml_v1_problems(content.decode("utf-8")))
    except DecodeError as exc:
        return (f"rendered TOML does not parse ({exc})",)


def _check_for_containerd(content: bytes, path: str, what: str) -> None:
    """Refuse to write TOML that containerd's own parser would reject (TargetError names it)."""
    problems = _containerd_problems(content)
    if problems:
        raise TargetError(path, f"{what}: containerd 1.6 could not read it ({problems[0]}); not written")


def is_managed(content: bytes | None) -> bool:
    """Whether a file carries the agent's header line (the agent may change or remove it)."""
    return content is not None and content.split(b"\n", 1)[0] == MANAGED_HEADER.encode()


def dropin_path(setup: ContainerdSetup) -> str | None:
    """Where the agent's drop-in goes: version 3 configs that import a conf.d directory only."""
    if setup.version == 3 and setup.dropin_dir:
        return f"{setup.dropin_dir.rstrip('/')}/{DROPIN_NAME}"
    return None


def _digest(content: bytes | None) -> str:
    return hashlib.sha256(content).hexdigest() if content is not None else ""


def _ours(record: FileRecord, current: bytes | None) -> bool:
    """Whether the file is as the agent last wrote it (the ledger written before a pass's writes
    holds the digests from before and after it, so a pass cut short still counts)."""
    return _digest(current) in record.digest.split()


def _problem(key: str, reason: str, path: str) -> EntryProblem:
    return EntryProblem(key=key, registry=None, reason=reason, source=path)


class PlanContext:
    """One containerd plan in the making: the host (each file read once; nothing is written while
    planning), the ledger records of containerd's files, and the plan."""

    def __init__(self, host: HostView, records: Mapping[str, FileRecord], backup_path: str) -> None:
        self.host, self.records, self.backup_path = host, records, backup_path
        self.plan = Plan()
        self._reads: dict[str, bytes | None] = {}

    def read(self, path: str) -> bytes | None:
        """Each file is read once per plan (nothing is written while planning)."""
        if path not in self._reads:
            self._reads[path] = self.host.read(path)
        return self._reads[path]

    def is_dir(self, path: str) -> bool:
        return self.host.is_dir(path)

    def mode_of(self, path: str) -> int | None:
        return self.host.mode(path)

    def change(self, path: str, old: bytes | None, new: bytes | None, mode: int) -> None:
        self.plan.changes.append(FileChange(path, old, new, mode))
