"""Benchmark table for nodeagent (not a test: prints figures, asserts nothing).

Row group 1, sync: one ``sync`` pass of N registries into an empty host root, then again into
the up-to-date host root. Target (issue 2): 1,000 registries < 200 ms; the up-to-date pass
performs 0 writes. Run with ``make bench`` or ``python benchmarks/run.py``.
"""

from __future__ import annotations

import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

from nodeagent.config import SyncSettings
from nodeagent.hostfs import HostFS
from nodeagent.reconcile import load_file_sources, sync

SIZES = (10, 1_000, 10_000)
REPEATS = 5


def _source(directory: Path, count: int) -> Path:
    auths = {
        f"registry-{i}.example.com:5000/team": {"auth": base64.b64encode(f"user{i}:pw-{i:08d}".encode()).decode()}
        for i in range(count)
    }
    path = directory / f"src-{count}.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def _one(count: int, source: Path, work: Path) -> tuple[float, int, float, int]:
    root = Path(tempfile.mkdtemp(dir=work))
    (root / "var/lib/kubelet").mkdir(parents=True)
    settings = SyncSettings(host_root=str(root))
    timings = []
    for _ in range(2):
        fs = HostFS(root)
        start = time.perf_counter()
        sync(fs, settings, load_file_sources([str(source)]))
        timings.append((time.perf_counter() - start, fs.stats.writes))
    (cold, cold_writes), (warm, warm_writes) = timings
    return cold, cold_writes, warm, warm_writes


def main() -> None:
    print("sync (one pass, including reading and parsing the source file)")
    print(
        f"{'registries':>10} | {'empty: median ms':>16} | {'writes':>6} | {'up-to-date: median ms':>21} | {'writes':>6}"
    )
    print("-" * 74)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for count in SIZES:
            source = _source(work, count)
            runs = [_one(count, source, work) for _ in range(REPEATS)]
            cold = statistics.median(r[0] for r in runs) * 1000
            warm = statistics.median(r[2] for r in runs) * 1000
            print(f"{count:>10,} | {cold:>16.1f} | {runs[0][1]:>6} | {warm:>21.1f} | {runs[0][3]:>6}")
    print("target: 1,000 registries < 200 ms; up-to-date pass performs 0 writes")


if __name__ == "__main__":
    main()
