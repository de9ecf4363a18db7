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
import contextlib
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
    ALL_OPTIONS,
    CONTAINERD_OPTIONS,
    CONTAINERD_PRESETS,
    ECR_OPTIONS,
    FROM_FILE_OPTION,
    FROM_FILE_SCOPED_OPTION,
    HOST_OPTIONS,
    LISTEN_OPTION,
    LOG_OPTIONS,
    NAMESPACE_OPTION,
    NODE_OPTIONS,
    OBSERVE_OPTIONS,
    PROVIDER_OPTIONS,
    PROVIDER_PRESETS,
    SECRETS_OPTION,
    SOURCE_OPTIONS,
    ContainerdSettings,
    EcrSettings,
    ObserveSettings,
    Option,
    ProviderSettings,
    SourcesSettings,
    SyncSettings,
    check_environment,
    default_host_root,
)
from nodeagent.ecr.plugin import parse_ecr_host
from nodeagent.ecr.tokens import valid_key
from nodeagent.errors import NodeagentError, SettingsError
from nodeagent.host.containerd_restart import Restarter, RestartError, find_containerd, restart_pending
from nodeagent.host.hostfs import HostFS
from nodeagent.kube import KubeAPI, KubeError, KubernetesClient
from nodeagent.model.credentials import EntryProblem, parse_namespaces, safe_key
from nodeagent.model.ledger import HostsTomlRecord, Ledger
from nodeagent.model.registry_settings import load_registry_settings
from nodeagent.observe.health import HealthServer
from nodeagent.observe.logging import configure_logging, get_logger
from nodeagent.reconcile import SyncReport, cleanup, diff_changes, load_file_sources, redact_document, sync
from nodeagent.sources import Backoff
from nodeagent.targets.containerd import CONFIG_TARGET as CONTAINERD_CONFIG_TARGET

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_CONFLICT = 4
"""cleanup: something could not be given back (a file it cannot edit); what is needed to do it later is kept."""
EXIT_DOCTOR_FAILED = 3
"""doctor could not finish (its own failure), distinct from 1 (warnings) and 2 (failures found)."""

_SECRET_REF = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


_OPTIONS = {option.flag: option for option in ALL_OPTIONS}


def _add(parser: Any, *options: Option) -> None:
    """Flags from their declarations (config.py). Every default is None here: a value not given on
    the command line comes from the option's variable or its declared default (``_resolve``)."""
    for option in options:
        default = option.default_text or option.default
        shown = "" if default in (None, (), False) else f"default {default}; "
        text = f"{option.help} ({shown}{option.variable})" if option.variable else option.help
        if option.switch:
            parser.add_argument(option.flag, action="store_const", const=True, default=None, help=text)
        else:
            parser.add_argument(
                option.flag, default=None, type=_argument_type(option), choices=option.choices,
                metavar=option.metavar, help=text,
            )  # fmt: skip


def _argument_type(option: Option) -> Any:
    def convert(text: str) -> Any:
        try:
            return option.convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option.dest
    return convert


