"""The ``nodeagent`` command line: ``run``, ``sync``, ``cleanup``, ``show``, ``version``.

Exit codes (also in README.md):

* 0 - success: the node matches the sources;
* 1 - failure: nothing was written (bad input as a whole, a file the kubelet would reject, a host
  filesystem error, the lock held by another agent), or the files were written but the
  ``--containerd-restart`` policy failed;
* 2 - usage error (bad flags or settings);
* 3 - applied, but some entries were rejected (named in the log); the rest is on the node.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from nodeagent import __version__
from nodeagent.agent import Agent, RunSettings, SourceSpec
from nodeagent.config import (
    CONTAINERD_PRESETS,
    DEFAULT_KUBELET_ROOT_DIR,
    DEFAULT_STATE_DIR,
    PROVIDER_PRESETS,
    RESTART_POLICIES,
    ContainerdSettings,
    ProviderSettings,
    SyncSettings,
    default_host_root,
)
from nodeagent.containerd_restart import Restarter, RestartError, find_containerd, restart_pending
from nodeagent.credentials import EntryProblem, safe_key
from nodeagent.ecr.plugin import parse_ecr_host
from nodeagent.ecr.tokens import valid_key
from nodeagent.errors import NodeagentError, SettingsError
from nodeagent.hostfs import HostFS
from nodeagent.kube import KubeAPI, KubeError, KubernetesClient
from nodeagent.ledger import HostsTomlRecord, Ledger
from nodeagent.observe.health import HealthServer
from nodeagent.observe.logging import configure_logging, get_logger
from nodeagent.reconcile import SyncReport, cleanup, diff_changes, load_file_sources, redact_document, sync
from nodeagent.registry_settings import load_registry_settings
from nodeagent.targets.containerd import CONFIG_TARGET as CONTAINERD_CONFIG_TARGET

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_DOCTOR_FAILED = 3
"""doctor could not finish (its own failure), distinct from 1 (warnings) and 2 (failures found)."""

_SECRET_REF = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NODEAGENT_{name}", default)


def _add_host_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host-root",
        default=None,
        help="prefix of every host path (env NODEAGENT_HOST_ROOT; default /host in the container, else /)",
    )
    parser.add_argument(
        "--kubelet-root-dir",
        default=_env("KUBELET_ROOT_DIR", DEFAULT_KUBELET_ROOT_DIR),
        help="the kubelet's --root-dir on the host (default %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        default=_env("STATE_DIR", DEFAULT_STATE_DIR),
        help="ledger and lock directory on the host (default %(default)s)",
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default=_env("LOG_FORMAT", "auto"))
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=_env("LOG_LEVEL", "info"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description="Node-level registry credential agent.")
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_sync = sub.add_parser("sync", help="one reconcile pass from credential files")
    p_sync.add_argument("--once", action="store_true", help="one pass and exit (sync always does exactly one)")
    env_files = [f for f in _env("FROM_FILE", "").split(",") if f]
    p_sync.add_argument(
        "--from-file",
        action="append",
        default=None,
        metavar="PATH",
        help="a .dockerconfigjson or .dockercfg file (repeatable; later files win per registry; "
        "env NODEAGENT_FROM_FILE, comma-separated)",
    )
    p_sync.add_argument("--dry-run", action="store_true", help="print a redacted diff, write nothing")
    p_sync.set_defaults(env_files=env_files)
    _add_provider_flags(p_sync)
    _add_containerd_flags(p_sync)
    _add_host_flags(p_sync)

    p_clean = sub.add_parser("cleanup", help="remove everything the agent wrote, restore what it replaced")
    p_clean.add_argument(
        "--wait",
        action="store_true",
        help="after cleaning up, serve /healthz and /readyz on --listen until SIGTERM (the chart's uninstall step)",
    )
    p_clean.add_argument("--listen", default=_env("LISTEN", "0.0.0.0:9808"), help="HOST:PORT for --wait")
    _add_host_flags(p_clean)

    p_wait = sub.add_parser(
        "wait-cleanup",
        help="wait until every pod of the uninstall DaemonSet has cleaned its node, then delete it (the chart's "
        "post-delete hook)",
    )
    p_wait.add_argument("--daemonset", required=True, metavar="NAME", help="the cleanup DaemonSet")
    p_wait.add_argument("--namespace", default=_env("NAMESPACE", "") or os.environ.get("POD_NAMESPACE") or "default")
    p_wait.add_argument("--timeout", type=float, default=240.0, help="seconds (default %(default)s)")
    p_wait.add_argument("--kubeconfig", default=_env("KUBECONFIG", "") or None, help="default: in-cluster config")
    p_wait.add_argument("--log-format", choices=("auto", "json", "console"), default=_env("LOG_FORMAT", "auto"))
    p_wait.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=_env("LOG_LEVEL", "info"))

    p_show = sub.add_parser("show", help="print the files the agent manages, secrets masked")
    _add_host_flags(p_show)

    p_run = sub.add_parser("run", help="the long-running agent: watch sources, keep the node in sync")
    p_run.set_defaults(sources=None)
    p_run.add_argument(
        "--secret",
        action=_AppendSource,
        dest="sources",
        metavar="NAMESPACE/NAME",
        help="a dockerconfigjson/dockercfg Secret to watch (repeatable; env NODEAGENT_SECRETS, comma-separated)",
    )
    p_run.add_argument(
        "--from-file",
        action=_AppendSource,
        dest="sources",
        metavar="PATH",
        help="a mounted Secret file to watch (repeatable; env NODEAGENT_FROM_FILE); sources merge in the "
        "order given, later wins per registry",
    )
    p_run.add_argument("--kubeconfig", default=_env("KUBECONFIG", "") or None, help="default: in-cluster config")
    p_run.add_argument("--node-name", default=os.environ.get("NODE_NAME") or _env("NODE_NAME", "") or None)
    p_run.add_argument(
        "--listen", default=_env("LISTEN", "0.0.0.0:9808"), help="HOST:PORT of /healthz, /readyz, /metrics"
    )
    p_run.add_argument("--on-secret-deleted", choices=("keep", "remove"), default=_env("ON_SECRET_DELETED", "keep"))
    p_run.add_argument("--resync-interval", type=_seconds("RESYNC_INTERVAL"), default=_env("RESYNC_INTERVAL", "600"))
    p_run.add_argument("--no-events", action="store_true", default=_env_flag("EVENTS"), help="do not create Events")
    p_run.add_argument(
        "--no-annotations", action="store_true", default=_env_flag("ANNOTATIONS"), help="do not annotate the Node"
    )
    p_run.add_argument("--event-namespace", default=_env("EVENT_NAMESPACE", "default"))
    p_run.add_argument(
        "--remove-startup-taint",
        action="store_true",
        default=_env_true("REMOVE_STARTUP_TAINT"),
        help="remove the nodeagent.io/agent-not-ready taint from this Node once every source is read and applied",
    )
    _add_provider_flags(p_run)
    _add_containerd_flags(p_run)
    p_run.add_argument("--ecr", action="store_true", default=_env_true("ECR"), help="serve ECR tokens")
    p_run.add_argument("--ecr-regions", default=_env("ECR_REGIONS", ""), help="regions to keep warm (comma-separated)")
    p_run.add_argument(
        "--ecr-registries",
        default=_env("ECR_REGISTRIES", ""),
        help="ECR hosts whose tokens also go into config.json (for kubelets without plugin flags)",
    )
    p_run.add_argument(
        "--ecr-credentials-secret",
        default=_env("ECR_CREDENTIALS_SECRET", "") or None,
        metavar="NAMESPACE/NAME",
        help="a Secret with aws_access_key_id/aws_secret_access_key (default: botocore's credential chain)",
    )
    p_run.add_argument(
        "--forbidden-retry",
        type=_seconds("FORBIDDEN_RETRY"),
        default=_env("FORBIDDEN_RETRY", "60"),
        help="seconds between retries after 401/403 (default %(default)s)",
    )
    _add_host_flags(p_run)

    p_install = sub.add_parser(
        "install-provider",
        help="install the credential-provider plugins and config, once (run --ecr / --credential-provider "
        "do it too); ECR unless --credential-provider is given without --ecr",
    )
    p_install.add_argument("--ecr", action="store_true", default=_env_true("ECR"), help="install the ECR provider")
    _add_provider_flags(p_install)
    _add_host_flags(p_install)

    p_doctor = sub.add_parser(
        "doctor",
        help="why can't this node pull my image? (exit 0 healthy, 1 warnings, 2 failures, 3 doctor itself failed)",
    )
    p_doctor.add_argument("--json", action="store_true", help="machine-readable report (docs/troubleshooting.md)")
    p_doctor.add_argument("--image", help="which credentials the kubelet would try for this image, in order")
    p_doctor.add_argument("--probe", action="store_true", help="contact each registry's /v2/ with its credential")
    p_doctor.add_argument("--ca-file", help="extra CA bundle for --probe (the node's hosts.toml CAs are used too)")
    p_doctor.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="--probe: seconds per connect/read phase; all registries are probed at once (default %(default)s)",
    )
    p_doctor.add_argument(
        "--no-discover", action="store_true", help="do not look for the kubelet process; use the flags and presets"
    )
    p_doctor.add_argument(
        "--containerd-config",
        default=_env("CONTAINERD_CONFIG", "") or None,
        metavar="PATH",
        help="containerd's config.toml (default: the running containerd's --config, else /etc/containerd/config.toml)",
    )
    _add_provider_flags(p_doctor)
    _add_host_flags(p_doctor)

    sub.add_parser("version", help="print the version")
    return parser


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nodeagent.doctor import NodeFacts, discover, render_text, run_doctor

    settings = _settings(args)
    provider = _provider_settings(args, required=False)
    bin_dir = provider.bin_dir if provider else None
    config = provider.config_path if provider else None
    if args.no_discover:
        facts = NodeFacts(settings.kubelet_root_dir, provider_config=config, provider_bin_dir=bin_dir)
    else:
        facts = discover(kubelet_root_dir=settings.kubelet_root_dir, provider_config=config, provider_bin_dir=bin_dir)
    if args.containerd_config:
        facts.containerd_config = args.containerd_config
    if args.timeout <= 0:
        raise SettingsError("--timeout must be positive")
    if args.probe:
        print(f"probing every registry at once ({args.timeout:g} s per phase) ...", file=sys.stderr)
    report = run_doctor(
        hostfs=HostFS(settings.host_root),
        facts=facts,
        state_dir=settings.state_dir,
        agent_root_dir=settings.kubelet_root_dir,
        socket_path=args.socket,
        image=args.image,
        do_probe=args.probe,
        ca_file=args.ca_file,
        probe_timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(render_text(report, colour=sys.stdout.isatty()))
    return report.exit_code


def _add_containerd_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("containerd (docs/containerd.md)")
    group.add_argument(
        "--containerd-preset",
        choices=sorted(CONTAINERD_PRESETS),
        default=_env("CONTAINERD_PRESET", "") or None,
        help="where the node's containerd config is (k3s/rke2: under /var/lib/rancher)",
    )
    group.add_argument(
        "--containerd-config",
        default=_env("CONTAINERD_CONFIG", "") or None,
        metavar="PATH",
        help="containerd's config.toml on the host (default with the kubeadm preset: /etc/containerd/config.toml)",
    )
    group.add_argument(
        "--registry-config",
        default=_env("REGISTRY_CONFIG", "") or None,
        metavar="PATH",
        help="TOML with per-registry CA, client TLS, skip_verify, mirrors and containerd_auth (writes hosts.toml)",
    )
    group.add_argument(
        "--containerd-auth",
        action="store_true",
        default=_env_true("CONTAINERD_AUTH"),
        help="also write credentials into containerd's config.toml (needs a containerd restart to apply)",
    )
    group.add_argument(
        "--containerd-restart",
        choices=RESTART_POLICIES,
        default=_env("CONTAINERD_RESTART", "none"),
        help="after a config.toml credential change: none (report 'restart pending'), signal, systemd",
    )
    group.add_argument(
        "--containerd-restart-interval",
        type=_seconds("CONTAINERD_RESTART_INTERVAL"),
        default=_env("CONTAINERD_RESTART_INTERVAL", "300"),
        help="at most one containerd restart per this many seconds (default %(default)s)",
    )


def _containerd_settings(args: argparse.Namespace) -> ContainerdSettings | None:
    """containerd is managed when any containerd flag is given; otherwise its files are left alone."""
    config = args.containerd_config or (CONTAINERD_PRESETS[args.containerd_preset] if args.containerd_preset else None)
    if config is None and not (args.registry_config or args.containerd_auth):
        if args.containerd_restart != "none":
            raise SettingsError("--containerd-restart needs --containerd-auth")
        return None
    if args.containerd_restart != "none" and not args.containerd_auth:
        raise SettingsError("--containerd-restart needs --containerd-auth (only config.toml changes need a restart)")
    return ContainerdSettings(
        config=config or CONTAINERD_PRESETS["kubeadm"],
        auth=args.containerd_auth,
        restart=args.containerd_restart,
        restart_interval=args.containerd_restart_interval,
    )


def _env_true(name: str) -> bool:
    """True when ``NODEAGENT_<name>`` switches an off-by-default feature on (``true``/``1``/``yes``)."""
    return _env(name, "false").strip().lower() in ("true", "1", "yes", "on")


def _add_provider_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider-preset",
        choices=sorted(PROVIDER_PRESETS),
        default=_env("PROVIDER_PRESET", "") or None,
        help="where the node's kubelet looks for plugins (eks: the AL2023 AMI's flags)",
    )
    parser.add_argument("--provider-bin-dir", default=_env("PROVIDER_BIN_DIR", "") or None)
    parser.add_argument(
        "--provider-config",
        default=_env("PROVIDER_CONFIG", "") or None,
        help="CredentialProviderConfig file (.json or .yaml), or a directory for a file of our own",
    )
    parser.add_argument(
        "--socket", default=_env("SOCKET", "/run/nodeagent/agent.sock"), help="agent socket (host path)"
    )
    for flag, env, default, text in _PROVIDER_FLAGS:
        if default is None:  # a switch
            parser.add_argument(flag, action="store_true", default=_env_true(env), help=f"{text} (NODEAGENT_{env})")
        else:
            parser.add_argument(flag, default=_env(env, default), help=f"{text} (NODEAGENT_{env})")


_PROVIDER_FLAGS: tuple[tuple[str, str, str | None, str], ...] = (
    # flag, NODEAGENT_ variable, default (None: a switch), help
    ("--credential-provider", "CREDENTIAL_PROVIDER", None,
     "serve every registry's credentials through the kubelet's exec-plugin path (nodeagent-credential-provider: "
     "a rotation reaches the next pull; namespace-scoped Secrets)"),
    ("--credential-provider-ports", "CREDENTIAL_PROVIDER_PORTS", "",
     "comma-separated registry ports to ask the provider for besides those in the sources (a new one needs a "
     "kubelet restart)"),
    ("--service-account-tokens", "SERVICE_ACCOUNT_TOKENS", None,
     "have the kubelet pass each pod's ServiceAccount token (k8s >= 1.33, KEP-4412): serves namespace-scoped "
     "credentials; a kubelet older than 1.33 does not start with it"),
    ("--service-account-token-audience", "SERVICE_ACCOUNT_TOKEN_AUDIENCE", "nodeagent",
     "the tokens' audience (the chart grants the nodes this audience)"),
    ("--provider-only", "PROVIDER_ONLY", None,
     "with --credential-provider: leave node-wide credentials out of config.json (every kubelet must run the "
     "provider, i.e. have been restarted since it was installed)"),
)  # fmt: skip


def _ports(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"--credential-provider-ports: {value!r} is not a comma-separated list of ports") from None


def _provider_settings(args: argparse.Namespace, required: bool, *, ecr: bool = True) -> ProviderSettings | None:
    bin_dir, config = args.provider_bin_dir, args.provider_config
    if args.provider_preset:
        preset_bin, preset_config = PROVIDER_PRESETS[args.provider_preset]
        bin_dir, config = bin_dir or preset_bin, config or preset_config
    if not bin_dir or not config:
        if required:
            raise SettingsError("give --provider-preset, or both --provider-bin-dir and --provider-config")
        return None
    return ProviderSettings(
        bin_dir=bin_dir,
        config_path=config,
        state_dir=args.state_dir,
        socket=args.socket,
        ecr=ecr,
        credentials=args.credential_provider,
        ports=_ports(args.credential_provider_ports),
        audience=args.service_account_token_audience if args.service_account_tokens else None,
        config_json=not args.provider_only,
    )


def _seconds(env: str) -> Any:
    """An argparse type for a number of seconds whose default may come from ``NODEAGENT_<env>``:
    argparse converts a string default only when the command uses it, inside its own error
    handling (exit 2, naming the flag), so a bad value never surfaces as a traceback."""

    def convert(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not a number of seconds (from the flag or NODEAGENT_{env})"
            ) from None

    convert.__name__ = "seconds"
    return convert


def _env_flag(name: str) -> bool:
    """True when ``NODEAGENT_<name>`` switches a feature off (``false``/``0``/``no``)."""
    return _env(name, "true").strip().lower() in ("false", "0", "no", "off")


class _AppendSource(argparse.Action):
    """Append ("secret"|"file", value) to one list, so --secret and --from-file keep their order."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        current = list(getattr(namespace, self.dest) or [])
        current.append(("secret" if option == "--secret" else "file", str(values)))
        setattr(namespace, self.dest, current)


