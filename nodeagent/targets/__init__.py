"""Targets are pure renderers: desired credentials and current bytes in, new bytes out."""

from nodeagent.targets.kubelet import KubeletRender, render_kubelet_config

__all__ = ["KubeletRender", "render_kubelet_config"]
