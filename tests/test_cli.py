"""The real ``nodeagent`` CLI, run as a process: exit codes, JSON logs, and no secret anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import b64

SENTINEL = "SENTINEL-s3cr3t-7f1c"
SENTINEL_B64 = b64(f"user:{SENTINEL}")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEAGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def _write(path: Path, document: object) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def _assert_clean(result: subprocess.CompletedProcess[str], host_root: Path) -> None:
    for text in (result.stdout, result.stderr):
        assert SENTINEL not in text
        assert SENTINEL_B64 not in text
    ledger = host_root / "var/lib/nodeagent/state.json"
    if ledger.exists():
        assert SENTINEL not in ledger.read_text()
        assert SENTINEL_B64 not in ledger.read_text()


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


@pytest.fixture
def good(tmp_path: Path) -> str:
    return _write(
        tmp_path / "good.json",
        {"auths": {"r.example.com": {"auth": SENTINEL_B64}, "s.example.com": {"username": "u", "password": SENTINEL}}},
    )


def test_sync_success(host_root: Path, good: str) -> None:
    """A clean sync exits 0, logs JSON events with registry counts, and prints no secret."""
    result = _run("sync", "--once", "--from-file", good, "--host-root", str(host_root), "--log-format", "json")
    assert 0 == result.returncode, result.stderr
    events = _events(result.stderr)
    assert ["sync_done"] == [e["event"] for e in events]
    assert 2 == events[0]["registries"]
    _assert_clean(result, host_root)
    assert SENTINEL in (host_root / "var/lib/kubelet/config.json").read_text()


def test_rejected_entry_exit_code_and_naming(host_root: Path, tmp_path: Path) -> None:
    """A rejected entry gives exit 3, names the registry, and leaks nothing of the bad value."""
    source = _write(
        tmp_path / "mixed.json",
        {"auths": {"ok.example.com": {"auth": SENTINEL_B64}, "bad.example.com": {"auth": SENTINEL + "!"}}},
    )
    result = _run("sync", "--from-file", source, "--host-root", str(host_root), "--log-format", "json")
    assert 3 == result.returncode
    rejected = [e for e in _events(result.stderr) if e["event"] == "entry_rejected"]
    assert ["bad.example.com"] == [e["registry"] for e in rejected]
    _assert_clean(result, host_root)


def test_unparseable_input_exit_1_nothing_written(host_root: Path, tmp_path: Path, good: str) -> None:
    """An unparseable source fails the whole run (exit 1) and writes nothing, even with a good source."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {"r.example.com": {"auth": "' + SENTINEL)
    result = _run("sync", "--from-file", good, "--from-file", str(bad), "--host-root", str(host_root))
    assert 1 == result.returncode
    assert not (host_root / "var/lib/kubelet/config.json").exists()
    assert "sync_failed" == _events(result.stderr)[-1]["event"]
    _assert_clean(result, host_root)


def test_foreign_breakage_exit_1(host_root: Path, good: str) -> None:
    """A foreign entry the kubelet cannot read stops the write with exit 1, naming the entry."""
    target = host_root / "var/lib/kubelet/config.json"
    target.write_text(json.dumps({"auths": {"foreign.example.com": {"auth": SENTINEL}}}))
    result = _run("sync", "--from-file", good, "--host-root", str(host_root))
    assert 1 == result.returncode
    assert "foreign.example.com" in result.stderr
    _assert_clean(result, host_root)


def test_symlink_target_exit_1(host_root: Path, good: str, tmp_path: Path) -> None:
    """A symlink planted at config.json is reported, and its target stays untouched."""
    outside = tmp_path / "outside"
    outside.write_text("precious")
    (host_root / "var/lib/kubelet/config.json").symlink_to(outside)
    result = _run("sync", "--from-file", good, "--host-root", str(host_root))
    assert 1 == result.returncode
    assert "SymlinkRefused" in result.stderr
    assert "precious" == outside.read_text()
    _assert_clean(result, host_root)


def test_dry_run_prints_redacted_diff(host_root: Path, good: str) -> None:
    """--dry-run prints a diff naming registries, masks secrets, and writes nothing."""
    result = _run("sync", "--dry-run", "--from-file", good, "--host-root", str(host_root))
    assert 0 == result.returncode
    assert "r.example.com" in result.stdout and "<redacted:" in result.stdout
    assert not (host_root / "var/lib/kubelet/config.json").exists()
    assert not (host_root / "var/lib/nodeagent").exists()
    _assert_clean(result, host_root)


def test_show_and_cleanup(host_root: Path, good: str) -> None:
    """show masks secrets; cleanup removes what the agent wrote."""
    assert 0 == _run("sync", "--from-file", good, "--host-root", str(host_root)).returncode
    shown = _run("show", "--host-root", str(host_root))
    assert 0 == shown.returncode
    assert "r.example.com" in shown.stdout and "***" in shown.stdout
    _assert_clean(shown, host_root)
    cleaned = _run("cleanup", "--host-root", str(host_root))
    assert 0 == cleaned.returncode
    assert not (host_root / "var/lib/kubelet/config.json").exists()
    _assert_clean(cleaned, host_root)


