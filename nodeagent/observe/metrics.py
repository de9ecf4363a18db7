"""Prometheus metrics (prometheus-client), in a registry of the agent's own.

Labels carry only source names (``secret:ns/name``, ``file:/path``) and fixed words, never a
registry credential or any value from a Secret's data.
"""

from __future__ import annotations

import platform
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from nodeagent import __version__

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.build = Info("nodeagent_build", "The agent's version, its Python and platform", registry=r)
        runtime = {"python": platform.python_version(), "platform": f"{sys.platform}/{platform.machine()}"}
        self.build.info({"version": __version__, **runtime})
        self.syncs = Counter("nodeagent_syncs_total", "Reconcile passes by result", ["result"], registry=r)
        self.passes = Counter(
            "nodeagent_passes_total",
            "Reconcile passes by cause (change, drift, retry, resync): an idle agent adds only resyncs",
            ["cause"],
            registry=r,
        )
        self.last_success = Gauge(
            "nodeagent_last_success_timestamp_seconds", "Unix time of the last successful pass", registry=r
        )
        self.managed = Gauge("nodeagent_managed_registries", "Registries the agent manages on this node", registry=r)
        self.watch_starts = Counter(
            "nodeagent_source_watch_starts_total", "Source watches (re)started", ["source"], registry=r
        )
        self.source_valid = Gauge(
            "nodeagent_source_valid", "1 when the source's current content is usable", ["source"], registry=r
        )
        self.rejected = Counter(
            "nodeagent_rejected_entries_total", "Registry entries rejected from a source", ["source"], registry=r
        )
        self.drift_repairs = Counter(
            "nodeagent_drift_repairs_total", "Target files rewritten after an external change", registry=r
        )
        self.writes = Counter("nodeagent_writes_total", "Host files written or removed", registry=r)
        self.propagation = Histogram(
            "nodeagent_propagation_seconds",
            "From a source change reaching the agent to the files being durable on the node",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.containerd_restart_pending = Gauge(
            "nodeagent_containerd_restart_pending",
            "1 while config.toml credentials changed and containerd has not been restarted by the agent",
            registry=r,
        )
        self.containerd_restarts = Counter(
            "nodeagent_containerd_restarts_total",
            "containerd restarts the agent made, by result",
            ["result"],
            registry=r,
        )

        self.ecr_fetched = Counter("nodeagent_ecr_tokens_fetched_total", "ECR tokens fetched", ["key"], registry=r)
        self.ecr_failures = Counter(
            "nodeagent_ecr_token_failures_total", "Failed ECR token fetches", ["key"], registry=r
        )
        self.ecr_expiry = Gauge(
            "nodeagent_ecr_token_expiry_seconds", "Seconds to expiry of the ECR token when fetched", ["key"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