def _resolve(args: argparse.Namespace) -> None:
    """Fill each option the command line did not give from its variable, else its default
    (the environment was checked at start, so this cannot fail)."""
    for option in ALL_OPTIONS:
        if getattr(args, option.dest, "absent") is None:
            found, value = option.from_env(os.environ)
            setattr(args, option.dest, value if found else option.default)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Every ``NODEAGENT_*`` value checked (for every command, ``--version`` too: a SettingsError
    names the variable), then the command line parsed and each value not given filled in."""
    check_environment(os.environ)
    args = build_parser().parse_args(argv)
    _resolve(args)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description="Node-level registry credential agent.")
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_sync = sub.add_parser("sync", help="one reconcile pass from credential files")
    p_sync.add_argument("--once", action="store_true", help="one pass and exit (sync always does exactly one)")
    p_sync.add_argument(
        FROM_FILE_OPTION.flag, action="append", default=None, metavar="PATH",
        help=f"{FROM_FILE_OPTION.help} ({FROM_FILE_OPTION.variable})",
    )  # fmt: skip
    p_sync.add_argument("--dry-run", action="store_true", help="print a redacted diff, write nothing")
    _add(p_sync, *PROVIDER_OPTIONS)
    _add(p_sync.add_argument_group("containerd (docs/containerd.md)"), *CONTAINERD_OPTIONS)
    _add(p_sync, *HOST_OPTIONS, *LOG_OPTIONS)

    p_clean = sub.add_parser("cleanup", help="remove everything the agent wrote, restore what it replaced")
    p_clean.add_argument(
        "--wait",
        action="store_true",
        help="after cleaning up, serve /healthz and /readyz on --listen until SIGTERM (the chart's uninstall step)",
    )
    _add(p_clean, LISTEN_OPTION, *HOST_OPTIONS, *LOG_OPTIONS)

    p_wait = sub.add_parser(
        "wait-cleanup",
        help="wait until every pod of the uninstall DaemonSet has cleaned its node, then delete it (the chart's "
        "post-delete hook)",
    )
    p_wait.add_argument("--daemonset", required=True, metavar="NAME", help="the cleanup DaemonSet")
    p_wait.add_argument("--timeout", type=float, default=240.0, help="seconds (default %(default)s)")
    _add(p_wait, NAMESPACE_OPTION, _OPTIONS["--kubeconfig"], *LOG_OPTIONS)

    p_show = sub.add_parser("show", help="print the files the agent manages, secrets masked")
    _add(p_show, *HOST_OPTIONS, *LOG_OPTIONS)

    p_run = sub.add_parser("run", help="the long-running agent: watch sources, keep the node in sync")
    p_run.set_defaults(sources=None)
    for option in (SECRETS_OPTION, FROM_FILE_OPTION, FROM_FILE_SCOPED_OPTION):
        variable = f" ({option.variable})" if option.variable else ""
        p_run.add_argument(
            option.flag, action=_AppendSource, dest="sources", metavar=option.metavar,
            help=f"{option.help}; sources merge in the order given, later wins per registry{variable}",
        )  # fmt: skip
    _add(p_run, *NODE_OPTIONS, *OBSERVE_OPTIONS, *SOURCE_OPTIONS, *PROVIDER_OPTIONS)
    _add(p_run.add_argument_group("containerd (docs/containerd.md)"), *CONTAINERD_OPTIONS)
    _add(p_run, *ECR_OPTIONS, *HOST_OPTIONS, *LOG_OPTIONS)

    p_install = sub.add_parser(
        "install-provider",
        help="install the credential-provider plugins and config, once (run --ecr / --credential-provider "
        "do it too); ECR unless --credential-provider is given without --ecr",
    )
    _add(p_install, _OPTIONS["--ecr"], *PROVIDER_OPTIONS, *HOST_OPTIONS, *LOG_OPTIONS)

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
    _add(p_doctor, _OPTIONS["--containerd-config"], *PROVIDER_OPTIONS, *HOST_OPTIONS, *LOG_OPTIONS)

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
        ports=args.credential_provider_ports,
        audience=args.service_account_token_audience if args.service_account_tokens else None,
        config_json=not args.provider_only,
    )


class _AppendSource(argparse.Action):
    """Append ("secret"|"file", value) to one list, so --secret and --from-file keep their order."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        current = list(getattr(namespace, self.dest) or [])
        kind = {"--secret": "secret", "--from-file-scoped": "scoped-file"}.get(option or "", "file")
        current.append((kind, str(values)))
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
    files = args.from_file
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


