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


def test_a_slow_api_never_delays_the_caller() -> None:
    """With a poster, emit returns while the API call is still blocked (on the poster's thread);
    the Event is delivered once the API answers, and a full queue drops rather than blocks."""
    import threading

    from nodeagent.observe.posting import Poster

    release, sent = threading.Event(), []

    class SlowAPI:
        def create_event(self, namespace: str, body: dict[str, object]) -> None:
            release.wait()
            sent.append(body["reason"])

    poster = Poster(size=2)
    poster.start()
    recorder = EventRecorder(api=SlowAPI(), node_name="n", poster=poster, burst=100)  # type: ignore[arg-type]
    caller = threading.Thread(target=lambda: [recorder.emit(f"R{i}", "m") for i in range(5)])
    caller.start()
    caller.join(timeout=30)  # a bound on a hang, not a timing assertion
    assert not caller.is_alive()
    assert poster.dropped >= 1  # one in flight, two queued, the rest dropped: never a blocked caller
    release.set()
    poster.stop(timeout=30)
    assert "R0" == sent[0] and len(sent) == 5 - poster.dropped
