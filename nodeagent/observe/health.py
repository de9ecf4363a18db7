"""The agent's HTTP endpoint: ``/healthz`` (loop alive), ``/readyz`` (synced and watching), ``/metrics``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HealthServer"]


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        alive: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok = alive()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"reconcile loop stalled\n")
                elif path == "/readyz":
                    ok, why = ready()
                    self._send(200 if ok else 503, (why + "\n").encode())
                elif path == "/metrics":
                    self._send(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                else:
                    self._send(404, b"not found\n")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="http")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