def _cmd_cleanup(args: argparse.Namespace, log: Any) -> int:
    settings = _settings(args)
    listen = args.listen if args.wait else None
    hostfs = HostFS(settings.host_root)
    # No agent may run on the node while it is cleaned (its drift repair would undo the cleanup
    # within milliseconds): refuse, or under --wait (the uninstall hook) wait for it to be gone,
    # and keep the lock until this process ends so none starts writing again meanwhile.
    presence = None if settings.dry_run else hostfs.presence(settings.state_dir, exclusive=True)
    while presence is None and not settings.dry_run:
        if not args.wait:
            log.error(
                "agent_running",
                why="a nodeagent agent is running on this node and would put back what cleanup removes",
                fix="stop it first (helm uninstall does; or kubectl delete the DaemonSet), then run cleanup",
            )
            return EXIT_FAILED
        log.info("waiting_for_the_agent_to_stop", lock=f"{settings.state_dir}/running")
        time.sleep(1.0)
        presence = hostfs.presence(settings.state_dir, exclusive=True)
    report = cleanup(hostfs, settings)
    _log_problems(log, "entry_warning", report.warnings, "warning")
    _log_problems(log, "cleanup_conflict", report.conflicts, "error")
    log.info("cleanup_done", written=report.written, removed=report.removed, conflicts=len(report.conflicts))
    if report.containerd_auth_changed:
        log.warning(
            "containerd_restart_pending",
            why="nodeagent's credentials were removed from containerd's config; containerd reads it only at start",
            fix="restart containerd when convenient (systemctl restart containerd)",
        )
    if report.conflicts:
        # Not "cleaned up": under --wait the pod restarts and tries again (the uninstall hook's
        # Job waits for it, then names it), and the kept records and backups make a retry whole.
        return EXIT_CONFLICT
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
    backoff = Backoff(base=1.0, cap=15.0)
    while time.monotonic() < deadline:
        try:
            daemonset = api.get_daemonset(args.namespace, args.daemonset)
        except KubeError as exc:
            # A restarting API server, a 429, a dropped connection: retried within the deadline
            # (the Job has no retries of its own, and a failed hook fails helm uninstall).
            delay = min(max(backoff.next(), exc.retry_after or 0.0), max(0.0, deadline - time.monotonic()))
            log.warning("cleanup_status_unavailable", status=exc.status, error=str(exc), retry_in_s=round(delay, 1))
            time.sleep(delay)
            continue
        backoff.reset()
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
            try:
                api.delete_daemonset(args.namespace, args.daemonset)
            except KubeError as exc:
                log.warning("cleanup_delete_failed", status=exc.status, error=str(exc))
                time.sleep(min(backoff.next(), max(0.0, deadline - time.monotonic())))
                continue
            return EXIT_OK
        time.sleep(2)
    left = int(status.get("desiredNumberScheduled") or 0) - int(status.get("numberReady") or 0)
    log.error(
        "cleanup_timed_out",
        daemonset=args.daemonset,
        nodes_not_cleaned=left,
        why=f"{left} node(s) did not report clean within {args.timeout:g}s",
        fix="on each node not cleaned, run `nodeagent cleanup` (or reinstall with cleanupMode=true and uninstall "
        "again); the cleanup DaemonSet is deleted so it does not stay behind",
    )
    # Nothing left behind: the DaemonSet would otherwise loop (its ServiceAccount is gone) and
    # pick up every new node.
    with contextlib.suppress(KubeError):
        api.delete_daemonset(args.namespace, args.daemonset)
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
        sources = [("secret", v) for v in SECRETS_OPTION.from_env(os.environ)[1] or ()]
        sources += [("file", v) for v in FROM_FILE_OPTION.from_env(os.environ)[1] or ()]
    specs = []
    for kind, value in sources:
        value = value.strip()
        if kind == "secret" and not _SECRET_REF.match(value):
            raise SettingsError(f"--secret {value!r} is not NAMESPACE/NAME (lower-case DNS names)")
        if kind == "scoped-file":
            path, _, scope = value.rpartition("=")
            try:
                namespaces = parse_namespaces(scope)
            except ValueError as exc:
                raise SettingsError(f"--from-file-scoped {path or value!r}: the namespaces {exc}") from None
            if not path:
                raise SettingsError(f"--from-file-scoped {value!r} is not PATH=NAMESPACES")
            specs.append(SourceSpec("file", path.strip(), namespaces))
            continue
        specs.append(SourceSpec("secret" if kind == "secret" else "file", value))
    for host in args.ecr_registries:
        if parse_ecr_host(host) is None:
            raise SettingsError(f"--ecr-registries: {host!r} is not an ECR registry host")
    for region in args.ecr_regions:
        if not valid_key(region):
            raise SettingsError(f"--ecr-regions: {region!r} is not an AWS region name")
    provider = None
    if args.ecr or args.credential_provider:
        provider = _provider_settings(args, required=args.credential_provider, ecr=args.ecr)
    listen_host, listen_port = args.listen
    return RunSettings(
        sync=_settings(args, provider=provider),
        sources=SourcesSettings(
            specs=tuple(specs), on_secret_deleted=args.on_secret_deleted, resync_interval=args.resync_interval,
            forbidden_retry=args.forbidden_retry,
        ),
        observe=ObserveSettings(
            listen_host=listen_host, listen_port=listen_port, events=not args.no_events,
            annotations=not args.no_annotations, event_namespace=args.event_namespace,
        ),
        ecr=EcrSettings(
            enabled=args.ecr, regions=args.ecr_regions, registries=args.ecr_registries,
            credentials_secret=args.ecr_credentials_secret,
        ),
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        startup_taint=args.remove_startup_taint,
    )  # fmt: skip


def _cmd_run(args: argparse.Namespace, log: Any, redactor: Any) -> int:
    settings = _run_settings(args)
    api: KubeAPI | None = None
    needs_api = (
        any(s.kind == "secret" for s in settings.sources.specs)
        or settings.kubeconfig
        or settings.ecr.credentials_secret
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SettingsError as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
