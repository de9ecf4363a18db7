"""Node Events are deduplicated and rate-limited."""

from __future__ import annotations

from typing import Any

from nodeagent.observe.events import EventRecorder


class RecordingAPI:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)


def test_dedupe_and_rate_limit() -> None:
    """A repeated event is sent once per window; a burst is capped."""
    now = [0.0]
    api = RecordingAPI()
    recorder = EventRecorder(api=api, node_name="n", dedupe_window=300, burst=3, per=60, clock=lambda: now[0])  # type: ignore[arg-type]
    assert [True, False] == [recorder.emit("R", "same"), recorder.emit("R", "same")]
    assert [True, True, False] == [recorder.emit("R", f"m{i}") for i in range(3)]
    now[0] = 61
    assert True is recorder.emit("R", "later")
    now[0] = 400
    assert True is recorder.emit("R", "same")
    assert {"Node"} == {e["involvedObject"]["kind"] for e in api.events}
    assert 5 == len(api.events)
