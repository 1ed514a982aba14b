#!/usr/bin/env bash
# Unpacks a libtorch for CPU from PyPI wheels (there is no other download site here) into a cache
# outside the source tree, checks it, and prints its directory on the last line. Does nothing
# when it is already there.
#
# PyPI's torch wheel is the CUDA build. Its libtorch_cpu.so loads on a CPU-only machine once
# libcudart.so.13 and libcupti.so.13, from the CUDA 13.0 runtime and CUPTI wheels that torch
# itself depends on (through cuda-toolkit==13.0.2), sit beside it.
set -euo pipefail
TORCH=2.11.0
CUDART=13.0.96
CUPTI=13.0.85
cache="${POT_CACHE_DIR:-$HOME/.cache/pot-k8s}"
dest="$cache/libtorch/$TORCH-cpu"
if [ -f "$dest/complete" ]; then
  echo "$dest"
  exit 0
fi
# unzip comes from Debian; a new machine may not have it.
if ! command -v unzip >/dev/null 2>&1; then
  echo "installing unzip" >&2
  apt-get update -qq >&2 && apt-get install -y -qq unzip >&2
fi
wheels="$cache/wheels"
mkdir -p "$wheels"
echo "fetching torch==$TORCH and the CUDA runtime wheels into $wheels" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
  "torch==$TORCH" "nvidia-cuda-runtime==$CUDART" "nvidia-cuda-cupti==$CUPTI" >&2

tmp="$dest.partial"
rm -rf "$tmp"
mkdir -p "$tmp/unzip" "$tmp/lib"
torch_whl=$(ls "$wheels"/torch-"$TORCH"-*.whl | head -n 1)
unzip -q -o "$torch_whl" 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' \
  'torch/lib/libc10.so' 'torch/lib/libgomp.so.1' "torch-$TORCH.dist-info/licenses/*" -d "$tmp/unzip"
unzip -q -o "$wheels"/nvidia_cuda_runtime-"$CUDART"-*.whl 'nvidia/cu13/lib/libcudart.so.13' -d "$tmp/unzip"
unzip -q -o "$wheels"/nvidia_cuda_cupti-"$CUPTI"-*.whl 'nvidia/cu13/lib/libcupti.so.13' -d "$tmp/unzip"
mv "$tmp/unzip/torch/include" "$tmp/include"
mv "$tmp/unzip/torch/lib/"* "$tmp/lib/"
mv "$tmp/unzip/nvidia/cu13/lib/"* "$tmp/lib/"
mv "$tmp/unzip/torch-$TORCH.dist-info/licenses" "$tmp/licenses"
rm -rf "$tmp/unzip"
# torch-sys reads the version from here when it is not given one.
echo "$TORCH" > "$tmp/build-version"

# What the CPU build loads must resolve inside this directory or from the system. (libtorch.so
# also names libtorch_cuda.so, which is left out: a CPU binary links with --as-needed and never
# loads libtorch.so.)
missing=$(cd "$tmp/lib" && LD_LIBRARY_PATH="$tmp/lib" ldd ./libtorch_cpu.so ./libc10.so | grep "not found" || true)
if [ -n "$missing" ]; then
  echo "libtorch in $tmp has unresolved libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
rm -rf "$dest"
mv "$tmp" "$dest"
touch "$dest/complete"
echo "libtorch $TORCH ($(du -sh "$dest" | cut -f1)) in $dest" >&2
echo "$dest"
