"""structlog set-up: JSON lines by default, console output on a TTY, and redaction.

Redaction is defence in depth. Code never passes secrets to the logger, but a processor still
masks (1) the value of any field whose name is a known secret field, and (2) any occurrence of a
secret value the agent has loaded, in any string of the event, including rendered tracebacks.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

__all__ = ["MASK", "Redactor", "configure_logging", "get_logger"]

MASK = "***"
SECRET_FIELD_NAMES = frozenset(
    {"password", "auth", "identitytoken", "registrytoken", "token", "secret", "authorization"}
)
# Shorter values would mask innocent substrings (and are too weak to be worth hiding by match).
_MIN_SECRET_LEN = 4


class Redactor:
    """A structlog processor that masks known secret fields and every registered secret value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()

    def add(self, values: Iterable[str]) -> None:
        """Register secret values (passwords, auth strings, tokens) to mask wherever they appear."""
        fresh = {v for v in values if len(v) >= _MIN_SECRET_LEN}
        if fresh - self._values:
            with self._lock:
                self._values = self._values | fresh

    def mask(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: MASK if str(k).lower() in SECRET_FIELD_NAMES else self._clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._clean(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.mask(str(value))

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            if key.lower() in SECRET_FIELD_NAMES:
                event[key] = MASK
            else:
                event[key] = self._clean(event[key])
        return event


REDACTOR = Redactor()


def configure_logging(
    *,
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> Redactor:
    """Configure structlog once for the process; return the redactor to register secrets with."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _route_uncaught_exceptions()
    return REDACTOR


def _route_uncaught_exceptions() -> None:
    """Send tracebacks of uncaught exceptions (any thread) through the redacting logger."""
    log = structlog.get_logger()

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        log.error("thread_crashed", thread=getattr(args.thread, "name", "?"), exc_info=exc_info)

    threading.excepthook = thread_hook


def get_logger(**initial: Any) -> Any:
    """A bound structlog logger; every call names an event, e.g. ``log.info("sync_done", ...)``."""
    return structlog.get_logger(**initial)
