#!/usr/bin/env bash
# Proves the `cuda` build on an NVIDIA GPU machine and times it against PyTorch there. Run on
# the GPU machine from the repository root, with a pot-node built here by `make build-cuda`
# (copied to .gpu/pot-node by `make gpu-bundle`); libtorch and the CUDA libraries come from
# that machine's own torch 2.11.0+cu130, the same build `make setup-cuda` unpacks.
#
# Checks, each printed as a JSON line (and written to $OUT/gpu-check.jsonl when OUT is set):
#   - libtorch in pot-node sees the GPU (`--device cuda` is accepted);
#   - a GPU run's W_0 is byte for byte the CPU run's (initialised on the CPU, then moved);
#   - the GPU run reaches >= 95 % held-out accuracy and verifies on the GPU within the task's
#     replay_tolerance, while a tampered checkpoint still fails;
#   - the honest distances a replay sees (issue 12's tolerance calibration): the GPU run replayed
#     on the GPU and on the CPU, the CPU run replayed on the GPU, for an MLP (SGD) and LeNet-5
#     (AdamW, convolutions);
#   - training steps/s of pot-node and of PyTorch on the GPU, same model, batch and data.
set -euo pipefail
bin="${1:-.gpu/pot-node}"
out="${OUT:-$(mktemp -d)}"
log="$out/gpu-check.jsonl"
: >"$log"
say() { echo "$1" | tee -a "$log"; }

site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
LD_LIBRARY_PATH="$site/torch/lib:$(ls -d "$site"/nvidia/*/lib | paste -sd:)"
export LD_LIBRARY_PATH
cpu=$( (grep -m1 'model name' /proc/cpuinfo || uname -m) | cut -d: -f2 | sed 's/^ *//')
say "{\"gpu\": \"$(nvidia-smi -L | head -n 1)\", \"torch\": \"$(python3 -c 'import torch; print(torch.__version__)')\", \"cpu\": \"$cpu\", \"date\": \"$(date -u +%Y-%m-%d)\"}"

work=$(mktemp -d)
# A task on the built-in digits, 1,000 steps, a checkpoint every 100.
task() { # file model optimizer replay_tolerance
  cat >"$1" <<YAML
model: $2
dataset:
  locator: builtin:digits
  sha256: 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
optimizer: $3
batch_size: 64
steps: 1000
checkpoint_interval: 100
seed: 7
replay_tolerance: $4
YAML
}
sgd="{kind: sgd, lr: 0.05, momentum: 0.9}"
adamw="{kind: adamw, lr: 0.002, weight_decay: 0.0001}"
task "$work/task.yaml" mlp:64,32 "$sgd" 0.0001
"$bin" train --spec "$work/task.yaml" --out "$work/gpu" --device cuda --data-cache "$work/cache"
"$bin" train --spec "$work/task.yaml" --out "$work/cpu" --device cpu --data-cache "$work/cache"
# The claim as the chain would hold it (miner and salt are train's defaults): verify takes it
# from the command line, never from the run's manifest.
claim() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("--miner", m["miner"], "--salt", m["salt"], "--checkpoint-root", m["merkle_root"], "--model-hash", m["model_hash"])' "$1/manifest.json"; }
w0() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["checkpoints"][0])' "$1/manifest.json"; }
acc() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["held_out_accuracy"])' "$1/manifest.json"; }
say "{\"check\": \"w0_same_on_gpu_and_cpu\", \"ok\": $([ "$(w0 "$work/gpu")" = "$(w0 "$work/cpu")" ] && echo true || echo false)}"
say "{\"check\": \"gpu_held_out_accuracy\", \"value\": $(acc "$work/gpu")}"
# shellcheck disable=SC2046 # the claim's flags, split on purpose
if "$bin" verify --spec "$work/task.yaml" --run "$work/gpu" $(claim "$work/gpu") --segments 0,4,9 --device cuda \
  --data-cache "$work/cache" >"$work/verify.json"; then ok=true; else ok=false; fi
r=$(tr -d '\n' <"$work/verify.json")
say "{\"check\": \"gpu_run_verifies_on_gpu\", \"ok\": $ok, \"report\": ${r:-null}}"
cp -r "$work/gpu" "$work/tampered"
cp "$work/gpu/checkpoints/000003.safetensors" "$work/tampered/checkpoints/000004.safetensors"
# shellcheck disable=SC2046
if "$bin" verify --spec "$work/task.yaml" --run "$work/tampered" $(claim "$work/gpu") --segments 4 --device cuda \
  --data-cache "$work/cache" >/dev/null 2>&1; then ok=false; else ok=true; fi
say "{\"check\": \"tampered_checkpoint_fails\", \"ok\": $ok}"

