#!/usr/bin/env bash
# `make demo`: a local cluster (control plane + local kubelet) in $POT_CACHE_DIR/demo, the
# operator installed with Helm, a development network, a CPU miner fleet and the digits task,
# followed until the task is finalized. The cluster stays up; `make demo-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${POT_CACHE_DIR:=$HOME/.cache/pot-k8s}"
: "${CARGO_TARGET_DIR:=$POT_CACHE_DIR/target}"
: "${CARGO:=cargo}"
DIR="$POT_CACHE_DIR/demo"
E2E="$CARGO_TARGET_DIR/debug/pot-e2e"

if [ "${1:-}" = down ]; then
    if [ -x "$E2E" ]; then "$E2E" cluster down --dir "$DIR"; else echo "no demo running"; fi
    exit 0
fi

# The same builds the tests make (so neither rebuilds the other's): pot-node with the test
# harness's feature (inert unless its hidden flags are given), pot-operator, pot-e2e.
echo "==> building pot-node, pot-operator and pot-e2e (nothing to do when make test ran)"
"$CARGO" build --quiet --locked -p pot-node --bin pot-node --features fault-injection
"$CARGO" build --quiet --locked -p pot-operator --bin pot-operator
"$CARGO" build --quiet --locked -p pot-e2e --bin pot-e2e

"$E2E" cluster down --dir "$DIR" >/dev/null 2>&1 || true
echo "==> starting the control plane and the local kubelet in $DIR"
LOG="$POT_CACHE_DIR/demo-cluster.log"
setsid nohup "$E2E" cluster up --kubelet --dir "$DIR" >"$LOG" 2>&1 </dev/null &
for _ in $(seq 1 120); do
    if grep -q "^export KUBECONFIG" "$LOG" 2>/dev/null; then break; fi
    if ! kill -0 $! 2>/dev/null; then
        echo "the cluster did not start:" >&2
        tail -20 "$LOG" >&2
        exit 1
    fi
    sleep 1
done
grep -q "^export KUBECONFIG" "$LOG" || { echo "the cluster did not start in 120 s" >&2; tail -20 "$LOG" >&2; exit 1; }

"$E2E" demo --dir "$DIR" --repo .
