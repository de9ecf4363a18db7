"""The agent's ECR token manager against a real AWS API peer (moto's server behind a thin layer)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.ecr.tokens import BotocoreTokens, EcrSocketServer, TokenError, TokenManager
from nodeagent.host.hostfs import HostFS
from tests.fake_aws import PUBLIC_PASSWORD, AwsPeer

PLUGIN = Path(__file__).resolve().parent.parent / "nodeagent/ecr/plugin.py"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AwsPeer]:
    peer = AwsPeer().start()
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", peer.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SENTINEL-aws-secret-key")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield peer
    peer.stop()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _manager(host_root: Path, clock: Clock | None = None, **kwargs: object) -> TokenManager:
    return TokenManager(
        source=BotocoreTokens(),
        hostfs=HostFS(host_root),
        state_dir="/var/lib/nodeagent",
        keys=["us-east-1"],
        clock=clock or time.time,
        **kwargs,  # type: ignore[arg-type]
    )


def test_fetch_writes_private_cache(aws: AwsPeer, host_root: Path) -> None:
    """A fetched token lands in the plugin's cache, 0600 in a 0700 state dir, with its expiry."""
    token = _manager(host_root).get("us-east-1")
    user, _, password = base64.b64decode(token.token).decode().partition(":")
    assert "AWS" == user and password
    cache = host_root / "var/lib/nodeagent/ecr-tokens.json"
    assert 0o600 == stat.S_IMODE(cache.stat().st_mode)
    assert 0o700 == stat.S_IMODE(cache.parent.stat().st_mode)
    body = json.loads(cache.read_text())
    assert token.token == body["tokens"]["us-east-1"]["token"]
    assert 11 * 3600 < body["tokens"]["us-east-1"]["expiresAt"] - time.time() <= 12 * 3600


def test_public_ecr(aws: AwsPeer, host_root: Path) -> None:
    """ECR Public tokens come from its own API (us-east-1)."""
    token = _manager(host_root).get("public")
    assert f"AWS:{PUBLIC_PASSWORD}" == base64.b64decode(token.token).decode()
    assert 1 == aws.calls["GetAuthorizationToken"]


def test_refresh_at_half_life(aws: AwsPeer, host_root: Path) -> None:
    """A token is reused until half its life has passed, then refreshed."""
    clock = Clock()
    manager = _manager(host_root, clock)
    manager.refresh_due()
    assert 1 == aws.calls["GetAuthorizationToken"]
    clock.now += 5 * 3600
    manager.refresh_due()
    assert 1 == aws.calls["GetAuthorizationToken"]
    clock.now += 1.5 * 3600
    manager.refresh_due()
    assert 2 == aws.calls["GetAuthorizationToken"]


def test_expired_token_does_not_cause_a_storm(aws: AwsPeer, host_root: Path) -> None:
    """moto's 2015 expiry (as a node with a skewed clock sees it): no refetch within the floor."""
    aws.raw_expiry = True
    clock = Clock()
    manager = _manager(host_root, clock, min_refresh=60.0)
    manager.get("us-east-1")
    for _ in range(20):
        manager.get("us-east-1")
        manager.refresh_due()
    assert 1 == aws.calls["GetAuthorizationToken"]
    clock.now += 61
    manager.refresh_due()
    assert 2 == aws.calls["GetAuthorizationToken"]


def test_throttling_retried_with_backoff(aws: AwsPeer, host_root: Path) -> None:
    """A throttled fetch is reported by its error code and retried later, not at once."""
    aws.throttle = 10
    clock = Clock()
    manager = _manager(host_root, clock)
    with pytest.raises(TokenError) as info:
        manager.get("us-east-1")
    assert "ThrottlingException" in str(info.value)
    calls = aws.calls["GetAuthorizationToken"]
    manager.refresh_due()
    assert calls == aws.calls["GetAuthorizationToken"]  # not retried before its backoff
    aws.throttle = 0
    clock.now += 301
    manager.refresh_due()
    assert manager.token("us-east-1") is not None


