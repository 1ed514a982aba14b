# The two commands a person needs are `make demo` and `make test`; see README.md.

CARGO ?= cargo
# Build outputs live outside the source tree so a fresh clone (CI's) reuses them; cargo's own
# fingerprints decide what to rebuild, so correctness never depends on this cache.
POT_CACHE_DIR ?= $(HOME)/.cache/pot-k8s
export POT_CACHE_DIR
export CARGO_TARGET_DIR ?= $(POT_CACHE_DIR)/target
export CARGO_TERM_COLOR ?= never
# The libtorch `make setup` unpacks; fixed, because a change rebuilds torch-sys (minutes).
export LIBTORCH ?= $(POT_CACHE_DIR)/libtorch/2.11.0-cpu

.PHONY: test lint fmt demo demo-down setup k8s-tools bench setup-cuda build-cuda gpu-bundle image
VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

## test: everything CI runs — formatting, lints, the whole test suite, and a check that no
## control-plane process outlived it
test: lint k8s-tools
	mkdir -p "$(POT_CACHE_DIR)" && touch "$(POT_CACHE_DIR)/test-started"
	$(CARGO) test --workspace --locked
	e2e/check-no-orphans.sh "$(POT_CACHE_DIR)/test-started"

## k8s-tools: build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm
## and kwok from the Go module proxy into ~/.cache/pot-k8s/k8s-tools (once per pinned version)
k8s-tools:
	e2e/k8s-tools/build.sh

## setup: unpack libtorch 2.11.0 (CPU) from the PyPI torch wheel into $(POT_CACHE_DIR)/libtorch
setup:
	node-image/setup-libtorch.sh

## setup-cuda: unpack the full CUDA 13.0 libtorch 2.11.0 (~4 GB) from PyPI wheels into
## $(POT_CACHE_DIR)/libtorch/2.11.0-cu130 (for GPU builds; not needed by test, demo or bench)
setup-cuda:
	node-image/setup-libtorch.sh cuda

## build-cuda: release pot-node with the `cuda` feature, against that libtorch, in its own
## target directory ($(POT_CACHE_DIR)/target-cuda) so the CPU build is not rebuilt
build-cuda: setup-cuda
	LIBTORCH="$(POT_CACHE_DIR)/libtorch/2.11.0-cu130" CARGO_TARGET_DIR="$(POT_CACHE_DIR)/target-cuda" \
		$(CARGO) build --release --locked -p pot-node --features cuda

## gpu-bundle: copy the stripped CUDA pot-node to .gpu/ (ignored by git) for
## node-image/gpu-check.sh on a GPU machine
gpu-bundle: build-cuda
	mkdir -p .gpu
	strip -o .gpu/pot-node "$(POT_CACHE_DIR)/target-cuda/release/pot-node"

## image: the node image (node-image/Dockerfile's CPU variant) as an OCI archive,
## dist/pot-node-$(VERSION).oci.tar, built with no container engine (mmdebstrap, umoci, skopeo
## from Debian, installed when missing; run as root); `docker load -i` or
## `skopeo copy oci-archive:dist/pot-node-$(VERSION).oci.tar docker://REGISTRY/pot-node:$(VERSION)`
image: setup
	$(CARGO) build --release --locked -p pot-node --bin pot-node
	$(CARGO) build --release --locked -p pot-operator --bin pot-operator
	node-image/build-oci.sh --pot-node "$(CARGO_TARGET_DIR)/release/pot-node" \
		--pot-operator "$(CARGO_TARGET_DIR)/release/pot-operator" --libtorch "$(LIBTORCH)" \
		--out dist/pot-node-$(VERSION).oci.tar

## lint: rustfmt check and clippy with warnings as errors
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## bench: measure pot-node against PyTorch in Python and plain training, and the coordinators'
## finality and throughput; writes BENCHMARKS.md
## (creates a ~4.7 GB venv with torch==2.11.0 once; takes several minutes; not part of `make test`)
bench: setup
	$(CARGO) build --release --locked -p pot-node -p pot-e2e -p pot-operator
	"$$(bench/setup-venv.sh)" bench/run.py --pot-node "$(CARGO_TARGET_DIR)/release/pot-node" \
		--pot-e2e "$(CARGO_TARGET_DIR)/release/pot-e2e" --pot-operator "$(CARGO_TARGET_DIR)/release/pot-operator"

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## demo: a local cluster (control plane + local kubelet), the operator installed with Helm, a
## development network, CPU miners and the digits task followed to finalization; the cluster
## stays up (KUBECONFIG printed at the end) until `make demo-down`
demo: setup k8s-tools
	e2e/demo.sh

## demo-down: stop the demo cluster and every pod process it runs
demo-down:
	e2e/demo.sh down
