"""Measure what one Secret change runs through, from the watch event to config.json on disk:
the agent in-process on an in-memory API (tests/test_agent_inprocess.py's), every nodeagent
function called in any thread from the event until the file holds the new content.

    .venv/bin/python scripts/trace-secret-path.py

Prints the files and functions called, and the deepest nodeagent stack. Run with PYTHONPATH set
to another checkout to measure that version (docs/architecture.md records both figures).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: another checkout's nodeagent wins when given

import nodeagent  # noqa: E402
from nodeagent.agent import Agent, RunSettings, SourceSpec  # noqa: E402
from nodeagent.config import SyncSettings  # noqa: E402
from nodeagent.observe.logging import Redactor  # noqa: E402

_spec = importlib.util.spec_from_file_location("inprocess", ROOT / "tests" / "test_agent_inprocess.py")
assert _spec is not None and _spec.loader is not None
_inprocess = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_inprocess)
MemoryAPI, _users, _wait_for = _inprocess.MemoryAPI, _inprocess._users, _inprocess._wait_for

PACKAGE = str(Path(nodeagent.__file__).resolve().parent)


def settings(host: Path) -> Any:
    specs = (SourceSpec("secret", "ns/pull"),)
    try:
        from nodeagent.config import ObserveSettings, SourcesSettings

        return RunSettings(
            sync=SyncSettings(host_root=str(host)), sources=SourcesSettings(specs),
            observe=ObserveSettings(listen_host="127.0.0.1", listen_port=0, events=False, annotations=False),
        )  # fmt: skip
    except ImportError:  # the version before the settings groups
        return RunSettings(
            sync=SyncSettings(host_root=str(host)), sources=specs, listen_host="127.0.0.1", listen_port=0,
            events=False, annotations=False,
        )  # fmt: skip


def main() -> None:
    host = Path(tempfile.mkdtemp()) / "host"
    host.mkdir()
    stop = threading.Event()
    api = MemoryAPI(stop)
    agent = Agent(settings(host), api=api, redactor=Redactor(), stop=stop)  # type: ignore[arg-type]
    calls: set[tuple[str, str]] = set()
    deepest = [0]
    recording = threading.Event()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or not recording.is_set() or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        calls.add((frame.f_code.co_filename[len(PACKAGE) + 1 :], frame.f_code.co_name))
        depth, f = 0, frame
        while f is not None:
            depth += f.f_code.co_filename.startswith(PACKAGE)
            f = f.f_back
        deepest[0] = max(deepest[0], depth)

    threading.setprofile(profile)  # every thread the agent starts is profiled; recording gates it
    thread = threading.Thread(target=agent.run)
    thread.start()
    config = host / "var/lib/kubelet/config.json"
    _wait_for(lambda: _users(config) == "u1")
    recording.set()
    api.put("u2")
    _wait_for(lambda: _users(config) == "u2")
    recording.clear()
    agent.shutdown()
    thread.join(timeout=30)
    shutil.rmtree(host.parent, ignore_errors=True)
    files = sorted({f for f, _ in calls})
    sys.stderr.write(
        json.dumps(
            {
                "files": len(files),
                "functions": len(calls),
                "deepest_stack": deepest[0],
                "by_file": {f: sorted(n for g, n in calls if g == f) for f in files},
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
