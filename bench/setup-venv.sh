#!/usr/bin/env bash
# The Python reference for `make bench`: torch==2.11.0 (the libtorch pot-node links), numpy and
# matplotlib, in a venv outside the source tree (~4.7 GB). Prints the venv's python.
set -euo pipefail
venv="${POT_CACHE_DIR:-$HOME/.cache/pot-k8s}/bench-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, numpy, matplotlib; assert torch.__version__.startswith('2.11.0')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "torch==2.11.0" numpy matplotlib >&2
fi
echo "$venv/bin/python"
