#!/usr/bin/env bash
# After the tests: no etcd or kube-* process started by a test may still be running. Test
# control planes keep their data in temporary directories named pot-k8s-*, which is how their
# processes are told apart from a `pot-e2e cluster up` a developer may have running.
set -euo pipefail
sleep 1
left=$(pgrep -af -- '/bin/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler) .*/pot-k8s-' || true)
if [ -n "$left" ]; then
  echo "control-plane processes left running after the tests:" >&2
  echo "$left" >&2
  exit 1
fi
echo "no control-plane processes left running"
