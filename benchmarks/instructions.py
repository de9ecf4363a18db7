"""Instructions per up-to-date pass, counted by valgrind's callgrind: repeatable where wall-clock
figures on a shared 2-core machine swing by 2x (the same binary, inputs and environment give the
same count whatever else the machine does).

For each workload the script runs a child process that sets up a node and does one pass, then K
more up-to-date passes; (count with K passes - count with 0) / K is one pass, start-up and imports
cancelled out. ``--tree DIR`` measures another checkout with the same interpreter (for example the
previous commit, in a ``git worktree``), so the table compares the two in one run.

    python benchmarks/instructions.py [--tree /tmp/base] [--passes 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import base64, json, sys, tempfile
from pathlib import Path
from nodeagent.config import ContainerdSettings, SyncSettings
from nodeagent.host.hostfs import HostFS
from nodeagent.reconcile import load_file_sources, sync
from nodeagent.model.registry_settings import parse_registry_settings
workload, count, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
work = Path(tempfile.mkdtemp())
hosts = [f"registry-{i}.example.com:5000" for i in range(count)]
src = work / "src.json"
src.write_text(json.dumps({"auths": {h: {"auth": base64.b64encode(f"u:p{i}".encode()).decode()}
                                     for i, h in enumerate(hosts)}}))
root = work / "host"
(root / "var/lib/kubelet").mkdir(parents=True)
registries = None
settings = SyncSettings(host_root=str(root))
if workload == "containerd":
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n')
    text = "".join(f'[registries."{h}"]\nskip_verify = true\nmirrors = ["https://m{i}.example.com"]\n'
                   for i, h in enumerate(hosts))
    registries = parse_registry_settings(text.encode(), source="r")
    settings = SyncSettings(host_root=str(root), containerd=ContainerdSettings(auth=True))
for _ in range(1 + passes):
    sync(HostFS(root), settings, load_file_sources([str(src)]), registry_settings=registries)
"""

WORKLOADS = [("sync", 1_000), ("sync", 10_000), ("containerd", 100)]


def _instructions(tree: Path, workload: str, count: int, passes: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", CHILD,
             workload, str(count), str(passes)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
            cwd=tmp, timeout=1800, check=True,  # cwd: "-c" puts it first on sys.path, before PYTHONPATH
        )  # fmt: skip
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise SystemExit(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="another checkout to compare with")
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install -y valgrind)")
    trees = [("this tree", Path(__file__).resolve().parent.parent)]
    if args.tree is not None:
        trees.append((f"{args.tree}", args.tree.resolve()))
    header = " | ".join(f"{name}: M instructions / up-to-date pass" for name, _ in trees)
    print(f"\n| workload | registries | {header} |" + (" ratio |" if len(trees) == 2 else ""))
    print("|---|---:|" + "---:|" * len(trees) + ("---:|" if len(trees) == 2 else ""))
    for workload, count in WORKLOADS:
        per_pass = []
        for _, tree in trees:
            total = _instructions(tree, workload, count, args.passes) - _instructions(tree, workload, count, 0)
            per_pass.append(total / args.passes / 1e6)
        cells = " | ".join(f"{p:,.1f}" for p in per_pass)
        ratio = f" {per_pass[0] / per_pass[1]:.3f} |" if len(per_pass) == 2 else ""
        print(f"| {workload} | {count:,} | {cells} |{ratio}")


if __name__ == "__main__":
    main()
