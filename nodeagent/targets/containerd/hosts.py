"""containerd's ``hosts.toml`` files: CA, client TLS, mirrors and an optional static Basic
header, one directory per registry under the config's ``config_path``. containerd re-reads them on
every pull: no restart. A ``hosts.toml`` without the agent's header is never changed or removed."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from nodeagent.errors import TargetError
from nodeagent.model.credentials import RegistryCredential
from nodeagent.model.ledger import FileRecord, HostsTomlRecord
from nodeagent.model.registries import decode_auth
from nodeagent.model.registry_settings import DOCKER_HUB, RegistrySettings

from .setup import (
    _CAPABILITIES,
    DOCKER_HUB_SERVER,
    HOSTS_TARGET,
    MANAGED_HEADER,
    ContainerdSetup,
    PlanContext,
    _check_for_containerd,
    _problem,
    is_managed,
)

if TYPE_CHECKING:
    from tomlkit.items import Table

__all__ = ["HostsPlanning", "render_hosts_files"]


def _basic(credential: RegistryCredential) -> str | None:
    if credential.auth:
        try:
            username, password = decode_auth(credential.auth)
        except ValueError:
            return None
    elif credential.username or credential.password:
        username, password = credential.username, credential.password
    else:
        return None
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def _host_of(url: str) -> str:
    return urlsplit(url).netloc


def _tls(target: Table | Any, settings: RegistrySettings, directory: str, header: str | None) -> None:
    import tomlkit  # imported where used: an agent not managing containerd never loads it (RSS)

    if settings.ca:
        target["ca"] = f"{directory}/ca.crt"
    if settings.client_cert:
        target["client"] = [[f"{directory}/client.cert", f"{directory}/client.key"]]
    if settings.skip_verify:
        target["skip_verify"] = True
    if header is not None:
        headers = tomlkit.table()
        headers["Authorization"] = f"Basic {header}"
        target["header"] = headers


@functools.lru_cache(maxsize=4096)
def _hosts_toml(settings: RegistrySettings, directory: str, header: str | None) -> bytes:
    """The hosts.toml bytes (cached: a pass re-renders every registry, and tomlkit is slow)."""
    import tomlkit

    server = DOCKER_HUB_SERVER if settings.host == DOCKER_HUB else f"https://{settings.host}"
    document = tomlkit.document()
    document.add(tomlkit.comment(MANAGED_HEADER[2:]))
    document["server"] = server
    document["capabilities"] = [*_CAPABILITIES, "push"]
    _tls(document, settings, directory, header)
    hosts = tomlkit.table(is_super_table=bool(settings.mirrors))
    for url in settings.mirrors:
        entry = tomlkit.table()
        entry["capabilities"] = list(_CAPABILITIES)
        if settings.override_path:
            entry["override_path"] = True
        # The credential goes to the registry itself, and to a mirror only when its settings say so.
        _tls(entry, settings, directory, header if url in settings.credential_mirrors else None)
        hosts[url] = entry
    document["host"] = hosts
    return tomlkit.dumps(document).encode()


def render_hosts_files(
    settings: RegistrySettings, *, root: str, credential: RegistryCredential | None
) -> tuple[dict[str, tuple[bytes, int]], list[str]]:
    """``hosts.toml`` and the certificate files next to it, as ``{host path: (bytes, mode)}``.

    Each mirror is a ``[host."URL"]`` entry, tried in order; containerd always tries the top-level
    ``server`` last, so the registry itself is the top level (``server``, its capabilities and TLS
    settings), never also a ``[host]`` entry (it would be tried twice). Every mirror carries the TLS
    settings too (mirrors of a private registry usually share its CA). containerd 1.6 refuses a
    hosts.toml without a ``host`` table ("invalid `host` tree"), so without mirrors an empty
    ``[host]`` table is written (all checked with containerd's own loader,
    tests/test_containerd_parsers.py). In ``header`` mode the registry's Basic credential is a
    static header at the top level and on the mirrors marked ``credentials = true`` (the file is
    then 0600).
    Returns the files and warnings (e.g. header mode without a usable credential).
    """
    directory = f"{root.rstrip('/')}/{settings.host}"
    warnings: list[str] = []
    header = None
    if settings.containerd_auth == "header":
        header = _basic(credential) if credential is not None else None
        if header is None:
            warnings.append("containerd_auth = 'header' but no username/password credential for it: no header written")
    # hosts.toml last: the files beside it exist only while it does (a pass killed between two
    # writes or removals leaves no CA or client file without the agent's hosts.toml, which is what
    # lets a later pass remove them: see ``hosts`` below).
    files: dict[str, tuple[bytes, int]] = {}
    if settings.ca:
        files[f"{directory}/ca.crt"] = (settings.ca, 0o644)
    if settings.client_cert and settings.client_key:
        files[f"{directory}/client.cert"] = (settings.client_cert, 0o644)
        files[f"{directory}/client.key"] = (settings.client_key, 0o600)
    files[f"{directory}/hosts.toml"] = (_hosts_toml(settings, directory, header), 0o600 if header else 0o644)
    return files, warnings


class HostsPlanning(PlanContext):
    def hosts(
        self,
        setup: ContainerdSetup | None,
        registries: Mapping[str, RegistrySettings],
        credentials: Mapping[str, RegistryCredential],
        *,
        held: frozenset[str],
        hold_all: bool,
    ) -> None:
        desired: dict[str, tuple[bytes, int, FileRecord]] = {}
        taken_over: set[str] = set()
        needs = [s for s in registries.values() if s.needs_hosts_toml]
        if setup is not None and needs and not setup.roots:
            for settings in needs:
                self.plan.conflicts.append(
                    _problem(
                        settings.host,
                        f"containerd reads no hosts.toml: {setup.config} sets no registry config_path "
                        f'(set [plugins."{setup.plugin}".registry] config_path = "/etc/containerd/certs.d")',
                        setup.config,
                    )
                )
        elif setup is not None and needs:
            root = setup.roots[0]
            root_created = not self.is_dir(root) or any(
                r.owned.get("root") == "created" for r in self.records.values() if r.target == HOSTS_TARGET
            )
            for settings in needs:
                directory = f"{root.rstrip('/')}/{settings.host}"
                hosts_path = f"{directory}/hosts.toml"
                current = self.read(hosts_path)
                if current is not None and not is_managed(current):
                    taken_over.add(directory)
                    self.plan.conflicts.append(
                        _problem(settings.host, "hosts.toml has no nodeagent header: left as is", hosts_path)
                    )
                    continue
                files, notes = render_hosts_files(settings, root=root, credential=credentials.get(settings.host))
                try:
                    _check_for_containerd(files[hosts_path][0], hosts_path, f"hosts.toml for {settings.host}")
                except TargetError as exc:
                    self.plan.conflicts.append(_problem(settings.host, exc.reason, hosts_path))
                    continue
                holding = hold_all or settings.host in held
                if settings.containerd_auth == "header" and settings.host not in credentials and holding:
                    # The credential is held (its source unknown or its new entry rejected): keep the
                    # header the file has rather than write one without it.
                    if current is not None:
                        files[hosts_path] = (current, 0o600)
                    notes = []
                foreign = [
                    p for p, (content, _) in files.items()
                    if p not in self.records and self.read(p) not in (None, content) and p != hosts_path
                ]  # fmt: skip
                if foreign:
                    self.plan.conflicts.append(
                        _problem(settings.host, "a file the agent would write exists and is not its own", foreign[0])
                    )
                    continue
                self.plan.warnings.extend(_problem(settings.host, n, hosts_path) for n in notes)
                old = self.records.get(hosts_path)
                created_dir = old.owned.get("dir") == "created" if old is not None else not self.is_dir(directory)
                for path, (content, mode) in files.items():
                    owned = {"registry": settings.host}
                    if path == hosts_path and created_dir:
                        owned["dir"] = "created"
                    if path == hosts_path and root_created:
                        owned["root"] = "created"
                    desired[path] = (content, mode, HostsTomlRecord(owned=owned))
        # Each directory's hosts.toml is removed after the files beside it (the order above).
        for path, record in sorted(self.records.items(), key=lambda item: item[0].endswith("/hosts.toml")):
            if record.target != HOSTS_TARGET or path in desired:
                continue
            directory = path.rsplit("/", 1)[0]
            hosts_toml = self.read(f"{directory}/hosts.toml")
            beside = not path.endswith("/hosts.toml")
            if directory in taken_over or (hosts_toml is not None and not is_managed(hosts_toml)):
                self.plan.forget.append(path)  # someone took the directory over: leave all of it
                continue
            if beside and hosts_toml is None:
                # A CA or client file outlives the agent's hosts.toml only if a record says so
                # falsely (the agent removes them first): not the agent's to remove.
                self.plan.forget.append(path)
                continue
            self.change(path, self.read(path), None, 0o600)
            self.plan.forget.append(path)
            if record.owned.get("dir") == "created":
                self.plan.prune_dirs.append(directory)
            if record.owned.get("root") == "created":
                self.plan.prune_dirs.append(directory.rsplit("/", 1)[0])  # removed only once empty
        for path, (content, mode, record) in desired.items():
            self.change(path, self.read(path), content, mode)
            self.plan.records[path] = record
