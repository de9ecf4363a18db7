"""Logs are structured, and the redaction processor masks secrets even if code leaks one by mistake."""

from __future__ import annotations

import io
import json

from nodeagent.observe.logging import MASK, Redactor, configure_logging, get_logger


def test_known_secret_fields_masked() -> None:
    """Fields named like secrets are masked whatever their value, including nested ones."""
    redactor = Redactor()
    event = redactor(None, "info", {"event": "x", "password": "pw", "entry": {"auth": "a", "user": "u"}})
    assert {"event": "x", "password": MASK, "entry": {"auth": MASK, "user": "u"}} == event


def test_registered_values_masked_anywhere() -> None:
    """A registered secret is masked inside any string, list or exception text."""
    redactor = Redactor()
    redactor.add(["SENTINEL-value", "ab"])
    event = redactor(None, "info", {"event": "oops SENTINEL-value", "items": ["x SENTINEL-value y"], "n": 1})
    assert {"event": f"oops {MASK}", "items": [f"x {MASK} y"], "n": 1} == event
    assert "ab" == redactor.mask("ab")  # too short to mask without destroying ordinary words


def test_json_lines_and_traceback_redacted() -> None:
    """The configured pipeline writes JSON lines and redacts a secret inside a traceback."""
    stream = io.StringIO()
    redactor = configure_logging(fmt="json", stream=stream)
    redactor.add(["SENTINEL-in-traceback"])
    log = get_logger(command="test")
    try:
        raise RuntimeError("failed with SENTINEL-in-traceback")
    except RuntimeError:
        log.exception("boom", registry="r.example.com")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert ("boom", "r.example.com", "test") == (line["event"], line["registry"], line["command"])
    assert "SENTINEL-in-traceback" not in stream.getvalue()
    assert "RuntimeError" in line["exception"]
