#!/usr/bin/env bash
# After the tests: no etcd or kube-* process started by a test may still be running, and no
# test control plane's data directory may be left behind. Test control planes keep their data
# in temporary directories named pot-k8s-*, which is how their processes are told apart from a
# `pot-e2e cluster up` a developer may have running. With a stamp file as $1, only directories
# newer than it count (older ones belong to runs before this one).
set -euo pipefail
sleep 1
left=$(pgrep -af -- '/bin/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler) .*/pot-k8s-' || true)
if [ -n "$left" ]; then
  echo "control-plane processes left running after the tests:" >&2
  echo "$left" >&2
  exit 1
fi
echo "no control-plane processes left running"
if [ -n "${1:-}" ]; then
  tmp="${TMPDIR:-/tmp}"
  dirs=$(find "$tmp" -maxdepth 1 -name 'pot-k8s-*' -newer "$1" 2>/dev/null || true)
  if [ -n "$dirs" ]; then
    echo "control-plane data directories left behind after the tests:" >&2
    echo "$dirs" >&2
    exit 1
  fi
  echo "no control-plane data directories left behind"
fi