def _settings(
    args: argparse.Namespace,
    files: Sequence[str] = (),
    dry_run: bool = False,
    provider: ProviderSettings | None = None,
) -> SyncSettings:
    return SyncSettings(
        host_root=args.host_root or default_host_root(),
        kubelet_root_dir=args.kubelet_root_dir,
        state_dir=args.state_dir,
        from_files=tuple(files),
        dry_run=dry_run,
        provider=provider,
        containerd=_containerd_settings(args) if hasattr(args, "containerd_auth") else None,
        registry_config=getattr(args, "registry_config", None),
    )


def _log_problems(log: Any, kind: str, problems: Sequence[EntryProblem], level: str) -> None:
    for problem in problems:
        getattr(log, level)(kind, registry=safe_key(problem.key), source=problem.source, reason=problem.reason)


def _report(log: Any, report: SyncReport) -> int:
    _log_problems(log, "entry_rejected", report.rejected, "error")
    _log_problems(log, "entry_warning", report.warnings, "warning")
    _log_problems(log, "registry_conflict", report.conflicts, "warning")
    event = "sync_planned" if report.dry_run else "sync_done"
    log.info(
        event,
        registries=report.registries,
        revision=report.revision,
        written=report.written,
        removed=report.removed,
        rejected=len(report.rejected),
    )
    return EXIT_PARTIAL if report.rejected else EXIT_OK


