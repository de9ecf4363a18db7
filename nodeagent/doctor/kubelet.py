"""doctor's kubelet checks: config.json read with the kubelet target's own readers."""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from nodeagent.errors import HostFSError, InputError
from nodeagent.host.hostfs import TEMP_MARKER
from nodeagent.model.credentials import safe_key
from nodeagent.model.decoding import DecodeError, loads_json
from nodeagent.model.keyring import image_reference_problem, lookup
from nodeagent.model.ledger import Ledger
from nodeagent.model.registries import InvalidRegistry, normalise_key
from nodeagent.targets.kubelet import kubelet_entries, kubelet_problems

from .base import Checks
from .report import DOCKER_HUB_KEYS, KUBELET_CACHE_SECONDS, Finding, Report


class KubeletChecks(Checks):
    """The kubelet's config.json search path, each file as the kubelet reads it, the agent's
    ledger against it, and pods that would never pull again."""

    def search_order(self) -> list[str]:
        facts = self.facts
        paths = [f"{facts.kubelet_root_dir.rstrip('/')}/config.json"]
        if facts.kubelet_cwd:
            paths.append(f"{facts.kubelet_cwd.rstrip('/')}/config.json")
        if facts.kubelet_home:
            paths.append(f"{facts.kubelet_home.rstrip('/')}/.docker/config.json")
        paths.append("/.docker/config.json")
        return paths

    def check_kubelet(self) -> None:
        facts = self.facts
        if facts.source == "settings":
            self.add(
                "discovery.kubelet-not-found",
                "info",
                f"no kubelet process visible; using --kubelet-root-dir {facts.kubelet_root_dir}",
                "the kubelet's real --root-dir, working directory and HOME decide where it looks",
                "run doctor on the node itself, or in a pod with hostPID, for a full answer",
            )
        elif facts.kubelet_root_dir != self.agent_root_dir:
            self.add(
                "kubelet.root-dir-mismatch",
                "error",
                f"the kubelet runs with --root-dir {facts.kubelet_root_dir}; "
                f"nodeagent writes {self.agent_root_dir}/config.json",
                "the kubelet never reads a config.json outside its own search path",
                f"set --kubelet-root-dir {facts.kubelet_root_dir} (chart: kubeletRootDir or the right distribution)",
            )
        ours = f"{self.agent_root_dir.rstrip('/')}/config.json"
        for path in self.search_order():
            content = self._read(path)
            if content is None:
                continue
            try:
                document = loads_json(content, surrogates="replace")  # as the kubelet (Go) reads it
            except DecodeError:
                document = None
            problems = kubelet_problems(document)
            if problems:
                self.add(
                    "kubelet.config.unparseable",
                    "error",
                    f"{path}: {'; '.join(problems)[:500]}",
                    "the kubelet ignores the whole file and moves on to the next place it looks",
                    "fix or remove the entry named; nodeagent never writes such a file itself",
                )
                continue
            self.used = (path, document)
            break
        if self.used is None:
            self.add(
                "kubelet.config.missing",
                "error",
                f"no readable config.json in the kubelet's search path ({', '.join(self.search_order())})",
                "the kubelet has no node credentials: private pulls fail unless pods carry imagePullSecrets",
                "check the agent is running on this node (kubectl -n <ns> get pods -o wide) and its logs",
            )
            return
        path, document = self.used
        if path != ours:
            self.add(
                "kubelet.config.not-ours",
                "warning",
                f"the kubelet reads {path}, not {ours}",
                "the first config.json that exists and parses wins; files are never merged",
                f"make {ours} the one the kubelet finds first (it is first when --root-dir is right)",
            )
        self._check_file_details(path, document)

    def _check_file_details(self, path: str, document: dict[str, Any]) -> None:
        try:
            st = os.stat(self.fs.real_path(path))
        except OSError:
            st = None
        if st is not None:
            if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != 0:
                self.add(
                    "kubelet.config.permissions",
                    "warning",
                    f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}",
                    "it holds registry passwords: anyone who can read it can pull what the node can",
                    f"chmod 600 {path}; chown root:root {path}",
                )
            age = time.time() - st.st_mtime
            if age < KUBELET_CACHE_SECONDS:
                self.add(
                    "kubelet.config.recently-changed",
                    "info",
                    f"{path} changed {age:.0f} s ago",
                    "the kubelet caches config.json for 5 minutes and does not watch it",
                    f"a pull may use the old credentials for up to {KUBELET_CACHE_SECONDS - age:.0f} s more; "
                    "no restart is needed",
                )
        for name in ("credsStore", "credHelpers"):
            if name in document:
                self.add(
                    f"kubelet.config.{name.lower()}",
                    "info",
                    f"{path} has '{name}'",
                    "the kubelet ignores credential helpers; only auths entries count",
                    "nothing to do unless you expected the helper to supply node credentials",
                )
        for key, entry in kubelet_entries(document).items():
            if not isinstance(entry, dict):
                continue
            fields = {k.lower() for k, v in entry.items() if v}
            if fields and fields <= {"identitytoken", "registrytoken", "email"}:
                self.add(
                    "kubelet.config.token-only-entry",
                    "warning",
                    f"entry {safe_key(key)} has only identitytoken/registrytoken",
                    "the kubelet ignores those fields: this entry gives no credentials",
                    "give the entry auth or username/password",
                )
            try:
                registry = normalise_key(key)
            except InvalidRegistry:
                continue
            if registry in DOCKER_HUB_KEYS:
                self.add(
                    "kubelet.config.docker-hub",
                    "warning",
                    f"a Docker Hub credential is on the node ({safe_key(key)})",
                    "if it is wrong, the kubelet does not retry anonymously: public Docker Hub pulls break too",
                    "keep it valid (or remove it); doctor --probe checks it",
                )

    def check_state(self) -> bool:
        """The ledger; whether the agent manages anything on this node."""
        ledger_path = f"{self.state_dir.rstrip('/')}/state.json"
        try:
            ledger = Ledger.load(self.fs.read(ledger_path), source=ledger_path)
        except (InputError, HostFSError) as exc:
            self.add(
                "state.ledger-unreadable",
                "error",
                str(exc),
                "nodeagent cannot tell what it owns",
                "see the agent's logs",
            )
            return True
        if not ledger.files:
            self.add(
                "state.nothing-managed",
                "warning",
                "nodeagent manages no files on this node",
                "the agent has not synced here (not scheduled, not ready, or no source)",
                "kubectl -n <ns> get pods -o wide; check the pod on this node",
            )
        else:
            self.add(
                "state.revision",
                "info",
                f"credentials revision {ledger.revision} applied",
                fix="compare with other nodes' nodeagent.io/credentials-revision",
            )
        for path, record in ledger.files.items():
            if record.target != "kubelet":
                continue
            content = self._read(path)
            try:
                document = loads_json(content, surrogates="replace") if content else {}
            except DecodeError:
                document = {}  # reported by check_kubelet as unparseable
            present = set(kubelet_entries(document))
            missing = sorted(set(record.owned) - present)
            if missing:
                self.add(
                    "state.ledger-mismatch",
                    "warning",
                    f"{path} lacks {len(missing)} entries nodeagent wrote "
                    f"({', '.join(safe_key(k, 60) for k in missing[:5])})",
                    "something else changed the file; the agent repairs drift within a second when it runs",
                    "check the agent is running; look for another tool writing the file",
                )
        for directory in {self.agent_root_dir, self.state_dir}:
            leftovers = self.fs.leftover_temp_files(directory)
            if leftovers:
                self.add(
                    "state.temp-files",
                    "warning",
                    f"{len(leftovers)} temp files in {directory} ({', '.join(leftovers[:3])})",
                    "an agent was killed mid-write; they are harmless and swept on the next write",
                    "let the agent run once, or remove files named *" + TEMP_MARKER + "*",
                )
        return bool(ledger.files)


