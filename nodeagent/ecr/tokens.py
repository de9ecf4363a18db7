"""Agent side of ECR: fetch authorization tokens with botocore, keep them fresh, cache them on the
node for the plugin, and answer the plugin over a Unix socket on a cache miss.

Tokens are fetched per cache key: an AWS region for private ECR (one ``GetAuthorizationToken``
without registry ids is valid for every registry the principal can reach in that region), or
``public`` for ECR Public (its API is in us-east-1). Each token is refreshed at half its
lifetime, never sooner than ``min_refresh`` after the last fetch: a token that is already
expired when it arrives (a skewed clock, or moto's fixed 2015 expiry) must not cause a storm.
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodeagent.ecr.plugin import CACHE_FILE, MIN_REMAINING, PUBLIC_KEY, is_cache_key, loads_strict
from nodeagent.errors import NodeagentError
from nodeagent.host.hostfs import HostFS
from nodeagent.observe.logging import get_logger
from nodeagent.sources import Backoff

__all__ = [
    "BotocoreTokens",
    "EcrSocketServer",
    "StaticKeys",
    "Token",
    "TokenError",
    "TokenManager",
    "TokenSource",
    "valid_key",
]

IDLE_KEY_TTL = 24 * 3600.0
"""A region the plugin asked for is kept warm until nobody asked for it for a day (regions given
with --ecr-regions always are): a node that pulled from a region once does not fetch it forever."""

MAX_ASKED_KEYS = 32
"""At most this many regions asked for by the plugin are served (AWS has about 35 regions): a
flood of region-shaped keys on the socket cannot make the agent fetch and refresh without end."""


class TokenError(NodeagentError):
    """A token could not be fetched; the reason names the AWS error code, never a credential."""


def valid_key(key: str) -> bool:
    """A cache key is ``public`` or an AWS region name: the plugin's own rule, so a host the plugin
    matches is never a region the agent refuses."""
    return is_cache_key(key)


@dataclass(frozen=True)
class Token:
    token: str  # base64 of "AWS:<password>", as ECR returns it
    expires_at: float
    fetched_at: float

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at}, fetched_at={self.fetched_at})"


@dataclass(frozen=True)
class StaticKeys:
    """Keys from ``--ecr-credentials-secret``, and an optional role to assume with them."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    role_arn: str | None = None


class TokenSource(Protocol):
    def fetch(self, key: str) -> tuple[str, float]:
        """(authorizationToken, expiresAt as Unix time) for a region or ``public``."""


class BotocoreTokens:
    """:class:`TokenSource` on botocore, with its normal credential chain (web identity, pod
    identity, instance profile, environment) unless static keys are given."""

    def __init__(
        self,
        *,
        static_credentials: Callable[[], StaticKeys | None] | None = None,
    ) -> None:
        import botocore.session  # the agent's AWS edge: imported only here

        self._session_factory = botocore.session.get_session
        self._static = static_credentials
        self._lock = threading.Lock()

    def _client(self, service: str, region: str) -> Any:
        session = self._session_factory()
        keys = self._static() if self._static is not None else None
        if keys is not None:
            session.set_credentials(keys.access_key_id, keys.secret_access_key)
            if keys.role_arn:
                sts = session.create_client("sts", region_name=region)
                assumed = sts.assume_role(RoleArn=keys.role_arn, RoleSessionName="nodeagent-ecr")["Credentials"]
                session = self._session_factory()
                session.set_credentials(assumed["AccessKeyId"], assumed["SecretAccessKey"], assumed["SessionToken"])
        return session.create_client(service, region_name=region)

    def fetch(self, key: str) -> tuple[str, float]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if key == PUBLIC_KEY:
                data = self._client("ecr-public", "us-east-1").get_authorization_token()["authorizationData"]
            else:
                data = self._client("ecr", key).get_authorization_token()["authorizationData"][0]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise TokenError(f"ECR {key}: {code}") from None
        except BotoCoreError as exc:
            raise TokenError(f"ECR {key}: {type(exc).__name__}") from None
        except (KeyError, IndexError):
            raise TokenError(f"ECR {key}: answer without authorizationData") from None
        expires = data["expiresAt"]
        return str(data["authorizationToken"]), float(expires.timestamp() if hasattr(expires, "timestamp") else expires)


