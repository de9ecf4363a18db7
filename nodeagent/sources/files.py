"""A mounted Secret (or any file) as a source, watched with watchdog; needs no API permissions.

The kubelet updates a Secret volume atomically: it writes a new timestamped directory, points a
``..data_tmp`` symlink at it and renames that over ``..data``; the file the agent reads is a
symlink through ``..data``. So the agent watches the file's *directory* (not the file), treats
any change there as "maybe changed", waits for the burst to settle (debounce), re-reads the file
and reports only when its bytes really changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from nodeagent.errors import InputError
from nodeagent.model.credentials import MAX_INPUT_BYTES, parse_docker_config
from nodeagent.observe.logging import get_logger
from nodeagent.sources import SourceUpdate, UpdateSink

__all__ = ["CHANGE_EVENTS", "DEBOUNCE_SECONDS", "DirectoryWatch", "FileWatcher"]

DEBOUNCE_SECONDS = 0.1
"""The kubelet's swap is a handful of syscalls; 100 ms folds one update into one read."""

CHANGE_EVENTS = frozenset({"created", "deleted", "modified", "moved", "closed"})
"""The watchdog event types that mean a file may have changed. watchdog 5+ also reports plain
reads (``opened``, ``closed_no_write``): counting those made the agent wake on its own reads of
the files it watches, a pass that read the file again, and so on (about 9.5 passes a second)."""


class DirectoryWatch(FileSystemEventHandler):
    """Calls ``callback(first_event_time)`` once per burst of changes in some directories (debounced);
    reads are not changes (:data:`CHANGE_EVENTS`).

    With ``names``, only events on those file names count (the drift watch on the kubelet's busy
    root dir); without, any change does (a Secret volume's ``..data`` swap touches other names).
    """

    def __init__(
        self,
        directories: list[str],
        callback: Any,
        *,
        names: frozenset[str] | None = None,
        debounce: float = DEBOUNCE_SECONDS,
    ) -> None:
        self._callback = callback
        self._names = names
        self._debounce = debounce
        self._dirty = threading.Event()
        self._first_event = 0.0
        self._stop = threading.Event()
        self._observer: Any = Observer()
        for directory in sorted(set(directories)):
            self._observer.schedule(self, directory, recursive=False)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="debounce")

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGE_EVENTS:
            return
        if self._names is not None:
            paths = [event.src_path, getattr(event, "dest_path", "")]
            if not any(os.path.basename(os.fsdecode(p)) in self._names for p in paths if p):
                return
        if not self._dirty.is_set():
            self._first_event = time.monotonic()
        self._dirty.set()

    def start(self) -> None:
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._observer.stop()

    @property
    def alive(self) -> bool:
        return bool(self._observer.is_alive() and self._thread.is_alive())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            time.sleep(self._debounce)
            self._dirty.clear()
            try:
                self._callback(self._first_event)
            except Exception as exc:
                get_logger().error("watch_callback_crashed", error_type=type(exc).__name__)


class FileWatcher:
    """Reports the parsed content of one file whenever it changes; with ``namespaces`` its
    credentials are scoped to them, as a Secret annotated ``nodeagent.io/namespaces`` is."""

    def __init__(self, path: str, sink: UpdateSink, *, namespaces: tuple[str, ...] | None = None) -> None:
        self.path = path
        self.namespaces = namespaces
        self.label = f"file:{path}"
        self._sink = sink
        self._digest: str | None = None
        self._lock = threading.Lock()
        self.log = get_logger(source=self.label)
        directory = os.path.dirname(os.path.abspath(path))
        self._watch = DirectoryWatch([directory], self._changed)

    @property
    def watching(self) -> bool:
        return self._watch.alive

    def start(self) -> None:
        """Report the current content, then watch for changes."""
        self._changed(time.monotonic())
        self._watch.start()

    def stop(self) -> None:
        self._watch.stop()

    def _changed(self, received: float) -> None:
        with self._lock:
            try:
                with open(self.path, "rb") as handle:
                    data = handle.read(MAX_INPUT_BYTES + 1)
            except FileNotFoundError:
                if self._digest != "absent":
                    self._digest = "absent"
                    self._sink(SourceUpdate(self.label, "deleted", received, error="file not found"))
                return
            except OSError as exc:
                self._sink(SourceUpdate(self.label, "invalid", received, error=f"cannot read: {exc.strerror}"))
                return
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._digest:
                return
            self._digest = digest
            try:
                result = parse_docker_config(data, source=self.path)
                if self.namespaces:
                    result = dataclasses.replace(result, namespaces=self.namespaces)
            except InputError as exc:
                self._sink(SourceUpdate(self.label, "invalid", received, error=exc.reason))
                return
            self._sink(SourceUpdate(self.label, "data", received, result=result))
