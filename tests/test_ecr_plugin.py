"""The ECR credential-provider plugin, run as the kubelet runs it: a process, a request on stdin."""

from __future__ import annotations

import base64
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.ecr.plugin import go_duration, parse_ecr_host

PLUGIN = Path(__file__).resolve().parent.parent / "nodeagent/ecr/plugin.py"
API_VERSIONS = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
]
HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
PASSWORD = "SENTINEL-ecr-password-1"
TOKEN = base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()


def _run(request: object, state: Path, sock: Path, *, raw: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "NODEAGENT_STATE_DIR": str(state), "NODEAGENT_SOCKET": str(sock)}
    return subprocess.run(
        [sys.executable, str(PLUGIN)],
        input=raw if raw is not None else json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _request(image: str = f"{HOST}/team/app:1.0", api: str = API_VERSIONS[0]) -> dict[str, str]:
    return {"apiVersion": api, "kind": "CredentialProviderRequest", "image": image}


def _cache(state: Path, key: str, expires_in: float, token: str = TOKEN) -> None:
    state.mkdir(parents=True, exist_ok=True)
    body = {"version": 1, "tokens": {key: {"token": token, "expiresAt": time.time() + expires_in}}}
    (state / "ecr-tokens.json").write_text(json.dumps(body))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A stand-in agent socket that answers with a fresh token and records the keys asked for."""
    path = tmp_path / "agent.sock"
    asked: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            asked.append(json.loads(self.rfile.readline())["key"])
            self.wfile.write(json.dumps({"token": TOKEN, "expiresAt": time.time() + 12 * 3600}).encode() + b"\n")

    server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, asked
    server.shutdown()
    server.server_close()


def _seconds(duration: str) -> int:
    total, number = 0, ""
    for ch in duration:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    return total


@pytest.mark.parametrize("api", API_VERSIONS)
def test_cache_hit_answers_in_the_same_api_version(api: str, state: Path, tmp_path: Path) -> None:
    """A fresh cached token is answered in the request's apiVersion, keyed by the image's host."""
    _cache(state, "us-east-1", 6 * 3600)
    result = _run(_request(api=api), state, tmp_path / "none.sock")
    assert (0, "") == (result.returncode, result.stderr)
    response = json.loads(result.stdout)
    assert api == response["apiVersion"]
    assert ("CredentialProviderResponse", "Registry") == (response["kind"], response["cacheKeyType"])
    assert {HOST: {"username": "AWS", "password": PASSWORD}} == response["auth"]
    assert 3 * 3600 - 60 <= _seconds(response["cacheDuration"]) <= 3 * 3600


def test_cache_miss_asks_the_agent(state: Path, agent_socket: tuple[Path, list[str]]) -> None:
    """Without a usable cached token the plugin asks the agent over its socket."""
    sock, asked = agent_socket
    _cache(state, "us-east-1", 10 * 60)  # less than 15 minutes left: not handed out
    result = _run(_request(), state, sock)
    assert 0 == result.returncode, result.stderr
    assert ["us-east-1"] == asked
    assert PASSWORD == json.loads(result.stdout)["auth"][HOST]["password"]


def test_agent_down_fails_clearly(state: Path, tmp_path: Path) -> None:
    """With no cache and no agent, exit 1 with one line naming the socket, and nothing on stdout."""
    result = _run(_request(), state, tmp_path / "missing.sock")
    assert (1, "") == (result.returncode, result.stdout)
    assert 1 == len(result.stderr.strip().splitlines())
    assert "missing.sock" in result.stderr


@pytest.mark.parametrize(
    ("raw", "request_body"),
    [
        ("not json", None),
        (
            None,
            {
                "apiVersion": "credentialprovider.kubelet.k8s.io/v2",
                "kind": "CredentialProviderRequest",
                "image": f"{HOST}/a",
            },
        ),
        (None, {"apiVersion": API_VERSIONS[0], "kind": "Something", "image": f"{HOST}/a"}),
        (None, {"apiVersion": API_VERSIONS[0], "kind": "CredentialProviderRequest"}),
        (None, _request(image="docker.io/library/nginx")),
        (None, _request(image="nginx")),
    ],
)
def test_bad_requests_rejected(raw: str | None, request_body: object, state: Path, tmp_path: Path) -> None:
    """Malformed JSON, a wrong apiVersion or kind, no image, or a non-ECR image: exit 1, stdout empty."""
    _cache(state, "us-east-1", 6 * 3600)
    result = _run(request_body, state, tmp_path / "none.sock", raw=raw)
    assert (1, "") == (result.returncode, result.stdout)
    assert 1 == len(result.stderr.strip().splitlines())


def test_no_secret_on_stderr(state: Path, tmp_path: Path) -> None:
    """Even a corrupt cache or a failure never puts the token or password on stderr."""
    _cache(state, "us-east-1", 6 * 3600, token=base64.b64encode(PASSWORD.encode()).decode())  # no ':'
    result = _run(_request(), state, tmp_path / "none.sock")
    assert 1 == result.returncode
    assert PASSWORD not in result.stderr and "SENTINEL" not in result.stderr


def test_symlinked_cache_not_followed(state: Path, tmp_path: Path, agent_socket: tuple[Path, list[str]]) -> None:
    """A symlink planted at the cache is not read (a miss): the agent is asked instead."""
    other = tmp_path / "other"
    _cache(other, "us-east-1", 6 * 3600, token=base64.b64encode(b"AWS:planted").decode())
    state.mkdir()
    (state / "ecr-tokens.json").symlink_to(other / "ecr-tokens.json")
    sock, asked = agent_socket
    result = _run(_request(), state, sock)
    assert 0 == result.returncode
    assert ["us-east-1"] == asked
    assert PASSWORD == json.loads(result.stdout)["auth"][HOST]["password"]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "us-east-1"),
        ("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu", "eusc-de-east-1"),
        ("123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov", "us-iso-east-1"),
        ("123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov", "us-isob-east-1"),
        ("123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk", "eu-isoe-west-1"),
        ("123456789012.dkr.ecr.us-isof-south-1.csp.hci.ic.gov", "us-isof-south-1"),
        ("123456789012.dkr-ecr.us-east-1.on.aws", "us-east-1"),
        ("123456789012.dkr-ecr.cn-north-1.on.amazonwebservices.com.cn", "cn-north-1"),
        ("public.ecr.aws", "public"),
        ("ecr-public.aws.com", "public"),
        ("12345678901.dkr.ecr.us-east-1.amazonaws.com", None),
        ("1234567890123.dkr.ecr.us-east-1.amazonaws.com", None),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.hacker.com", None),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.com", None),
        ("123456789012.dkr.ecrx.us-east-1.amazonaws.com", None),
        ("evil.public.ecr.aws", None),
        ("registry.example.com", None),
    ],
)
def test_host_recognition(host: str, key: str | None) -> None:
    """Every ECR host form the reference provider knows is recognised with its region; look-alikes are not."""
    assert key == parse_ecr_host(host)


@pytest.mark.parametrize(
    ("seconds", "text"), [(21600, "6h0m0s"), (3540, "59m0s"), (30, "30s"), (3661, "1h1m1s"), (-5, "0s")]
)
def test_go_duration(seconds: float, text: str) -> None:
    """Durations are formatted as Go's time.Duration.String."""
    assert text == go_duration(seconds)


# -- hardening (issue 14, item 13) --------------------------------------------------------------------
def test_socket_limit_is_for_the_whole_answer(tmp_path: Path) -> None:
    """An agent socket that trickles a valid answer a byte at a time past the limit is a timeout:
    the limit covers the whole exchange, not each recv."""
    from nodeagent.ecr import plugin

    answer = json.dumps({"token": TOKEN, "expiresAt": time.time() + 3600}).encode() + b"\n"
    path = tmp_path / "slow.sock"

    class Slow(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            for byte in answer:
                self.wfile.write(bytes([byte]))
                time.sleep(0.02)

    server = socketserver.ThreadingUnixStreamServer(str(path), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(plugin.PluginError):
            plugin._ask_agent(str(path), "us-east-1", timeout=0.5)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "raw", ["[" * 100_000, '{"apiVersion": NaN}', '{"a": 1' + "1" * 5000 + "}", '{"image": "x\\ud800"}']
)
def test_hostile_stdin_is_one_line_on_stderr(raw: str, state: Path, tmp_path: Path) -> None:
    """Deep nesting, NaN, huge numbers or a lone surrogate on stdin: exit 1, one line, no traceback."""
    result = _run(None, state, tmp_path / "none.sock", raw=raw)
    assert (1, "", 1) == (result.returncode, result.stdout, len(result.stderr.strip().splitlines()))


@pytest.mark.parametrize("expires", ["NaN", "Infinity", "1e999", "[" * 5000 + "]" * 5000])
def test_hostile_cache_is_a_miss(expires: str, state: Path, agent_socket: tuple[Path, list[str]]) -> None:
    """A cache whose expiresAt is NaN/Infinity/out of range, or nested too deep, is a cache miss:
    the agent is asked, and the answer is good."""
    sock, asked = agent_socket
    state.mkdir(parents=True, exist_ok=True)
    (state / "ecr-tokens.json").write_text(
        '{"version": 1, "tokens": {"us-east-1": {"token": "' + TOKEN + '", "expiresAt": ' + expires + "}}}"
    )
    result = _run(_request(), state, sock)
    assert (0, ["us-east-1"]) == (result.returncode, asked)


def test_sovereign_cloud_host_is_one_rule_for_plugin_and_agent() -> None:
    """The AWS European Sovereign Cloud host maps to its region, and the agent accepts that region."""
    from nodeagent.ecr.tokens import valid_key

    key = parse_ecr_host("123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu")
    assert ("eusc-de-east-1", True) == (key, valid_key(key or ""))


def test_plugin_strict_json_agrees_with_the_agents() -> None:
    """The plugin's stdlib-only strict JSON reader refuses what nodeagent.model.decoding refuses."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nodeagent.ecr.plugin import loads_strict
    from nodeagent.model.decoding import DecodeError, loads_json

    pieces = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "1" * 450, '"\\ud800"', '"ok"', "1.5", "[", "]"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(pieces, min_size=1, max_size=4))
    def check(parts: list[str]) -> None:
        text = '{"k": [' + ", ".join(parts) + "]}"
        try:
            loads_json(text)
            agent_ok = True
        except DecodeError:
            agent_ok = False
        try:
            loads_strict(text)
            plugin_ok = True
        except ValueError:
            plugin_ok = False
        assert agent_ok == plugin_ok

    check()