def check_image(
    report: Report, used: tuple[str, dict[str, Any]] | None, image: str, provider_patterns: list[tuple[str, str]]
) -> None:
    """Which credentials the kubelet would try for ``image``, in order, and which providers it calls;
    an image the kubelet would refuse as a reference is named, not looked up."""
    problem = image_reference_problem(image)
    if problem is not None:
        report.image = {"image": image, "error": problem}
        report.findings.append(
            Finding(
                "image.invalid-reference",
                "error",
                f"{image[:200]!r} is not an image reference: {problem}",
                "the kubelet refuses to pull it (InvalidImageName), whatever the credentials",
                "fix the image in the pod spec (name[:tag][@sha256:digest], lowercase repository)",
            )
        )
        return
    keys = list(kubelet_entries(used[1])) if used else []
    matches, providers = lookup(image, keys, provider_patterns)
    report.image = {
        "image": image,
        "configJson": used[0] if used else None,
        "credentials": [{"key": m.key, "normalised": m.normalised, "reason": m.reason} for m in matches],
        "providers": providers,
    }
    if not matches and not providers:
        report.findings.append(
            Finding(
                "image.no-credentials",
                "warning",
                f"no node credential matches {image}",
                "the kubelet pulls anonymously (or with the pod's imagePullSecrets)",
                "add the registry to the central Secret (exact host, port and path prefix matter)",
            )
        )
