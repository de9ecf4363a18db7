"""Observability: structured logs with secret redaction."""

from nodeagent.observe.logging import Redactor, configure_logging, get_logger

__all__ = ["Redactor", "configure_logging", "get_logger"]