def _cmd_sync(args: argparse.Namespace, log: Any, redactor: Any) -> int:
    files = args.from_file or args.env_files
    if not files:
        raise SettingsError("sync needs at least one --from-file PATH (or NODEAGENT_FROM_FILE)")
    provider = _provider_settings(args, required=True, ecr=False) if args.credential_provider else None
    settings = _settings(args, files, args.dry_run, provider=provider)
    registry_settings = load_registry_settings(settings.registry_config) if settings.registry_config else None
    sources = load_file_sources(settings.from_files)
    for source in sources:
        redactor.add(source.secret_values)
    report = sync(HostFS(settings.host_root), settings, sources, registry_settings=registry_settings)
    if settings.dry_run:
        sys.stdout.write(diff_changes(report.changes) or "no changes\n")
    elif report.containerd_auth_changed and settings.containerd is not None:
        restarter = Restarter(settings.containerd)
        restarter.request()
        try:
            outcome = restarter.maybe_restart()
        except RestartError as exc:
            _report(log, report)
            log.error("containerd_restart_failed", error=str(exc), consequence="the files are written; not in effect")
            return EXIT_FAILED
        (log.warning if outcome == "pending" else log.info)(
            "containerd_restart_" + str(outcome),
            config=settings.containerd.config,
            why="containerd reads config.toml credentials only at start",
        )
    return _report(log, report)


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"--listen {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def _cmd_cleanup(args: argparse.Namespace, log: Any) -> int:
    settings = _settings(args)
    listen = _parse_listen(args.listen) if args.wait else None
    report = cleanup(HostFS(settings.host_root), settings)
    log.info("cleanup_done", written=report.written, removed=report.removed)
    if report.containerd_auth_changed:
        log.warning(
            "containerd_restart_pending",
            why="nodeagent's credentials were removed from containerd's config; containerd reads it only at start",
            fix="restart containerd when convenient (systemctl restart containerd)",
        )
    if listen is not None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server = HealthServer(*listen, alive=lambda: True, ready=lambda: (True, "cleaned up"), metrics=lambda: b"")
        server.start()
        log.info("cleanup_waiting", port=server.port)
        stop.wait()
        server.stop()
    return EXIT_OK