# Honest replay distances: each segment's relative L2 distance between the replayed and the
# committed checkpoint, GPU and CPU each way. The task's tolerance is wide here on purpose, so
# that every distance is reported rather than the first failure.
distances() { # name spec run device segments
  # shellcheck disable=SC2046
  "$bin" verify --spec "$2" --run "$3" $(claim "$3") --segments "$5" --device "$4" --data-cache "$work/cache" \
    >"$work/d.json" || true
  r=$(tr -d '\n' <"$work/d.json")
  say "{\"replay\": \"$1\", \"device\": \"$4\", \"report\": ${r:-null}}"
}
task "$work/wide.yaml" mlp:64,32 "$sgd" 0.5
distances mlp_gpu_on_gpu "$work/wide.yaml" "$work/gpu" cuda 0,1,4,9
distances mlp_gpu_on_cpu "$work/wide.yaml" "$work/gpu" cpu 0,1,4,9
distances mlp_cpu_on_gpu "$work/wide.yaml" "$work/cpu" cuda 0,1,4,9
task "$work/lenet.yaml" lenet5 "$adamw" 0.5
"$bin" train --spec "$work/lenet.yaml" --out "$work/lgpu" --device cuda --data-cache "$work/cache"
"$bin" train --spec "$work/lenet.yaml" --out "$work/lcpu" --device cpu --data-cache "$work/cache"
say "{\"check\": \"lenet5_gpu_held_out_accuracy\", \"value\": $(acc "$work/lgpu")}"
distances lenet5_gpu_on_gpu "$work/lenet.yaml" "$work/lgpu" cuda 0,1,4,9
distances lenet5_gpu_on_cpu "$work/lenet.yaml" "$work/lgpu" cpu 0,1,4,9
distances lenet5_cpu_on_gpu "$work/lenet.yaml" "$work/lcpu" cuda 0,1,4,9

for model in mlp:128,64 lenet5; do
  for batch in 64 256; do
    ours=$("$bin" bench throughput --model "$model" --batch "$batch" --threads 1 --device cuda)
    ref=$(python3 bench/train_steps.py --model "$model" --batch "$batch" --threads 1 --device cuda)
    say "{\"bench\": \"train_steps_cuda\", \"pot_node\": $ours, \"pytorch\": $ref}"
  done
done

# The PoT loop on the GPU: a devnet (1 coordinator, 500 ms blocks) whose first miner trains on
# the GPU (`--device cuda`) and second on the CPU, with one validator replaying on the GPU
# and one on the CPU, so claims are checked across devices by real
# processes. A GPU task needs a replay tolerance: the digits task is submitted with 10^-4.
sed 's/^replay_tolerance: 0$/replay_tolerance: 0.0001/' node-image/node/tasks/digits-mlp.yaml >"$work/gpu-task.yaml"
if timeout 420 "$bin" devnet --coordinators 1 --miners 2 --validators 2 --task "$work/gpu-task.yaml" \
  --dir "$work/devnet" --block-time-ms 500 --timeout 360 \
  --miner-arg 0=--device=cuda --miner-arg 1=--device=cpu \
  --validator-arg 0=--device=cuda --validator-arg 1=--device=cpu >"$work/devnet.out" 2>&1; then ok=true; else ok=false; fi
tail -n 40 "$work/devnet.out" >"$out/devnet-tail.txt" || true
tar czf "$out/devnet-logs.tgz" -C "$work" devnet.out $(cd "$work" && ls -d devnet/*/*.log devnet/*.log 2>/dev/null) 2>/dev/null || true
say "$(python3 - "$work/devnet/summary.json" "$ok" <<'PY'
import json, sys
ok = sys.argv[2] == "true"
try:
    s = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(json.dumps({"check": "devnet_gpu", "ok": False}))
    sys.exit()
status = s["info"]["task"]["status"]
outcome = status.get("finalized", {}) if isinstance(status, dict) else {}
miners = s["miners"]
print(json.dumps({
    "check": "devnet_gpu", "ok": ok and s["phase"] == "finalized",
    "phase": s["phase"], "seconds": s["task_seconds"][0] if s["task_seconds"] else None,
    "winner": miners.index(outcome["winner"]) if outcome.get("winner") in miners else None,
    "winner_held_out_accuracy": s.get("winner_held_out_accuracy"),
    "claims": [{"miner": miners.index(c["miner"]) if c["miner"] in miners else None,
                "device": ["gpu", "cpu"][miners.index(c["miner"])] if c["miner"] in miners else None,
                "valid": c["valid"], "valid_reports": c["valid_reports"],
                "invalid_reports": c["invalid_reports"], "metric": c.get("median_metric")}
               for c in outcome.get("claims", [])],
    "slashes": len(outcome.get("slashes", [])),
}))
PY
)"