def test_settings_errors_exit_2(tmp_path: Path, good: str) -> None:
    """A bad flag value fails at start with exit 2 and a sentence naming the flag."""
    missing = _run("sync", "--from-file", good, "--host-root", str(tmp_path / "nope"))
    assert 2 == missing.returncode
    assert "--host-root" in missing.stderr
    relative = _run("sync", "--from-file", good, "--host-root", str(tmp_path), "--kubelet-root-dir", "var/lib")
    assert 2 == relative.returncode
    assert 2 == _run("sync", "--host-root", str(tmp_path)).returncode


def test_env_settings(host_root: Path, good: str) -> None:
    """NODEAGENT_* environment variables configure sync like flags do."""
    env = dict(
        os.environ, NODEAGENT_HOST_ROOT=str(host_root), NODEAGENT_FROM_FILE=good, NODEAGENT_KUBELET_ROOT_DIR="/k"
    )
    result = subprocess.run(
        [sys.executable, "-m", "nodeagent", "sync"], capture_output=True, text=True, env=env, timeout=60
    )
    assert 0 == result.returncode, result.stderr
    assert (host_root / "k/config.json").exists()


def test_version() -> None:
    """`nodeagent version` and `--version` print the package version."""
    from nodeagent import __version__

    assert f"nodeagent {__version__}\n" == _run("version").stdout
    assert f"nodeagent {__version__}\n" == _run("--version").stdout


def test_cleanup_wait_serves_ready_until_sigterm(host_root: Path, good: str) -> None:
    """`cleanup --wait` (the chart's uninstall step) cleans up, reports ready, and exits 0 on SIGTERM."""
    import signal
    import time
    import urllib.request

    assert 0 == _run("sync", "--from-file", good, "--host-root", str(host_root)).returncode
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEAGENT_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodeagent",
            "cleanup",
            "--wait",
            "--listen",
            "127.0.0.1:0",
            "--host-root",
            str(host_root),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        lines = [json.loads(proc.stderr.readline()) for _ in range(2)]
        assert ["cleanup_done", "cleanup_waiting"] == [line["event"] for line in lines]
        assert not (host_root / "var/lib/kubelet/config.json").exists()
        port = lines[1]["port"]
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                    assert 200 == resp.status
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert 0 == proc.wait(timeout=10)


def _constrained_options() -> list[Any]:
    """Every declared option whose variable can hold a bad value (config.ALL_OPTIONS)."""
    from nodeagent.config import ALL_OPTIONS

    found = []
    for option in ALL_OPTIONS:
        try:
            option.convert("10m-bogus")
        except ValueError:
            found.append(option)
    return found


@pytest.mark.parametrize("argv", [["--version"], ["version"], ["show"], ["run", "--from-file", "/dev/null"]])
@pytest.mark.parametrize("option", _constrained_options(), ids=lambda o: o.flag)
def test_a_bad_environment_value_is_a_usage_error(
    option: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every constrained option's NODEAGENT_* variable with a bad value: exit 2 with a message naming
    the variable and the flag, for every command (--version too), never a traceback."""
    from nodeagent import cli

    monkeypatch.setenv(option.variable, "10m-bogus")
    assert 2 == cli.main([*argv, "--host-root", "/nonexistent-host-root"] if argv[0] == "show" else argv)
    err = capsys.readouterr().err
    assert option.variable in err and option.flag in err and "Traceback" not in err


def test_the_constrained_options_cover_every_kind() -> None:
    """The class test above sees choices, numbers of seconds, switches, ports and addresses."""
    flags = {o.flag for o in _constrained_options()}
    assert {
        "--log-format",
        "--resync-interval",
        "--ecr",
        "--no-events",
        "--credential-provider-ports",
        "--listen",
    } <= flags


@pytest.mark.parametrize("option", [o for o in _constrained_options() if not o.switch], ids=lambda o: o.flag)
def test_a_bad_flag_value_names_the_flag(option: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The same values on the command line (switches take none): argparse's exit 2, naming the flag."""
    from nodeagent import cli

    command = next(
        c for c in ("run", "sync", "cleanup", "doctor", "wait-cleanup")
        if option.dest in vars(cli.build_parser().parse_args([c, "--daemonset", "x"] if c == "wait-cleanup" else [c]))
    )  # fmt: skip
    extra = ["--daemonset", "x"] if command == "wait-cleanup" else []
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *extra, option.flag, "10m-bogus"])
    assert 2 == exit_info.value.code
    assert f"argument {option.flag}" in capsys.readouterr().err


def test_the_host_plugin_defaults_to_the_agents_socket() -> None:
    """The plugin (standard library only, copied to the host) cannot import the declaration: its
    default socket must be the one declared in config.py."""
    import inspect

    from nodeagent.config import ProviderSettings, field_default
    from nodeagent.ecr import plugin

    assert f'"NODEAGENT_SOCKET", "{field_default(ProviderSettings, "socket")}"' in inspect.getsource(plugin)