def _cmd_wait_cleanup(args: argparse.Namespace, log: Any, *, api: KubeAPI | None = None) -> int:
    """Poll the cleanup DaemonSet until every scheduled pod is ready (``cleanup --wait`` is ready
    once its node is clean), then delete it. Exit 1 on timeout, naming how many nodes are left."""
    if args.timeout <= 0:
        raise SettingsError("--timeout must be positive")
    api = api or KubernetesClient(args.kubeconfig)
    deadline = time.monotonic() + args.timeout
    status: dict[str, Any] = {}
    seen: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        daemonset = api.get_daemonset(args.namespace, args.daemonset)
        if daemonset is None:
            log.info("cleanup_daemonset_gone", daemonset=args.daemonset)
            return EXIT_OK
        status = daemonset.get("status") or {}
        desired, ready = int(status.get("desiredNumberScheduled") or 0), int(status.get("numberReady") or 0)
        observed = int(status.get("observedGeneration") or 0) >= int(daemonset["metadata"].get("generation") or 0)
        if (ready, desired) != seen:
            seen = (ready, desired)
            log.info("waiting_for_cleanup", nodes_clean=ready, nodes=desired)
        if observed and ready >= desired:  # (no node to clean at all: nothing to wait for)
            log.info("nodes_cleaned", nodes=ready)
            api.delete_daemonset(args.namespace, args.daemonset)
            return EXIT_OK
        time.sleep(2)
    left = int(status.get("desiredNumberScheduled") or 0) - int(status.get("numberReady") or 0)
    log.error(
        "cleanup_timed_out",
        daemonset=args.daemonset,
        nodes_not_cleaned=left,
        fix=f"kubectl -n {args.namespace} get pods -l app.kubernetes.io/component=cleanup: see why they are not ready; "
        f"delete the DaemonSet {args.daemonset} by hand when done",
    )
    return EXIT_FAILED


