#!/usr/bin/env bash
# Build the commands of one of the tests' Go harness modules (tests/harness/MODULE: the real
# kubelet credential code, kube-apiserver and etcd; containerd's hosts loader) into OUT_DIR.
#
#   scripts/build-harness.sh MODULE OUT_DIR
#
# Modules and builds come from the Go module proxy into Go's own caches. A stamp holding the digest
# of the module's sources makes a second run with nothing changed a no-op (well under a second);
# a lock lets parallel callers (make, pytest) share one build.
set -euo pipefail

module=${1:?usage: build-harness.sh MODULE OUT_DIR}
out=${2:?usage: build-harness.sh MODULE OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/tests/harness/$module
[ -f "$src/go.mod" ] || { echo "no Go module at $src" >&2; exit 2; }

go=$(command -v go || true)
if [ -z "$go" ]; then
    for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
        if [ -x "$candidate" ]; then go=$candidate && break; fi
    done
fi
[ -n "$go" ] || { echo "Go is needed to build tests/harness/$module (install Go 1.24 or newer)" >&2; exit 2; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
digest=$(cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
stamp=$out/.$module.stamp

exec 9>"$out/.$module.lock"
flock 9
if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
    exit 0
fi
commands=$(cd "$src" && find . -name main.go -printf '%h\n' | LC_ALL=C sort)
echo "building tests/harness/$module ($(echo $commands | tr -d './')) into $out" >&2
start=$(date +%s)
# shellcheck disable=SC2086 # one word per command directory
(cd "$src" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" "$go" build -o "$out/" $commands)
echo "$digest" >"$stamp"
echo "built tests/harness/$module in $(($(date +%s) - start)) s" >&2
