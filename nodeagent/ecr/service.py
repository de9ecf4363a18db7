"""The agent's ECR side: the token manager, the socket the host plugin asks, and, for
``--ecr-registries``, the tokens as config.json entries (a source like any other)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

from nodeagent.config import ProviderSettings, field_default
from nodeagent.ecr.plugin import parse_ecr_host
from nodeagent.ecr.tokens import EcrSocketServer, StaticKeys, TokenManager
from nodeagent.host.hostfs import HostFS
from nodeagent.kube import KubeAPI, KubeError
from nodeagent.model.credentials import EntryProblem, ParseResult, RegistryCredential
from nodeagent.observe.metrics import Metrics

__all__ = ["DEFAULT_SOCKET", "ECR_SOURCE", "EcrService"]

ECR_SOURCE = "ecr"
"""The source name of ECR tokens written into config.json for ``--ecr-registries``."""
DEFAULT_SOCKET = field_default(ProviderSettings, "socket")


class EcrService:
    def __init__(
        self,
        *,
        host_root: str,
        state_dir: str,
        socket_path: str | None,
        regions: tuple[str, ...],
        registries: tuple[str, ...],
        credentials_secret: str | None,
        api: KubeAPI | None,
        metrics: Metrics,
        log: Any,
        redact: Callable[[list[str]], None],
        on_token: Callable[[], None],
    ) -> None:
        self.host_root, self.state_dir = host_root, state_dir
        self.socket_path = socket_path or DEFAULT_SOCKET
        self.regions, self.registries, self.credentials_secret = regions, registries, credentials_secret
        self.api, self.metrics, self.log, self.redact, self._on_token = api, metrics, log, redact, on_token
        self.tokens: TokenManager | None = None
        self.refresher: threading.Thread | None = None

    def start(self, stop: threading.Event) -> EcrSocketServer:
        """Start the token refresher and the socket; the caller stops the returned server."""
        from nodeagent.ecr.tokens import BotocoreTokens

        keys = list(self.regions)
        for host in self.registries:
            key = parse_ecr_host(host)
            if key is not None:
                keys.append(key)
        self.tokens = TokenManager(
            source=BotocoreTokens(static_credentials=self.static_keys if self.credentials_secret else None),
            hostfs=HostFS(self.host_root),
            state_dir=self.state_dir,
            keys=keys,
            on_refresh=lambda key: self._on_token() if self.registries else None,
            metrics=self.metrics,
            redact=self.redact,
        )
        server = EcrSocketServer(hostfs=HostFS(self.host_root), socket_path=self.socket_path, manager=self.tokens)
        server.start()
        self.refresher = threading.Thread(target=self.tokens.run, args=(stop,), daemon=True, name="ecr-tokens")
        self.refresher.start()
        self.log.info("ecr_started", keys=sorted(set(keys)), socket=self.socket_path)
        return server

    def static_keys(self) -> StaticKeys | None:
        """Static AWS keys (and an optional ``role_arn``) from ``--ecr-credentials-secret``,
        read each time a token is fetched, so a rotated Secret is used on the next refresh."""
        if self.api is None or not self.credentials_secret:
            return None
        namespace, name = self.credentials_secret.split("/", 1)
        try:
            secret, _ = self.api.list_secret(namespace, name)
        except KubeError as exc:
            self.log.error("ecr_credentials_unreadable", error=str(exc))
            return None
        data = (secret or {}).get("data") or {}
        try:
            fields = {k: base64.b64decode(v).decode() for k, v in data.items() if isinstance(v, str)}
            keys = StaticKeys(
                fields["aws_access_key_id"], fields["aws_secret_access_key"], fields.get("role_arn") or None
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            self.log.error(
                "ecr_credentials_invalid",
                secret=self.credentials_secret,
                hint="the Secret needs aws_access_key_id and aws_secret_access_key (and may have role_arn)",
            )
            return None
        self.redact([keys.secret_access_key])
        return keys

    def source(self) -> ParseResult | None:
        """Tokens for ``--ecr-registries`` as config.json entries (a registry without one is held)."""
        if not self.registries or self.tokens is None:
            return None
        credentials, rejected = [], []
        for host in self.registries:
            key = parse_ecr_host(host)
            token = self.tokens.token(key) if key else None
            if token is None or token.expires_at <= time.time():
                rejected.append(
                    EntryProblem(key=host, registry=host, reason="no valid ECR token yet", source=ECR_SOURCE)
                )
            else:
                credentials.append(RegistryCredential(key=host, registry=host, source=ECR_SOURCE, auth=token.token))
        return ParseResult(ECR_SOURCE, tuple(credentials), tuple(rejected))