def _cmd_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    hostfs = HostFS(settings.host_root)
    ledger = Ledger.load(hostfs.read(settings.ledger_path), source=settings.ledger_path)
    if not ledger.files:
        print("nodeagent manages no files on this node")
        return EXIT_OK
    print(f"credentials revision {ledger.revision}")
    for path, record in sorted(ledger.files.items()):
        if isinstance(record, HostsTomlRecord):
            print(f"==> {path} (nodeagent's file for registry {record.registry or '?'})")
        else:
            print(f"==> {path} (managed entries: {', '.join(sorted(record.owned)) or 'none'})")
        sys.stdout.write(redact_document(hostfs.read(path), path=path) or "(missing)\n")
        if record.target == CONTAINERD_CONFIG_TARGET:
            try:
                mtime: float | None = os.stat(hostfs.real_path(path)).st_mtime
            except OSError:
                mtime = None
            pending = restart_pending(mtime, find_containerd(path))
            state = {
                True: "restart pending: containerd started before this file changed, the credentials are not in effect",
                False: "in effect: containerd started after this file changed",
                None: "unknown: containerd's process is not visible here",
            }[pending]
            print(f"containerd: {state}")
    return EXIT_OK


def _run_settings(args: argparse.Namespace) -> RunSettings:
    sources = args.sources
    if sources is None:
        sources = [("secret", v) for v in _env("SECRETS", "").split(",") if v.strip()]
        sources += [("file", v) for v in _env("FROM_FILE", "").split(",") if v.strip()]
    if not sources:
        raise SettingsError("run needs at least one --secret NAMESPACE/NAME or --from-file PATH")
    specs = []
    for kind, value in sources:
        value = value.strip()
        if kind == "secret" and not _SECRET_REF.match(value):
            raise SettingsError(f"--secret {value!r} is not NAMESPACE/NAME (lower-case DNS names)")
        specs.append(SourceSpec(kind, value))
    if len({s.label for s in specs}) != len(specs):
        raise SettingsError("the same source is given twice")
    listen_host, listen_port = _parse_listen(args.listen)
    if args.resync_interval < 1:
        raise SettingsError("--resync-interval must be at least 1 second")
    if args.forbidden_retry < 1:
        raise SettingsError("--forbidden-retry must be at least 1 second")
    ecr_registries = tuple(h.strip() for h in args.ecr_registries.split(",") if h.strip())
    ecr_regions = tuple(r.strip() for r in args.ecr_regions.split(",") if r.strip())
    for host in ecr_registries:
        if parse_ecr_host(host) is None:
            raise SettingsError(f"--ecr-registries: {host!r} is not an ECR registry host")
    for region in ecr_regions:
        if not valid_key(region):
            raise SettingsError(f"--ecr-regions: {region!r} is not an AWS region name")
    if args.remove_startup_taint and not args.node_name:
        raise SettingsError("--remove-startup-taint needs --node-name (or NODE_NAME)")
    if (ecr_registries or ecr_regions) and not args.ecr:
        raise SettingsError("--ecr-registries and --ecr-regions need --ecr")
    provider = None
    if args.ecr or args.credential_provider:
        provider = _provider_settings(args, required=args.credential_provider, ecr=args.ecr)
    return RunSettings(
        sync=_settings(args, provider=provider),
        sources=tuple(specs),
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        listen_host=listen_host,
        listen_port=listen_port,
        on_secret_deleted=args.on_secret_deleted,
        resync_interval=args.resync_interval,
        events=not args.no_events,
        annotations=not args.no_annotations,
        event_namespace=args.event_namespace,
        forbidden_retry=args.forbidden_retry,
        startup_taint=args.remove_startup_taint,
        ecr=args.ecr,
        ecr_regions=ecr_regions,
        ecr_registries=ecr_registries,
        ecr_credentials_secret=args.ecr_credentials_secret,
    )


