#!/usr/bin/env bash
# A real Kubernetes API server for tests and experiments: kube-apiserver and etcd of k8s 1.34.4
# (tests/harness/kubelet, built by `make k8s` into .cache/k8s/bin/), on 127.0.0.1.
#
#   scripts/kube-apiserver.sh up DIR [KUBE-APISERVER FLAG...]
#       starts etcd and kube-apiserver (RBAC and the Node authorizer, ServiceAccount token
#       authentication and TokenRequest, a static admin token), returns once /readyz is ok, and
#       writes into DIR: admin.kubeconfig, admin.token, server.env (APISERVER_URL, ETCD_URL),
#       the servers' logs and pids. Extra flags go to kube-apiserver (a later flag wins). Lines of
#       DIR/extra-tokens.csv (TOKEN,USER,UID,"GROUP,...") are more static tokens, e.g. a node's.
#   scripts/kube-apiserver.sh restart DIR
#       stops kube-apiserver alone and starts it again with the same flags, port and keys (as
#       an upgrade or a crash does), returning once /readyz is ok; etcd keeps running.
#   scripts/kube-apiserver.sh down DIR
#       stops both and keeps DIR (logs, etcd data) for a look.
#
# Every request is written to DIR/audit.log (level Metadata: user, verb, resource, time; never
# a request or response body), so tests count a client's requests from the server's side.
#
# K8S_BIN names another directory holding kube-apiserver and etcd.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${K8S_BIN:-$root/.cache/k8s/bin}
usage="usage: kube-apiserver.sh up DIR [FLAG...] | restart DIR | down DIR"
command=${1:?$usage}
dir=${2:?$usage}
shift 2

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
    local names=("$@")
    [ ${#names[@]} -gt 0 ] || names=(kube-apiserver etcd)
    for name in "${names[@]}"; do
        pidfile=$dir/$name.pid
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

# Start kube-apiserver with the flags `up` saved, and wait for /readyz.
start_apiserver() {
    local args=() url token
    mapfile -d '' args <"$dir/kube-apiserver.args"
    url=$(sed -n 's/^APISERVER_URL=//p' "$dir/server.env")
    token=$(cat "$dir/admin.token")
    setsid "$bin/kube-apiserver" "${args[@]}" >>"$dir/kube-apiserver.log" 2>&1 </dev/null &
    echo $! >"$dir/kube-apiserver.pid"
    deadline=$(($(date +%s) + 180))
    until [ "$(curl -sk --max-time 5 -H "Authorization: Bearer $token" "$url/readyz" 2>/dev/null)" = ok ]; do
        for name in etcd kube-apiserver; do
            if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
                echo "$name exited; the end of $dir/$name.log:" >&2
                tail -n 30 "$dir/$name.log" >&2
                stop
                exit 1
            fi
        done
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "kube-apiserver not ready after 180 s; the end of $dir/kube-apiserver.log:" >&2
            tail -n 30 "$dir/kube-apiserver.log" >&2
            stop
            exit 1
        fi
        sleep 0.5
    done
}

case $command in
down)
    stop
    ;;
restart)
    dir=$(cd "$dir" && pwd)
    stop kube-apiserver
    start_apiserver
    echo "kube-apiserver restarted"
    ;;
up)
    [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] || "$root/scripts/build-harness.sh" kubelet "$bin"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    stop # a server left behind in DIR by an earlier run
    umask 077
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/sa.key" 2>/dev/null
    openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub"
    token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    echo "$token" >"$dir/admin.token"
    echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
    if [ -f "$dir/extra-tokens.csv" ]; then cat "$dir/extra-tokens.csv" >>"$dir/tokens.csv"; fi
    etcd_url=http://127.0.0.1:$(free_port)
    port=$(free_port)
    url=https://127.0.0.1:$port
    setsid "$bin/etcd" "$dir/etcd" "$etcd_url" "http://127.0.0.1:$(free_port)" \
        >"$dir/etcd.log" 2>&1 </dev/null &
    echo $! >"$dir/etcd.pid"
    printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n' \
        >"$dir/audit-policy.yaml"
    printf '%s\0' --etcd-servers="$etcd_url" --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 --secure-port="$port" --cert-dir="$dir/certs" \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=Node,RBAC \
        --token-auth-file="$dir/tokens.csv" --audit-policy-file="$dir/audit-policy.yaml" \
        --audit-log-path="$dir/audit.log" "$@" >"$dir/kube-apiserver.args"
    printf 'APISERVER_URL=%s\nETCD_URL=%s\n' "$url" "$etcd_url" >"$dir/server.env"
    start_apiserver
    # The server's self-signed certificate file carries its own CA: clients verify against it.
    ca=$(base64 -w0 <"$dir/certs/apiserver.crt")
    cat >"$dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
current-context: admin
clusters:
- name: test
  cluster: {server: "$url", certificate-authority-data: "$ca"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: admin
  context: {cluster: test, user: admin}
EOF
    echo "kube-apiserver ready at $url (kubeconfig: $dir/admin.kubeconfig)"
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
