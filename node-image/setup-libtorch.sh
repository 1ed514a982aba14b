#!/usr/bin/env bash
# Unpacks a libtorch from PyPI wheels (there is no other download site here) into a cache
# outside the source tree, checks it, and prints its directory on the last line. Does nothing
# when it is already there.
#
#   setup-libtorch.sh        CPU libtorch (~490 MB): what `make setup` uses everywhere.
#   setup-libtorch.sh cuda   full CUDA 13.0 libtorch (~4 GB): for `cargo build --features cuda`
#                            (`make setup-cuda`), on GPU machines.
#
# PyPI's torch wheel is the CUDA build. Its libtorch_cpu.so loads on a CPU-only machine once
# libcudart.so.13 and libcupti.so.13, from the CUDA 13.0 runtime and CUPTI wheels that torch
# itself depends on (through cuda-toolkit==13.0.2), sit beside it. The CUDA variant adds
# libtorch_cuda.so and every CUDA library it names, at the versions torch 2.11.0 pins; they all
# go into one lib/ directory, which the libraries' own `$ORIGIN` run path searches.
set -euo pipefail
variant="${1:-cpu}"
TORCH=2.11.0
CUDART=13.0.96
CUPTI=13.0.85
# What `torch==2.11.0` pulls in on Linux (cuda-toolkit[...]==13.0.2 and the cu13 packages).
CUDA_WHEELS=(
  "nvidia-cublas==13.1.0.3" "nvidia-cuda-nvrtc==13.0.88" "nvidia-cudnn-cu13==9.19.0.56"
  "nvidia-cufft==12.0.0.61" "nvidia-cufile==1.15.1.6" "nvidia-curand==10.4.0.35"
  "nvidia-cusolver==12.0.4.66" "nvidia-cusparse==12.6.3.3" "nvidia-cusparselt-cu13==0.8.0"
  "nvidia-nccl-cu13==2.28.9" "nvidia-nvjitlink==13.0.88" "nvidia-nvshmem-cu13==3.4.5"
  "nvidia-nvtx==13.0.85"
)
case "$variant" in
  cpu) wanted=() suffix=cpu ;;
  cuda) wanted=("${CUDA_WHEELS[@]}") suffix=cu130 ;;
  *) echo "unknown variant '$variant' (cpu or cuda)" >&2; exit 2 ;;
esac
cache="${POT_CACHE_DIR:-$HOME/.cache/pot-k8s}"
dest="$cache/libtorch/$TORCH-$suffix"
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
echo "fetching torch==$TORCH and the CUDA wheels it needs ($variant) into $wheels" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
  "torch==$TORCH" "nvidia-cuda-runtime==$CUDART" "nvidia-cuda-cupti==$CUPTI" "${wanted[@]}" >&2

tmp="$dest.partial"
rm -rf "$tmp"
mkdir -p "$tmp/unzip" "$tmp/lib"
torch_whl=$(ls "$wheels"/torch-"$TORCH"-*.whl | head -n 1)
unzip -q -o "$torch_whl" 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' \
  'torch/lib/libc10.so' 'torch/lib/libgomp.so.1' "torch-$TORCH.dist-info/licenses/*" -d "$tmp/unzip"
unzip -q -o "$wheels"/nvidia_cuda_runtime-"$CUDART"-*.whl 'nvidia/cu13/lib/libcudart.so.13' -d "$tmp/unzip"
unzip -q -o "$wheels"/nvidia_cuda_cupti-"$CUPTI"-*.whl 'nvidia/cu13/lib/libcupti.so.13' -d "$tmp/unzip"
if [ "$variant" = cuda ]; then
  unzip -q -o "$torch_whl" 'torch/lib/*.so' -x 'torch/lib/libtorch_python.so' -d "$tmp/unzip"
  for spec in "${wanted[@]}"; do
    name="${spec%%==*}"
    version="${spec##*==}"
    whl=$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl | head -n 1)
    unzip -q -o "$whl" 'nvidia/*/lib/*.so*' -d "$tmp/unzip"
  done
fi
mv "$tmp/unzip/torch/include" "$tmp/include"
mv "$tmp/unzip/torch/lib/"* "$tmp/lib/"
for d in "$tmp"/unzip/nvidia/*/lib; do
  mv "$d"/* "$tmp/lib/"
done
mv "$tmp/unzip/torch-$TORCH.dist-info/licenses" "$tmp/licenses"
rm -rf "$tmp/unzip"
# torch-sys reads the version from here when it is not given one.
echo "$TORCH" > "$tmp/build-version"

# What the build loads must resolve inside this directory or from the system. (In the CPU
# variant libtorch.so also names libtorch_cuda.so, which is left out: a CPU binary links with
# --as-needed and never loads libtorch.so.)
# libcuda.so.1 is the GPU driver's: it is on GPU machines, not in any wheel.
check=(./libtorch_cpu.so ./libc10.so)
if [ "$variant" = cuda ]; then check+=(./libtorch_cuda.so ./libc10_cuda.so ./libtorch_cuda_linalg.so); fi
missing=$(cd "$tmp/lib" && LD_LIBRARY_PATH="$tmp/lib" ldd "${check[@]}" | grep "not found" | grep -v "libcuda.so.1" || true)
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
