"""A real AWS API peer for the ECR tests: moto's server app (ECR, STS) behind a thin WSGI layer.

moto 5.x has two quirks the layer corrects, each noted where it acts:
* every ECR token moto issues expires on 2015-01-01; the layer rewrites ``expiresAt`` to a
  realistic ``now + lifetime`` (unless ``raw_expiry`` is set, to test the skewed-clock path);
* moto has no ECR Public backend; the layer answers ``SpencerFrontendService.GetAuthorizationToken``
  itself, in the shape of the real API (one ``authorizationData`` object, not a list).
It also injects throttling and counts calls per operation. Clients reach it through botocore's
standard ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

from moto.server import DomainDispatcherApplication, create_backend_app

PUBLIC_PASSWORD = "public-ecr-password"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class AwsPeer:
    def __init__(self, lifetime: float = 12 * 3600) -> None:
        self.lifetime = lifetime
        self.raw_expiry = False
        self.throttle = 0
        self.calls: Counter[str] = Counter()
        self.access_keys: Counter[str] = Counter()
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self, handler_class=_Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> AwsPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _json(self, start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> Iterable[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(data)))])
        return [data]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        operation = target.split(".")[-1] if target else parse_qs(body.decode()).get("Action", ["?"])[0]
        self.calls[operation] += 1
        credential = environ.get("HTTP_AUTHORIZATION", "").partition("Credential=")[2].split("/", 1)[0]
        if credential:
            self.access_keys[credential] += 1
        if operation == "GetAuthorizationToken" and self.throttle > 0:
            self.throttle -= 1
            return self._json(
                start_response, "400 Bad Request", {"__type": "ThrottlingException", "message": "Rate exceeded"}
            )
        if target.startswith("SpencerFrontendService."):  # no ECR Public backend in moto
            token = base64.b64encode(f"AWS:{PUBLIC_PASSWORD}".encode()).decode()
            data = {"authorizationToken": token, "expiresAt": time.time() + self.lifetime}
            return self._json(start_response, "200 OK", {"authorizationData": data})
        if target.endswith("ContainerRegistry_V20150921.GetAuthorizationToken") and not self.raw_expiry:
            captured: dict[str, Any] = {}

            def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
                captured["status"], captured["headers"] = status, headers
                return lambda _data: None

            answer = json.loads(b"".join(self._moto(environ, capture)))
            for item in answer.get("authorizationData", []):
                item["expiresAt"] = time.time() + self.lifetime  # moto says 2015-01-01
            return self._json(start_response, captured["status"], answer)
        result: Iterable[bytes] = self._moto(environ, start_response)
        return result