class TokenManager:
    """Keeps one fresh token per key, writes the plugin's cache, and refreshes in the background."""

    def __init__(
        self,
        *,
        source: TokenSource,
        hostfs: HostFS,
        state_dir: str,
        keys: list[str],
        clock: Callable[[], float] = time.time,
        min_refresh: float = 60.0,
        on_refresh: Callable[[str], None] | None = None,
        metrics: Any = None,
        redact: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.source, self.hostfs, self.clock = source, hostfs, clock
        self.cache_path = state_dir.rstrip("/") + "/" + CACHE_FILE
        self.state_dir = state_dir
        self.min_refresh = min_refresh
        self._keys = set(keys)
        self._configured = frozenset(keys)
        self._asked: dict[str, float] = {}
        self._tokens: dict[str, Token] = {}
        self._failures: dict[str, Backoff] = {}
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._on_refresh = on_refresh
        self._metrics = metrics
        self._redact = redact
        self._wake = threading.Event()
        self.log = get_logger(component="ecr")

    @property
    def keys(self) -> set[str]:
        with self._lock:
            return set(self._keys)

    def token(self, key: str) -> Token | None:
        with self._lock:
            return self._tokens.get(key)

    def get(self, key: str) -> Token:
        """A token with more than 15 minutes left, fetching one if needed (the plugin's miss path)."""
        with self._lock:
            if key not in self._keys and len(self._keys - self._configured) >= MAX_ASKED_KEYS:
                raise TokenError(f"more than {MAX_ASKED_KEYS} regions asked for; not fetching {key!r}")
            self._keys.add(key)  # kept warm while the plugin keeps asking (IDLE_KEY_TTL)
            self._asked[key] = self.clock()
            current = self._tokens.get(key)
            lock = self._key_locks.setdefault(key, threading.Lock())
        now = self.clock()
        if current is not None and current.expires_at - now > MIN_REMAINING:
            return current
        with lock:
            with self._lock:
                current = self._tokens.get(key)
            if current is not None and (
                current.expires_at - now > MIN_REMAINING or now - current.fetched_at < self.min_refresh
            ):
                return current  # fresh, or fetched so recently that fetching again would be a storm
            return self._fetch(key)

    def _fetch(self, key: str) -> Token:
        try:
            raw, expires = self.source.fetch(key)
        except TokenError as exc:
            if self._metrics is not None:
                self._metrics.ecr_failures.labels(key).inc()
            backoff = self._failures.setdefault(key, Backoff(base=5.0, cap=300.0))
            delay = backoff.next()
            self._retry_at[key] = self.clock() + delay
            self.log.warning("ecr_token_failed", key=key, error=str(exc), retry_in_s=round(delay, 1))
            raise
        if self._redact is not None:
            self._redact([raw])
        now = self.clock()
        token = Token(raw, expires, now)
        self._failures.pop(key, None)
        self._retry_at.pop(key, None)
        with self._lock:
            self._tokens[key] = token
        if expires - now < MIN_REMAINING:
            self.log.warning(
                "ecr_token_nearly_expired",
                key=key,
                seconds_left=round(expires - now),
                hint="check the node's clock; the token is refreshed again no sooner than "
                f"{self.min_refresh:g}s from now",
            )
        if self._metrics is not None:
            self._metrics.ecr_fetched.labels(key).inc()
            self._metrics.ecr_expiry.labels(key).set(expires - now)
        self._write_cache()
        self.log.info("ecr_token_fetched", key=key, expires_in_s=round(expires - now))
        if self._on_refresh is not None:
            self._on_refresh(key)
        return token

    def _write_cache(self) -> None:
        with self._lock:
            body = {
                "version": 1,
                "tokens": {k: {"token": t.token, "expiresAt": t.expires_at} for k, t in sorted(self._tokens.items())},
            }
        self.hostfs.ensure_dir(self.state_dir, mode=0o700, private=True)
        self.hostfs.write(self.cache_path, (json.dumps(body, indent=1) + "\n").encode(), mode=0o600)

    def due(self, key: str) -> float:
        """When the key's token should be refreshed (Unix time)."""
        with self._lock:
            token = self._tokens.get(key)
        if key in self._retry_at:
            return self._retry_at[key]
        if token is None:
            return 0.0
        half = (token.expires_at - token.fetched_at) / 2
        return token.fetched_at + max(self.min_refresh, half)

    def _forget_idle(self, now: float) -> None:
        with self._lock:
            idle = {k for k in self._keys - self._configured if now - self._asked.get(k, now) > IDLE_KEY_TTL}
            for key in idle:
                self._keys.discard(key)
                self._asked.pop(key, None)
                self._tokens.pop(key, None)
        if idle:
            self.log.info("ecr_keys_idle_dropped", keys=sorted(idle))
            self._write_cache()

    def refresh_due(self) -> float:
        """Refresh every key that is due; return seconds until the next one is due."""
        now = self.clock()
        self._forget_idle(now)
        for key in sorted(self.keys):
            if self.due(key) <= now:
                lock = self._key_locks.setdefault(key, threading.Lock())
                with lock, contextlib.suppress(TokenError):  # logged and retried with backoff
                    self._fetch(key)
        now = self.clock()
        upcoming = [self.due(k) - now for k in self.keys]
        return max(1.0, min(upcoming, default=300.0))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                wait = self.refresh_due()
            except Exception as exc:  # a failed cache write (HostFSError), a bug: never end the refresher
                self.log.error("ecr_refresh_crashed", error_type=type(exc).__name__, retry_in_s=30)
                wait = 30.0
            self._wake.wait(min(wait, 300.0))
            self._wake.clear()


class EcrSocketServer:
    """The Unix socket the plugin asks on a cache miss: one JSON line in, one JSON line out."""

    def __init__(self, *, hostfs: HostFS, socket_path: str, manager: TokenManager) -> None:
        self.manager = manager
        directory = os.path.dirname(socket_path)
        hostfs.ensure_dir(directory, mode=0o700, private=True)
        real = hostfs.real_path(socket_path)
        hostfs.remove_socket(socket_path)  # a stale socket from an earlier agent
        self._hostfs, self._socket_path = hostfs, socket_path
        log = get_logger(component="ecr-socket")

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    self._answer()
                except Exception as exc:
                    log.error("ecr_socket_request_failed", error_type=type(exc).__name__)
                    with contextlib.suppress(OSError):
                        self.wfile.write(b'{"error": "internal error"}\n')

            def _answer(self) -> None:
                line = self.rfile.readline(4096)
                try:
                    request = loads_strict(line)
                    key = request.get("key") if isinstance(request, dict) else None
                    if not isinstance(key, str) or not valid_key(key):
                        raise ValueError("bad key")
                except ValueError:
                    self.wfile.write(b'{"error": "bad request"}\n')
                    return
                try:
                    token = manager.get(key)
                    answer = {"token": token.token, "expiresAt": token.expires_at}
                except TokenError as exc:
                    answer = {"error": str(exc)}
                log.debug("ecr_socket_request", key=key, ok="token" in answer)
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        class Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True

        old_umask = os.umask(0o177)  # the socket is created 0600: only root (the kubelet) may ask
        try:
            self._server = Server(real, Handler)
        finally:
            os.umask(old_umask)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="ecr-socket")
        self.real_path = real

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(NodeagentError):
            self._hostfs.remove_socket(self._socket_path)