def test_no_credentials_reported_without_secrets(
    aws: AwsPeer, host_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing AWS credentials give a clear error naming the problem, not a secret."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(TokenError) as info:
        _manager(host_root).get("us-east-1")
    assert "NoCredentialsError" in str(info.value)


def test_web_identity_role_assumption(
    aws: AwsPeer, host_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With IRSA-style web identity (no static keys), botocore assumes the role through STS first."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    token_file = tmp_path / "web-identity-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bm9kZWFnZW50In0.sig")
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/nodeagent")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    _manager(host_root).get("us-east-1")
    assert 1 == aws.calls["AssumeRoleWithWebIdentity"]


def test_plugin_miss_through_the_socket(aws: AwsPeer, host_root: Path) -> None:
    """End to end: the plugin (a process) misses its cache, asks the agent's socket, the agent asks AWS."""
    manager = _manager(host_root)
    server = EcrSocketServer(hostfs=HostFS(host_root), socket_path="/run/nodeagent/agent.sock", manager=manager)
    server.start()
    try:
        sock = host_root / "run/nodeagent/agent.sock"
        assert 0o600 == stat.S_IMODE(sock.stat().st_mode)
        request = {
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderRequest",
            "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1",
        }
        env = {"PATH": os.environ["PATH"]}
        args = ["--state-dir", str(host_root / "var/lib/nodeagent"), "--socket", str(sock)]
        result = subprocess.run(
            [sys.executable, str(PLUGIN), *args],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert 0 == result.returncode, result.stderr
        assert "eu-west-1" in manager.keys  # a region seen once is kept warm
        cached = json.loads((host_root / "var/lib/nodeagent/ecr-tokens.json").read_text())
        assert "eu-west-1" in cached["tokens"]
    finally:
        server.stop()
    assert not (host_root / "run/nodeagent/agent.sock").exists()


@pytest.mark.parametrize("region", ["cn-north-1", "us-gov-west-1", "eu-west-1"])
def test_other_partitions(aws: AwsPeer, host_root: Path, region: str) -> None:
    """China and GovCloud regions (and FIPS hosts, which use their region's token) fetch like any other."""
    token = _manager(host_root).get(region)
    assert base64.b64decode(token.token).decode().startswith("AWS:")


def test_symlink_at_token_cache_refused(aws: AwsPeer, host_root: Path, tmp_path: Path) -> None:
    """A symlink planted at the token cache is refused: no token is written through it."""
    outside = tmp_path / "outside"
    outside.write_text("precious")
    (host_root / "var/lib/nodeagent").mkdir(parents=True, mode=0o700)
    (host_root / "var/lib/nodeagent/ecr-tokens.json").symlink_to(outside)
    from nodeagent.errors import SymlinkRefused

    with pytest.raises(SymlinkRefused):
        _manager(host_root).get("us-east-1")
    assert "precious" == outside.read_text()


class _CountingSource:
    """A token source that hands out 12-hour tokens and counts fetches per key."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.fetched = clock, []

    def fetch(self, key: str) -> tuple[str, float]:
        self.fetched.append(key)
        return base64.b64encode(b"AWS:SENTINEL-token").decode(), self.clock() + 12 * 3600


def test_asked_regions_are_bounded_and_dropped_when_idle(host_root: Path) -> None:
    """Regions the plugin asks for are capped, and one nobody asked for in a day stops being
    refreshed (and leaves the cache); configured regions stay warm."""
    from nodeagent.ecr.tokens import IDLE_KEY_TTL, MAX_ASKED_KEYS

    clock = Clock()
    source = _CountingSource(clock)
    manager = TokenManager(source=source, hostfs=HostFS(host_root), state_dir="/s", keys=["us-east-1"], clock=clock)
    asked = [f"xx-test-{i}" for i in range(MAX_ASKED_KEYS)]
    for key in asked:
        manager.get(key)
    with pytest.raises(TokenError):
        manager.get("xx-test-999")
    clock.now += IDLE_KEY_TTL + 1
    manager.get(asked[0])  # still asked for
    manager.refresh_due()
    cache = json.loads((host_root / "s/ecr-tokens.json").read_text())["tokens"]
    assert ({"us-east-1", asked[0]}, {"us-east-1", asked[0]}) == (manager.keys, set(cache))


def test_socket_answers_a_hostile_request_with_an_error(host_root: Path, tmp_path: Path) -> None:
    """Deeply nested, NaN or non-object requests on the socket get {"error": ...}; the server stays up."""
    import socket as socketlib

    clock = Clock()
    manager = TokenManager(
        source=_CountingSource(clock), hostfs=HostFS(host_root), state_dir="/s", keys=[], clock=clock
    )
    server = EcrSocketServer(hostfs=HostFS(host_root), socket_path="/run/nodeagent/agent.sock", manager=manager)
    server.start()
    answers = []
    try:
        for line in [b"[" * 3000 + b"\n", b'{"key": NaN}\n', b"[1]\n", b'{"key": "us-east-1"}\n']:
            with socketlib.socket(socketlib.AF_UNIX) as conn:
                conn.connect(server.real_path)
                conn.sendall(line)
                answers.append(json.loads(conn.makefile("rb").readline()))
    finally:
        server.stop()
    assert [True, True, True, False] == ["error" in a for a in answers]


def test_refresher_outlives_an_unexpected_failure(host_root: Path) -> None:
    """A refresh that fails with something other than a TokenError (a failed cache write, a bug)
    is logged and retried later; the refresher thread keeps running."""
    import threading

    class Broken:
        def fetch(self, key: str) -> tuple[str, float]:
            raise RuntimeError("not a TokenError")

    manager = TokenManager(source=Broken(), hostfs=HostFS(host_root), state_dir="/s", keys=["us-east-1"])
    stop = threading.Event()
    thread = threading.Thread(target=manager.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(timeout=1.0)
    alive = thread.is_alive()
    stop.set()
    manager._wake.set()
    thread.join(timeout=10)
    assert (True, False) == (alive, thread.is_alive())