def _cmd_run(args: argparse.Namespace, log: Any, redactor: Any) -> int:
    settings = _run_settings(args)
    api: KubeAPI | None = None
    needs_api = (
        any(s.kind == "secret" for s in settings.sources) or settings.kubeconfig or settings.ecr_credentials_secret
    )
    if needs_api:
        api = KubernetesClient(settings.kubeconfig)
    elif settings.node_name and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            api = KubernetesClient(None)
        except KubeError as exc:
            log.warning("api_unavailable", error=str(exc), consequence="no Events, annotations or node scoping")
    agent = Agent(settings, api=api, redactor=redactor)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.shutdown())
    code = agent.run()
    # The watchers are daemon threads, often blocked in a long watch read; one that logs while the
    # interpreter finalises can abort the process (SIGABRT: stderr's lock held at shutdown, seen in
    # CI). Every file is fsync'ed and the agent has stopped: end without interpreter finalisation.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_env_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse checks ``choices`` only for values given on the command line; a default taken from
    a ``NODEAGENT_*`` variable is checked here, with the same exit 2 and a message naming the flag."""
    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = commands.choices.get(args.command) if commands is not None and args.command else None
    for action in (command or parser)._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            options = ", ".join(str(c) for c in action.choices)
            (command or parser).error(
                f"argument {'/'.join(action.option_strings)}: invalid choice {str(value)[:40]!r} from its NODEAGENT_* "
                f"variable (choose from {options})"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_env_choices(parser, args)
    if args.command == "version":
        print(f"nodeagent {__version__}")
        return EXIT_OK
    redactor = configure_logging(fmt=args.log_format, level=args.log_level)
    log = get_logger(command=args.command)
    try:
        if args.command == "sync":
            return _cmd_sync(args, log, redactor)
        if args.command == "cleanup":
            return _cmd_cleanup(args, log)
        if args.command == "wait-cleanup":
            return _cmd_wait_cleanup(args, log)
        if args.command == "run":
            return _cmd_run(args, log, redactor)
        if args.command == "doctor":
            return _cmd_doctor(args)
        if args.command == "install-provider":
            ecr = args.ecr or not args.credential_provider
            settings = _settings(args, provider=_provider_settings(args, required=True, ecr=ecr))
            report = sync(HostFS(settings.host_root), settings, [], hold_all=True)
            log.info("provider_installed", written=report.written)
            if report.kubelet_restart_needed:
                log.warning(
                    "kubelet_restart_needed",
                    reason="the kubelet reads its CredentialProviderConfig only when it starts",
                    action="restart the kubelet (systemctl restart kubelet) for the provider to take effect",
                )
            return EXIT_OK
        return _cmd_show(args)
    except SettingsError as exc:
        log.error("settings_invalid", error=str(exc))
        return EXIT_USAGE
    except NodeagentError as exc:
        log.error(f"{args.command}_failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_DOCTOR_FAILED if args.command == "doctor" else EXIT_FAILED
    except Exception:
        # A bug, not an expected failure: the traceback goes through the redacting logger, never
        # straight to stderr, so no secret a local variable held can be printed.
        log.exception(f"{args.command}_crashed")
        return EXIT_DOCTOR_FAILED if args.command == "doctor" else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