def test_every_declared_default_is_a_value_its_settings_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing given, each option's declared default goes through the same settings builders
    as a parsed value does (a default in the wrong form would fail here, not on a node)."""
    from nodeagent import cli
    from nodeagent.config import ALL_OPTIONS

    for option in ALL_OPTIONS:
        if option.variable:
            monkeypatch.delenv(option.variable, raising=False)
        if option.default not in (None, (), False) and option.parse is not None:
            assert isinstance(
                option.default, type(option.parse(str(option.default)) if not isinstance(option.default, tuple) else ())
            )
    run = cli._run_settings(cli.parse_args(["run", "--from-file", "/dev/null", "--host-root", str(tmp_path)]))
    observed = (run.observe.listen_host, run.observe.listen_port, run.sources.resync_interval)
    assert ("0.0.0.0", 9808, 600.0) == observed  # noqa: S104 - the declared default, not a bind
    cleanup = cli.parse_args(["cleanup", "--wait"])
    assert (run.observe.listen_host, run.observe.listen_port) == cleanup.listen


class _FlakyDaemonSetAPI:
    """The cleanup DaemonSet's status through an API server that fails the first calls (503, a
    429 with Retry-After, a dropped connection), then answers."""

    def __init__(self) -> None:
        from nodeagent.kube import KubeError

        self.failures = [
            KubeError("get", 503, "unavailable"),
            KubeError("get", 429, "slow down", 0.1),
            KubeError("get", None, "ConnectionResetError"),
        ]
        self.deleted = False

    def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.failures:
            raise self.failures.pop(0)
        status = {"desiredNumberScheduled": 2, "numberReady": 2, "observedGeneration": 1}
        return {"metadata": {"generation": 1}, "status": status}

    def delete_daemonset(self, namespace: str, name: str) -> None:
        self.deleted = True


def test_wait_cleanup_rides_out_transient_api_errors() -> None:
    """wait-cleanup retries a failing API server with backoff inside its deadline, then deletes
    the cleanup DaemonSet (before, the first error failed the hook and helm uninstall)."""
    from nodeagent import cli
    from nodeagent.observe.logging import get_logger

    args = cli.build_parser().parse_args(["wait-cleanup", "--daemonset", "x", "--timeout", "60"])
    api = _FlakyDaemonSetAPI()
    assert 0 == cli._cmd_wait_cleanup(args, get_logger(), api=api)  # type: ignore[arg-type]
    assert ([], True) == (api.failures, api.deleted)


def test_a_scoped_file_source_keeps_its_scope_and_order() -> None:
    """--from-file-scoped PATH=NAMESPACES is a file source with its scope, in the order given; a
    bad scope fails at start naming the flag and the path."""
    from nodeagent import cli
    from nodeagent.errors import SettingsError

    argv = [
        "run",
        "--secret",
        "ns/a",
        "--from-file-scoped",
        "/m/t/.dockerconfigjson=team-a, ci-*",
        "--from-file",
        "/m/s",
    ]
    specs = cli._run_settings(cli.parse_args(argv)).sources.specs
    assert [
        ("secret", "ns/a", None),
        ("file", "/m/t/.dockerconfigjson", ("team-a", "ci-*")),
        ("file", "/m/s", None),
    ] == [(s.kind, s.ref, s.namespaces) for s in specs]
    for bad in ("/m/t=", "/m/t=Team_A", "team-a"):
        with pytest.raises(SettingsError):
            cli._run_settings(cli.parse_args(["run", "--from-file-scoped", bad]))


def test_wait_cleanup_that_times_out_deletes_the_daemonset_and_says_what_is_left() -> None:
    """Nodes that never report clean: wait-cleanup exits 1 after its timeout, naming how many are
    left, and deletes the cleanup DaemonSet (left behind, it loops and takes every new node)."""
    from nodeagent import cli
    from nodeagent.observe.logging import get_logger

    class NeverClean(_FlakyDaemonSetAPI):
        def get_daemonset(self, namespace: str, name: str) -> dict[str, Any] | None:
            status = {"desiredNumberScheduled": 3, "numberReady": 1, "observedGeneration": 1}
            return {"metadata": {"generation": 1}, "status": status}

    args = cli.parse_args(["wait-cleanup", "--daemonset", "x", "--timeout", "0.5"])
    api = NeverClean()
    assert 1 == cli._cmd_wait_cleanup(args, get_logger(), api=api)  # type: ignore[arg-type]
    assert api.deleted


def test_help_shows_defaults_as_they_are_typed() -> None:
    """--listen's default reads HOST:PORT in the help, as one types it (it read ('0.0.0.0', 9808))."""
    from nodeagent import cli

    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())  # type: ignore[union-attr]
    assert "default 0.0.0.0:9808;" in text and "('0.0.0.0'" not in text
