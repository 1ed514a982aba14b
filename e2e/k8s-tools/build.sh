#!/usr/bin/env bash
# Builds the pinned control-plane tools (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm, kwok) from the Go module proxy, statically (CGO_ENABLED=0), into
# a cache outside the source tree keyed by this module's go.mod, go.sum and this script. Does nothing when
# that key is already built. Prints the bin directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The key covers how the tools are built, not only what: change this script, get a new set.
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)
root="${POT_CACHE_DIR:-$HOME/.cache/pot-k8s}/k8s-tools/$key"
if [ -f "$root/complete" ]; then
  echo "$root/bin"
  exit 0
fi
cd "$here"
k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)
minor=$(echo "$k8s_version" | cut -d. -f2)
# Without these the binaries report v0.0.0-master, which kubectl, helm charts' kubeVersion
# constraints and version-skew checks all trip over.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
tmp="$root/bin.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
start=$(date +%s)
export CGO_ENABLED=0
echo "building control-plane tools $k8s_version into $root (cold: tens of minutes)" >&2
go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
helm_version=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' go.mod)
# As helm's own Makefile does: its version, and the Kubernetes version `helm template` assumes
# (otherwise v1.20, which fails any chart with a current kubeVersion constraint).
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags="$helm_ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done
go build -trimpath -ldflags "$helm_ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
go build -trimpath -ldflags "-s -w" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok
rm -rf "$root/bin"
mv "$tmp" "$root/bin"
echo "$(( $(date +%s) - start ))" > "$root/build-seconds"
touch "$root/complete"
echo "built in $(cat "$root/build-seconds") s" >&2
echo "$root/bin"
