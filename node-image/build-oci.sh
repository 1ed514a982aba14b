#!/usr/bin/env bash
# Build the node image as an OCI archive with no container engine: a Debian bookworm root
# filesystem from mmdebstrap (the packages node-image/Dockerfile's runtime stage installs), a
# layer with pot-node and pot-operator in /usr/local/bin and libtorch in /opt/libtorch/lib, and
# the Dockerfile's user, environment and entrypoint, assembled with umoci and written with
# skopeo. The result loads with `docker load -i` (Docker 25 and later read OCI archives),
# `podman load -i`, or goes to a registry with
# `skopeo copy oci-archive:FILE docker://REGISTRY/pot-node:TAG`.
#
#   node-image/build-oci.sh --pot-node BIN --pot-operator BIN --libtorch DIR --out FILE [--tag TAG]
#
# `make image` passes the release binaries; e2e/tests/node_image.rs the test build. The base
# root filesystem is cached in $POT_CACHE_DIR/images by its recipe (delete it to refresh the
# Debian packages). Needs root (mmdebstrap's root mode, umoci's ownership) and, once, the
# Debian packages mmdebstrap, umoci and skopeo, which it installs when they are missing.
set -euo pipefail

die() { echo "build-oci.sh: $*" >&2; exit 1; }

pot_node='' pot_operator='' libtorch='' out='' tag=''
while [ $# -gt 0 ]; do
    case "$1" in
        --pot-node) pot_node=$2; shift 2 ;;
        --pot-operator) pot_operator=$2; shift 2 ;;
        --libtorch) libtorch=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) die "unknown argument $1 (see the comment at the top of this script)" ;;
    esac
done
[ -n "$pot_node" ] && [ -n "$pot_operator" ] && [ -n "$libtorch" ] && [ -n "$out" ] ||
    die "give --pot-node, --pot-operator, --libtorch and --out"
for f in "$pot_node" "$pot_operator"; do [ -x "$f" ] || die "$f is not an executable"; done
[ -f "$libtorch/lib/libtorch.so" ] || die "$libtorch/lib has no libtorch.so (run make setup)"

repo=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
tag=${tag:-$version}
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap's root mode and umoci keep file ownership)"

missing=()
for tool in mmdebstrap umoci skopeo; do command -v "$tool" > /dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" > /dev/null ||
        { apt-get update > /dev/null &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" > /dev/null; } ||
        die "could not install ${missing[*]} from Debian's archive"
fi

# The runtime stage of node-image/Dockerfile: bookworm, CA certificates (https:// datasets),
# libgomp (libtorch's OpenMP), the non-root user 10001 and its home; no docs, man pages or
# locales.
suite=bookworm
packages=ca-certificates,libgomp1
user_hook='chroot "$1" groupadd --gid 10001 pot && chroot "$1" useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/pot --shell /usr/sbin/nologin pot && mkdir -p "$1/var/lib/pot" && chown 10001:10001 "$1/var/lib/pot"'
dpkg_opts=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
           --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
recipe="$suite $packages minbase tar ${dpkg_opts[*]} $user_hook"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
cache=${POT_CACHE_DIR:-$HOME/.cache/pot-k8s}/images
base="$cache/base-$suite-$key.tar"
mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/tmp}/pot-image.XXXXXX")
partial=''
trap 'rm -rf "$work"; [ -z "$partial" ] || rm -rf "$partial"' EXIT
# One build of the base at a time; each writes its own partial file and renames it whole.
exec 9> "$cache/.lock"
flock 9
if [ ! -f "$base" ] || [ ! -s "$base" ]; then
    rm -rf "$base"
    echo "==> mmdebstrap $suite (once; cached in $base)" >&2
    partial=$(mktemp "$cache/base.XXXXXX.tar")
    mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" "${dpkg_opts[@]}" \
        --customize-hook="$user_hook" \
        "$suite" "$partial" || die "mmdebstrap failed (is deb.debian.org reachable?)"
    mv "$partial" "$base"
    partial=''
fi
flock -u 9
stage="$work/stage"
mkdir -p "$stage/usr/local/bin" "$stage/opt/libtorch/lib"
# Stripped copies: the test build's debug sections would add hundreds of megabytes.
strip -o "$stage/usr/local/bin/pot-node" "$pot_node"
strip -o "$stage/usr/local/bin/pot-operator" "$pot_operator"
cp -a "$libtorch/lib/." "$stage/opt/libtorch/lib/"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$stage" -cf "$work/app.tar" .

echo "==> umoci: base layer, application layer, config" >&2
layout="$work/oci"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci raw add-layer --image "$layout:$tag" "$base"
umoci raw add-layer --image "$layout:$tag" "$work/app.tar"
umoci config --image "$layout:$tag" \
    --config.user 10001:10001 \
    --config.entrypoint /usr/local/bin/pot-node \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env LD_LIBRARY_PATH=/opt/libtorch/lib \
    --config.workingdir /var/lib/pot \
    --config.label org.opencontainers.image.title=pot-node \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.description=PoT node (coordinator, miner, validator, client) and operator"
umoci gc --layout "$layout"

mkdir -p "$(dirname "$out")"
partial=$(mktemp "$(dirname "$out")/.pot-node.XXXXXX.oci.tar")
rm -f "$partial"
skopeo copy --quiet "oci:$layout:$tag" "oci-archive:$partial:pot-node:$tag"
mv "$partial" "$out"
partial=''
echo "==> $out (pot-node:$tag, $(du -h "$out" | cut -f1))" >&2
