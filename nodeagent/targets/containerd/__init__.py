"""The containerd target: ``hosts.toml`` (CA, client TLS, mirrors, optional Basic header) and
node credentials in ``config.toml`` (or a conf.d drop-in). Pure renderers, like every target.

Facts this follows (design.md, "Facts about containerd"):

* ``<config_path>/<host[:port]>/hosts.toml`` is re-read on every pull: no restart. It has no
  credential fields; a static ``Authorization: Basic`` header works only for registries that
  accept Basic without a Bearer challenge.
* Credentials live in ``[plugins."<CRI plugin>".registry.configs."HOST".auth]``: plugin
  ``io.containerd.grpc.v1.cri`` in a ``version = 2`` config, ``io.containerd.cri.v1.images`` in
  ``version = 3`` (containerd 2.x). HOST is the host containerd connects to (Docker Hub:
  ``registry-1.docker.io``). A change needs a containerd restart.
* containerd 2.x merges ``imports`` drop-ins deeply, so on a version 3 config with a conf.d import
  the agent writes its own drop-in; 1.x replaces whole plugin sections from a drop-in, so a
  version 2 config is edited in place (with tomlkit: comments, order and every other setting kept).

Files the agent owns start with :data:`MANAGED_HEADER`; a ``hosts.toml`` without it is never
changed or removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from nodeagent.errors import TargetError
from nodeagent.model.credentials import RegistryCredential
from nodeagent.model.ledger import FileRecord
from nodeagent.model.registries import InvalidRegistry, validate_registry_host
from nodeagent.model.registry_settings import RegistrySettings, containerd_namespace
from nodeagent.targets import Desired, HostView, Plan

from .auth import AuthPlanning, auth_hosts, render_config_auth, render_dropin
from .hosts import HostsPlanning, render_hosts_files
from .setup import (
    CONFIG_TARGET,
    DEFAULT_ROOTS_V3,
    DROPIN_NAME,
    HOSTS_TARGET,
    MANAGED_HEADER,
    PLUGINS,
    ContainerdSetup,
    _problem,
    detect_setup,
    dropin_path,
    go_toml_v1_problems,
    is_managed,
)

if TYPE_CHECKING:
    from nodeagent.config import ContainerdSettings

__all__ = [
    "CONFIG_TARGET",
    "DEFAULT_ROOTS_V3",
    "DROPIN_NAME",
    "HOSTS_TARGET",
    "MANAGED_HEADER",
    "PLUGINS",
    "ContainerdSetup",
    "ContainerdTarget",
    "auth_hosts",
    "detect_setup",
    "dropin_path",
    "go_toml_v1_problems",
    "is_managed",
    "plan_containerd",
    "render_config_auth",
    "render_dropin",
    "render_hosts_files",
]


class _Planner(HostsPlanning, AuthPlanning):
    """Both planners over one context: hosts.toml first, then config.toml credentials."""


def plan_containerd(
    *,
    host: HostView,
    settings: ContainerdSettings | None,
    credentials: Sequence[RegistryCredential],
    registries: Mapping[str, RegistrySettings],
    records: Mapping[str, FileRecord],
    backup_path: str,
    held: frozenset[str] = frozenset(),
    hold_all: bool = False,
) -> Plan:
    """Plan containerd's files from the credentials and registry settings.

    ``settings`` None releases everything the ledger says the agent owns in containerd's files
    (``cleanup``). Reads go through ``host``, a read-only view, so this stays free of I/O.
    """
    planner = _Planner(host, records, backup_path)
    setup = None
    if settings is not None:
        try:
            setup = detect_setup(settings.config, planner.read(settings.config))
        except TargetError as exc:
            planner.plan.conflicts.append(_problem("*", exc.reason, settings.config))
            return planner.plan  # leave containerd's files as they are until its config parses
    by_namespace: dict[str, RegistryCredential] = {}
    for credential in credentials:
        try:
            validate_registry_host(credential.registry)
        except InvalidRegistry:
            continue
        by_namespace[containerd_namespace(credential.registry)] = credential
    held_namespaces = frozenset(containerd_namespace(r) for r in held)
    planner.hosts(
        setup, registries if settings is not None else {}, by_namespace, held=held_namespaces, hold_all=hold_all
    )
    desired: dict[str, tuple[dict[str, str], str]] = {}
    if settings is not None and settings.auth:
        desired, skipped = auth_hosts(credentials, registries)
        planner.plan.warnings.extend(skipped)
    planner.auth(setup, desired, held=held, hold_all=hold_all)
    return planner.plan


HOSTS_FILE_NAMES = ("hosts.toml", "ca.crt", "client.cert", "client.key")
"""The files the agent writes in a registry's hosts.toml directory."""


class ContainerdTarget:
    """containerd's files, isolated: a failure leaves containerd as it is (reported as a conflict)
    and the kubelet's files still apply."""

    name = "containerd"
    isolated = True
    kinds = frozenset({HOSTS_TARGET, CONFIG_TARGET})

    def __init__(self, settings: ContainerdSettings | None, *, backup_path: str) -> None:
        self.settings, self.backup_path = settings, backup_path

    def trusts(self, path: str, record: FileRecord) -> bool:
        if record.target == HOSTS_TARGET:
            return path.rsplit("/", 1)[-1] in HOSTS_FILE_NAMES
        return path.endswith(".toml")

    def plan(self, host: HostView, desired: Desired, records: Mapping[str, FileRecord]) -> Plan:
        if desired.uninstall:
            settings = None
        elif self.settings is None:
            return Plan()  # containerd is not managed: its files (and the ledger's records of them) stay
        else:
            settings = self.settings
        plan = plan_containerd(
            host=host,
            settings=settings,
            credentials=desired.merged.credentials,
            registries=desired.registries,
            records=records,
            backup_path=self.backup_path,
            held=desired.held,
            hold_all=desired.hold_all,
        )
        plan.read_at_start = [p for p, r in plan.records.items() if r.target == CONFIG_TARGET]
        return plan
