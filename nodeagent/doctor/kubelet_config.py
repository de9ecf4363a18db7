"""doctor's checks of the kubelet's own configuration file (``--config``, KubeletConfiguration)
and flags: what it does with images pulled with node credentials, and the startup taint it
registers the node with."""

from __future__ import annotations

from typing import Any

from nodeagent.model.decoding import DecodeError, loads_yaml
from nodeagent.sources import STARTUP_TAINT

from .base import Checks


class KubeletConfigChecks(Checks):
    def check_startup_taint(self, managed: bool) -> None:
        """The kubelet registers this node with the startup taint (a flag, or registerWithTaints
        in its config file): only a running agent removes it. On a node the agent does not manage
        (never ran, or uninstalled) every new registration stays tainted."""
        flag = self.facts.register_with_taints or ""
        document: Any = None
        content = self._read(self.facts.kubelet_config) if self.facts.kubelet_config else None
        if content is not None:
            try:
                document = loads_yaml(content)
            except DecodeError:
                document = None
        taints = document.get("registerWithTaints") if isinstance(document, dict) else None
        in_config = isinstance(taints, list) and any(
            isinstance(t, dict) and t.get("key") == STARTUP_TAINT for t in taints
        )
        if not (in_config or STARTUP_TAINT in flag):
            return
        where = (
            "--register-with-taints" if STARTUP_TAINT in flag else f"registerWithTaints in {self.facts.kubelet_config}"
        )
        if managed:
            self.add(
                "kubelet.startup-taint",
                "info",
                f"the kubelet registers this node with {STARTUP_TAINT} ({where})",
                "the agent removes it after its first sync",
                "nothing to do",
            )
            return
        self.add(
            "kubelet.startup-taint-orphaned",
            "warning",
            f"the kubelet registers this node with {STARTUP_TAINT} ({where}), and nodeagent manages nothing here",
            "only a running nodeagent removes that taint: after helm uninstall (or before the first install), "
            "this node, and every node booted from the same configuration, stays unschedulable for pods "
            "without a toleration",
            f"install nodeagent, or remove {STARTUP_TAINT} from the kubelet's {where.split(' in ')[0]} "
            f"(and kubectl taint node <node> {STARTUP_TAINT}-)",
        )

    def check_image_pull_policy(self) -> None:
        """KEP-2535: who may use an image pulled with node credentials (kubelet >= 1.33)."""
        path = self.facts.kubelet_config
        content = self._read(path) if path else None
        if path is None or content is None:
            return
        try:
            document = loads_yaml(content)
        except DecodeError:
            return  # the kubelet's own file: not ours to judge beyond this one field
        policy = document.get("imagePullCredentialsVerificationPolicy") if isinstance(document, dict) else None
        shown = policy if isinstance(policy, str) else "not set (the kubelet's default, NeverVerifyPreloadedImages)"
        self.add(
            "kubelet.image-pull-policy",
            "info",
            f"{path}: imagePullCredentialsVerificationPolicy {shown}",
            "AlwaysVerify: a pod may use a cached image only with credentials that pulled it; otherwise an image "
            "pulled with node credentials (config.json, a plugin without ServiceAccount tokens) serves every pod",
            "for private images, use AlwaysVerify with namespace-scoped credentials (docs/security.md)"
            if policy != "AlwaysVerify"
            else "nothing to do",
        )
