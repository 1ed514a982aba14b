"""`make bench`: measures pot-node against its references on this machine, in one run, and
writes BENCHMARKS.md with tables, ratios and plots.

    python bench/run.py --pot-node target/release/pot-node
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLOTS = ROOT / "bench" / "plots"


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def bench_ledger(pot_e2e: str, pot_node: str, nodes: int, delay: int, rate: int, block_ms: int,
                 client_batch_ms: int = 0) -> dict:
    r = run_json([pot_e2e, "bench-ledger", "--pot-node", pot_node, "--nodes", str(nodes),
                  "--link-delay-ms", str(delay), "--rate", str(rate), "--seconds", "10",
                  "--block-time-ms", str(block_ms), "--client-batch-ms", str(client_batch_ms)])
    print(r, file=sys.stderr)
    return r


def ledger_rows(pot_e2e: str, pot_node: str) -> list[dict]:
    """Finality and throughput for 4, 7 and 10 coordinators, with and without 100 ms links."""
    # The six comparable runs at 1,000 tx/s, then 4 coordinators at twice that load.
    runs = [(nodes, delay, 1000) for delay in (0, 100) for nodes in (4, 7, 10)] + [(4, 0, 2000)]
    return [bench_ledger(pot_e2e, pot_node, nodes, delay, rate, 1000) for nodes, delay, rate in runs]


SUSTAIN_P99_MS = 1000
SUSTAIN_BLOCK_MS = 300
# Batching clients send what is due at most this often, in one `POST /v1/txs`.
CLIENT_BATCH_MS = 5
# Offered loads tried in turn, per kind of client, until one is not sustained.
SUSTAIN_RATES = {0: (1000, 2000, 3000, 3500, 4000, 4500, 5000, 6000),
                 CLIENT_BATCH_MS: (3000, 4000, 4500, 5000, 5500, 6000, 7000, 8000)}


def sustains(r: dict) -> bool:
    """Every offered transaction included, none refused, p99 finality within the bound."""
    return r["refused"] == 0 and r["included"] == r["offered"] and r["p99_ms"] <= SUSTAIN_P99_MS


def sustained_rows(pot_e2e: str, pot_node: str) -> list[dict]:
    """4 coordinators at rising offered load until one rate is not sustained, first with one
    request per transaction, then with batching clients."""
    rows = []
    for client_batch_ms, rates in SUSTAIN_RATES.items():
        for rate in rates:
            r = bench_ledger(pot_e2e, pot_node, 4, 0, rate, SUSTAIN_BLOCK_MS, client_batch_ms)
            rows.append(r)
            if not sustains(r):
                break
    return rows


def clients(r: dict) -> str:
    ms = r.get("client_batch_ms", 0)
    return "one request per tx" if ms == 0 else f"batching, ≤ {ms} ms"


def best_sustained(rows: list[dict], client_batch_ms: int) -> int:
    return max((r["offered_tps"] for r in rows
                if r.get("client_batch_ms", 0) == client_batch_ms and sustains(r)), default=0)


def block_cost_rows(pot_node: str) -> list[dict]:
    rows = []
    for accounts in (10_000, 100_000, 1_000_000):
        r = run_json([pot_node, "bench", "block-cost", "--accounts", str(accounts), "--txs", "1000", "--blocks", "5"])
        print(r, file=sys.stderr)
        rows.append(r)
    return rows


def plot_block_cost(rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [r["accounts"] for r in rows]
    ax.plot(xs, [r["block_ms"] for r in rows], marker="o", label="this design: execute + root + changed rows")
    ax.plot(xs, [r["block_ms"] + r["whole_state_ms"] for r in rows], marker="o",
            label="plus the whole-state rewrite (encode + hash + one row)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("accounts in the state")
    ax.set_ylabel("ms per block of 1,000 transfers")
    ax.set_title("A block's cost against the size of the state")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "block_cost.png", dpi=110)


def plot_sustained(rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for client_batch_ms, style in ((0, "o-"), (CLIENT_BATCH_MS, "s-")):
        series = [r for r in rows if r.get("client_batch_ms", 0) == client_batch_ms]
        if not series:
            continue
        xs = [r["offered_tps"] for r in series]
        name = clients(series[0])
        ax.plot(xs, [r["p99_ms"] / 1000 for r in series], style, label=f"p99, {name}")
        ax.plot(xs, [r["p50_ms"] / 1000 for r in series], style, alpha=0.45, label=f"p50, {name}")
    ax.axhline(SUSTAIN_P99_MS / 1000, color="grey", linestyle="--", linewidth=1, label="bound: p99 1 s")
    ax.set_xlabel(f"offered tx/s (4 coordinators, {SUSTAIN_BLOCK_MS} ms blocks)")
    ax.set_ylabel("finality from scheduled send (s)")
    ax.set_title("Sustained load on 4 coordinators")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "ledger_sustained.png", dpi=110)


def plot_ledger(rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r['nodes']} nodes\n{r['link_delay_ms']} ms\n{r['offered_tps']:,} tx/s" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["p50_ms"] / 1000 for r in rows], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r["p99_ms"] / 1000 for r in rows], 0.4, label="p99")
    ax.axhline(1.5, color="grey", linestyle="--", linewidth=1, label="goal p99 (4 nodes): 1.5 s")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("finality (s)")
    ax.set_title("Submission to block, 1 s blocks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "ledger_finality.png", dpi=110)


def block_cost_section(costs: list[dict]) -> list[str]:
    lines = [
        "",
        "## Ledger: a block's cost against the size of the state",
        "",
        "What a coordinator pays per block of 1,000 transfers (signatures already checked, as for a proposal whose",
        "transactions its mempool holds): executing it on a copy of the state, the state root, and storing the block",
        "with the rows it changed — against the work the earlier whole-state design added per block for the same state",
        "(encoding all of it, hashing that for the root, writing it as one row; its deep copy of the state is not",
        "counted, so the reference is a lower bound). Median of 5 blocks; `pot-node bench block-cost`. Goal: a block's",
        "cost grows with its transactions times the depth of the state's Merkle paths and B-tree pages (logarithmic in",
        "the size of the state), not with the size of the state; the ratio is the whole-state work ÷ this design's whole",
        "block (`make bench`, or `bench/run.py --only block-cost` for this section alone).",
        "",
        "![block cost](bench/plots/block_cost.png)",
        "",
        "| accounts | state encoding | this design ms/block | whole-state rewrite ms/block | ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in costs:
        lines.append(
            f"| {r['accounts']:,} | {r['state_bytes'] / 2**20:.1f} MiB | {r['block_ms']:.1f} | {r['whole_state_ms']:.1f} | "
            f"**{r['whole_state_ms'] / r['block_ms']:.2f}** |"
        )
    return lines


CUDA_RESULTS = ROOT / "bench" / "cuda" / "gpu-check.jsonl"


def cuda_section() -> list[str]:
    """The CUDA section, from the last `node-image/gpu-check.sh` run on a GPU machine (saved in
    bench/cuda/gpu-check.jsonl: a GPU is lent to some sessions only, so `make bench` cannot
    measure it here)."""
    lines = ["", "## CUDA", ""]
    if not CUDA_RESULTS.exists():
        return lines + [
            "Unproven: `node-image/gpu-check.sh` has not been run on a GPU machine yet.", ""]
    try:
        return lines + cuda_lines([json.loads(l) for l in CUDA_RESULTS.read_text().splitlines() if l.strip()])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        # A partial file (the script stopped half-way) must not cost the rest of `make bench`.
        return lines + [f"`{CUDA_RESULTS.relative_to(ROOT)}` could not be read ({type(e).__name__}: {e}); run",
                        "`node-image/gpu-check.sh` on a GPU machine again.", ""]


def cuda_lines(recs: list[dict]) -> list[str]:
    head = recs[0]
    checks = {r["check"]: r for r in recs if "check" in r}
    replays = [r for r in recs if "replay" in r]
    benches = [r for r in recs if "bench" in r]
    ok = lambda name: "yes" if checks.get(name, {}).get("ok") else "**no**"  # noqa: E731
    gpu = head["gpu"].split(" (UUID")[0].removeprefix("GPU 0: ")
    value = lambda name: f"{checks[name]['value']:.3f}" if name in checks else "–"  # noqa: E731
    lines = [
        f"Measured {head['date']} on one {gpu} (host CPU: {head['cpu']}), by `node-image/gpu-check.sh` with the",
        f"`cuda` build of `pot-node` (`make gpu-bundle`) against that machine's PyTorch {head['torch']}. The figures are",
        "copied from `bench/cuda/gpu-check.jsonl`, which that script writes; `make bench` renders them, it cannot",
        "measure them on a machine without a GPU.",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| libtorch in `pot-node` trains on the GPU (`--device cuda`) | {'yes' if 'gpu_held_out_accuracy' in checks else '**no**'} |",
        f"| W_0 of a GPU run is byte for byte the CPU run's | {ok('w0_same_on_gpu_and_cpu')} |",
        f"| held-out accuracy of the GPU run (MLP 64-32, digits, 1,000 steps) | {value('gpu_held_out_accuracy')} |",
        f"| held-out accuracy of a GPU LeNet-5 run (AdamW, 1,000 steps) | {value('lenet5_gpu_held_out_accuracy')} |",
        f"| the GPU run verifies on the GPU within the task's tolerance (10⁻⁴) | {ok('gpu_run_verifies_on_gpu')} |",
        f"| a checkpoint replaced by an earlier one fails verification | {ok('tampered_checkpoint_fails')} |",
        devnet_row(checks.get("devnet_gpu")),
        "",
        "**Honest replay distances** — what a verifier sees when the replaying machine differs from the trainer's: the",
        "relative L2 distance between each replayed segment's end and the committed checkpoint (today's check, over the",
        "model's parameters; 0 is bit-exact). These are the first measurements for the tolerance calibration of",
        "\"Sound verification\". The large LeNet-5 segment-0 figure is probably AdamW's first steps (not yet confirmed):",
        "with the second moment near zero an update is about lr·sign(g), so a gradient near zero whose sign differs",
        "between machines moves a weight by a whole step; a tolerance must allow for it or compare per tensor.",
        "",
        "| trained on → replayed on | model | segment 0 | segment 1 | segment 4 | segment 9 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in replays:
        model, src, _, dst = r["replay"].split("_")
        # Reports before per-tensor comparison had one `distance`; now `parameters` is its like.
        segs = {s["index"]: s.get("distance", s.get("parameters", 0.0))
                for s in (r["report"] or {}).get("segments", [])}
        cell = lambda i: "–" if i not in segs else ("0" if segs[i] == 0 else f"{segs[i]:.1e}")  # noqa: E731
        lines.append(f"| {src.upper()} → {dst.upper()} | {'MLP 64-32, SGD' if model == 'mlp' else 'LeNet-5, AdamW'} | "
                     + " | ".join(cell(i) for i in (0, 1, 4, 9)) + " |")
    lines += [
        "",
        "**Training steps/s on the GPU**, `pot-node bench throughput` against `bench/train_steps.py` (PyTorch), same",
        "model, batch and data, batches cut on the CPU and moved, one run each. Models this small are bound by kernel",
        "launches and host work, not by the GPU.",
        "",
        "![CUDA training steps](bench/plots/cuda_steps.png)",
        "",
        "| model | batch | pot-node steps/s | PyTorch steps/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for b in benches:
        ours, ref = b["pot_node"], b["pytorch"]
        lines.append(f"| {ours['model']} | {ours['batch']} | {ours['steps_per_second']:,.0f} | "
                     f"{ref['steps_per_second']:,.0f} | **{ours['steps_per_second'] / ref['steps_per_second']:.2f}** |")
    if benches:
        plot_cuda_steps(benches, gpu)
    return lines + [""]


def devnet_row(d: dict | None) -> str:
    """The PoT loop on the GPU machine: `pot-node devnet` with a GPU miner and a CPU miner, each
    claim replayed by a GPU and a CPU validator."""
    name = ("the PoT loop (`pot-node devnet`, 1 coordinator): a GPU miner and a CPU miner, claims replayed by a "
            "GPU and a CPU validator")
    if d is None:
        return f"| {name} | not run |"
    if not d.get("ok"):
        return f"| {name} | **no** (phase {d.get('phase', 'unknown')}) |"
    claims = "; ".join(f"{(c['device'] or '?').upper()} miner's claim {'valid' if c['valid'] else '**invalid**'} "
                       f"({c['valid_reports']} valid, {c['invalid_reports']} invalid reports)" for c in d["claims"])
    acc = d.get("winner_held_out_accuracy")
    return (f"| {name} | finalized in {d['seconds']:.0f} s; {claims}; winner's model "
            f"{'–' if acc is None else f'{acc:.3f}'} held out |")


def plot_cuda_steps(benches: list[dict], gpu: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{b['pot_node']['model']}\nbatch {b['pot_node']['batch']}" for b in benches]
    xs = range(len(benches))
    ax.bar([x - 0.2 for x in xs], [b["pot_node"]["steps_per_second"] for b in benches], 0.4, label="pot-node (tch)")
    ax.bar([x + 0.2 for x in xs], [b["pytorch"]["steps_per_second"] for b in benches], 0.4, label="PyTorch")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("training steps/s")
    ax.set_title(f"Training steps on one {gpu}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "cuda_steps.png", dpi=110)


def splice_section(out: str, head: str, render) -> None:
    """Replace the section of an existing file that starts with `head`, up to the next `## `
    heading, with the lines `render()` gives (their first, blank, line dropped). The file is
    read first, so a missing heading fails before `render` spends minutes measuring."""
    text = pathlib.Path(out).read_text()
    a = text.index(head)
    b = text.find("\n## ", a + len(head))
    rest = "" if b < 0 else text[b:]
    new = "\n".join(render()[1:])
    if not new.endswith("\n"):
        new += "\n"
    pathlib.Path(out).write_text(text[:a] + new + rest)


def ledger_section(ledger: list[dict], sustained: list[dict]) -> list[str]:
    best = best_sustained(sustained, CLIENT_BATCH_MS)
    best_single = best_sustained(sustained, 0)
    lines = [
        "",
        "## Ledger: finality and throughput of the coordinators",
        "",
        "N `pot-node` coordinators (release build) on loopback agree on blocks with Malachite (1 s block time), with",
        "transaction gossip; signed transfers are offered at a fixed rate for 10 s through every coordinator's HTTP API",
        "(64 accounts per coordinator, each sending in nonce order, all at once), and each transaction is timed from its",
        "scheduled send time (so a sender's backlog counts) to the first sight of its block at one coordinator (polled",
        "every 20 ms). Every coordinator checks every transaction's signature. Achieved tx/s counts the transactions in the",
        "blocks decided while load was offered, over the time those blocks span (a chain that falls behind shows less",
        "than it was offered); \"submitting took\" is how long the senders needed for 10 s of load (longer when the",
        "coordinators' APIs could not take the rate, with every process on the same 2 cores). Emulated latency: every consensus and gossip link passes a",
        "relay that delays each byte by that much in each direction (this kernel has no `netem`); at 0 ms they connect",
        "directly (until 2026-11-28 they passed a relay there too, whose copying took CPU from the coordinators). All coordinators and",
        "the load generator share this machine's cores. Goal (4 coordinators, no added latency): ≥ 1,000 tx/s and",
        "p99 finality ≤ 1.5 s; the ratio columns are achieved ÷ goal (higher is better) and goal ÷ p99.",
        "",
        "For scale, not measured here: the PoT paper's PBFT ledger synced 10,000 transactions among 50 nodes in",
        "2.07 s at 125 Mbit/s on a 20-core machine (about 4,800 tx/s).",
        "",
        "![ledger finality](bench/plots/ledger_finality.png)",
        "",
        "| coordinators | link latency | offered tx/s | submitting took | achieved tx/s | ÷ 1,000 | included / offered | p50 finality | p99 finality | 1.5 s ÷ p99 | refused |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ledger:
        lines.append(
            f"| {r['nodes']} | {r['link_delay_ms']} ms | {r['offered_tps']:,} | {r['submit_seconds']:.1f} s | {r['tps']:,.0f} | **{r['tps'] / 1000:.2f}** | "
            f"{r['included'] / r['offered']:.3f} | {r['p50_ms'] / 1000:.2f} s | {r['p99_ms'] / 1000:.2f} s | **{1500 / r['p99_ms']:.2f}** | {r['refused']} |"
        )
    lines += [
        "",
        "### Sustained load: 4 coordinators",
        "",
        f"The same measurement at rising offered load, with {SUSTAIN_BLOCK_MS} ms blocks (with 1 s blocks a transaction that",
        "just missed a proposal waits a whole block, so p99 ≤ 1 s cannot hold whatever the load; in runs by hand on 2026-11-28",
        "300 ms gave a lower p99 than 500 ms, e.g. 0.52 s against 0.79 s at 3,000 tx/s; until then this search used 500 ms). A rate is sustained when every offered transaction is included, none is",
        "refused, and p99 finality from its scheduled send time is ≤ 1 s; each search stops at the first rate that is",
        "not. Two kinds of client: *one request per transaction* (64 accounts per coordinator, each sending its next",
        "transaction when the last is answered, as above), and *batching* (one client per coordinator sends everything",
        f"due in one `POST /v1/txs` at most every {CLIENT_BATCH_MS} ms, as a wallet service or an exchange would; the wait counts in",
        "each transaction's finality). Each transaction is still admitted, signature-checked and gossiped on its own by",
        "every coordinator; what batching saves is the HTTP exchange per transaction, which on this 2-core machine cost",
        "the load generator about 80 µs of CPU per transaction at 4,000 tx/s, nearly what each coordinator spent (about 95 µs). Goal: ≥ 5,000",
        "tx/s (the PoT paper's PBFT reference: about 4,800 tx/s on 50 nodes); the ratio column is offered ÷ 5,000 for",
        "sustained rates. Each rate is one 10 s run, so the edge moves between runs: p99 near the limit varies by a few",
        "tenths of a second (by hand on 2026-11-28, 6,000 batched gave p99 0.72 s in one run and 0.98 s in the next).",
        "",
        f"**Largest sustained load on this machine: {best:,} tx/s with batching clients** ({best / 5000:.2f} of the goal);"
        f" {best_single:,} tx/s with one request per transaction.",
        "",
        "![sustained load](bench/plots/ledger_sustained.png)",
        "",
        "| clients | offered tx/s | achieved tx/s | included / offered | p50 finality | p99 finality | refused | sustained | ÷ 5,000 |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for r in sustained:
        ok = sustains(r)
        lines.append(
            f"| {clients(r)} | {r['offered_tps']:,} | {r['tps']:,.0f} | {r['included'] / r['offered']:.3f} | {r['p50_ms'] / 1000:.2f} s | "
            f"{r['p99_ms'] / 1000:.2f} s | {r['refused']} | {'yes' if ok else 'no'} | {'**%.2f**' % (r['offered_tps'] / 5000) if ok else '–'} |"
        )
    return lines


OPERATOR_HEAD = "## Operator: reconciles under 1,000 TrainingTasks, and the queue-to-replicas time"


def operator_section(r: dict) -> list[str]:
    q = sorted(r["queue_to_replicas_ms"]) or [float("nan")]
    med = q[len(q) // 2]
    lines = [
        "",
        OPERATOR_HEAD,
        "",
        f"`pot-operator` (release build, resync 10 s) against a real control plane (etcd, kube-apiserver,",
        f"kube-controller-manager, kube-scheduler) with {r['kwok_nodes']} kwok nodes (32 CPUs, 8 GPUs each; kwok marks their",
        f"pods Running), {r['networks']} development networks each with a real `pot-node` coordinator (500 ms blocks), and",
        f"{r['tasks']:,} `TrainingTask`s, each from its own funded publisher key, created 16 at a time and followed to their",
        "end (no miner runs, so each ends with the ledger's refund). Reconcile latency comes from the operator's own",
        "histogram (buckets 1.5x apart, interpolated as Prometheus's `histogram_quantile` does); requests are every call",
        "the operator's Kubernetes client made during the run, watches included, divided by all reconciles.",
        f"Measured {datetime.date.today().isoformat()} on {machine()}, where the ten coordinators, etcd, the API server,",
        "kwok and the operator share the cores: a reconcile's time is mostly its calls to a coordinator's HTTP API",
        "(a task's lookup, a network's head and queue; each may wait up to 3 s), so the p99s show a saturated machine.",
        "",
        "| measure | pot-operator | reference | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| queue change to StatefulSet replicas, median of {len(q)} (max) | **{med / 1000:.2f} s** ({q[-1] / 1000:.2f} s) | KEDA's default polling interval: 30 s | {med / 30000:.3f} |",
        f"| {r['tasks']:,} tasks on chain after creation | {r['submit_all_s']:.1f} s | — | — |",
        f"| {r['tasks']:,} tasks ended on chain and in status | {r['end_all_s']:.1f} s | — | — |",
        f"| API requests per reconcile (writes) | {r['requests_per_reconcile']:.2f} ({r['writes_per_reconcile']:.2f}) | — | — |",
        f"| operator memory, RSS at the end (peak) | {r['rss_mib']:.0f} MiB ({r['peak_rss_mib']:.0f} MiB) | — | — |",
        "",
        "| controller | reconciles | p50 | p99 |",
        "| --- | ---: | ---: | ---: |",
    ]
    def ms(v):
        return "> 28 s (beyond the histogram)" if v is None else f"{v:.1f} ms"
    for c, l in r["reconciles"].items():
        lines.append(f"| {c} | {l['count']:.0f} | {ms(l['p50_ms'])} | {ms(l['p99_ms'])} |")
    lines += ["", f"API requests in all: {r['api_requests']:,.0f}, of which writes {r['api_writes']:,.0f} (status, Events, the Lease)."]
    lines += ["", "Goal: queue change to replicas ≤ 2 s (the operator polls each followed network's queue every second)."]
    return lines


def measured_operator_section(pot_e2e: str, pot_operator: str, pot_node: str) -> list[str]:
    r = run_json([pot_e2e, "bench-operator", "--pot-operator", pot_operator, "--pot-node", pot_node])
    print(r, file=sys.stderr)
    return operator_section(r)


def measured_ledger_section(pot_e2e: str, pot_node: str) -> list[str]:
    ledger = ledger_rows(pot_e2e, pot_node)
    plot_ledger(ledger)
    sustained = sustained_rows(pot_e2e, pot_node)
    plot_sustained(sustained)
    return ledger_section(ledger, sustained)


TRAIN_STEPS_RUNS = [
    # model, data, steps per timing, batches
    ("mlp:128,64", "digits", 1000, (64, 256)),
    ("lenet5", "digits", 300, (64, 256)),
    ("resnet-small", "cifar-shaped", 20, (64,)),
]


def train_steps_rows(pot_node: str) -> list[tuple]:
    py = sys.executable
    rows = []
    for model, data, steps, batches in TRAIN_STEPS_RUNS:
        for batch in batches:
            for threads in (1, 2):
                args = ["--model", model, "--data", data, "--batch", str(batch), "--threads", str(threads),
                        "--steps", str(steps)]
                # Three rounds, alternating which side goes first, so that a burst of other work
                # on the machine hits both sides alike; the median of each side is reported.
                ours, ref = [], []
                for r in range(3):
                    sides = [("ours", [pot_node, "bench", "throughput", *args]),
                             ("ref", [py, str(ROOT / "bench/train_steps.py"), *args])]
                    for side, cmd in (sides if r % 2 == 0 else sides[::-1]):
                        env = REFERENCE_ENV if side == "ref" else None
                        (ours if side == "ours" else ref).append(run_json(cmd, env)["steps_per_second"])
                rows.append((model, data, batch, threads, statistics.median(ours), statistics.median(ref)))
                print(rows[-1], file=sys.stderr)
    return rows


def plot_train_steps(rows: list[tuple]) -> None:
    labels = [f"{m}\nb{b} t{t}" for m, _, b, t, _, _ in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar([x - 0.2 for x in xs], [r[4] for r in rows], 0.4, label="pot-node (Rust, tch)")
    ax.bar([x + 0.2 for x in xs], [r[5] for r in rows], 0.4, label="PyTorch (Python)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("training steps / s")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Training throughput: digits (MLP, LeNet-5) and 32×32 images (ResNet), SGD with momentum")
    fig.tight_layout()
    fig.savefig(PLOTS / "train_steps.png", dpi=110)


def train_steps_section(rows: list[tuple]) -> list[str]:
    lines = [
        "",
        "## Training throughput: pot-node against PyTorch in Python",
        "",
        "Same model, data, batch size, optimizer (SGD, lr 0.01, momentum 0.9), loss and thread count (`bench/run.py --only",
        "train-steps` re-measures this section alone). The MLP and LeNet-5 train on the 1,797 UCI digits (8×8); the small",
        "ResNet (three residual stages, batch norm) on CIFAR-10-shaped data (2,048 random 3×32×32 images, 10 classes), where",
        "the convolutions, not Python's dispatch, take the time.",
        "pot-node's optimizer keeps its state in named tensors (so it can be checkpointed); PyTorch uses `torch.optim.SGD`.",
        "pot-node keeps freed memory in glibc's heap for reuse while training (`mallopt`; glibc's default unmaps large",
        "freed blocks, so each step maps and zeroes them again) and pins MKL's reproducible AVX2 path (`MKL_CBWR`);",
        "PyTorch runs with the same allocator settings (`GLIBC_TUNABLES`) and the same `MKL_CBWR`.",
        "Goal: ratio ≥ 1.0 everywhere, ≥ 1.2 on the small models.",
        "",
        "![training throughput](bench/plots/train_steps.png)",
        "",
        "| model | data | batch | threads | pot-node steps/s | PyTorch steps/s | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m, data, b, t, ours, ref in rows:
        lines.append(f"| {m} | {data} | {b} | {t} | {ours:,.1f} | {ref:,.1f} | **{ours / ref:.2f}** |")
    return lines


def measured_train_steps_section(pot_node: str) -> list[str]:
    rows = train_steps_rows(pot_node)
    plot_train_steps(rows)
    return train_steps_section(rows)


CALIBRATION_TASK = """model: {model}
dataset:
  locator: builtin:digits
  sha256: 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
optimizer: {optimizer}
batch_size: 64
steps: 400
checkpoint_interval: 40
seed: 7
replay_tolerance: 0.5
"""

CALIBRATION_MODELS = [
    ("mlp:128,64", "MLP 128-64, SGD", "{kind: sgd, lr: 0.05, momentum: 0.9}"),
    ("lenet5", "LeNet-5, AdamW", "{kind: adamw, lr: 0.002, weight_decay: 0.0001}"),
]

# (threads, ATEN_CPU_CAPABILITY) of the training run, then of each replay.
CALIBRATION_TRAIN = (2, "avx2")
CALIBRATION_REPLAYS = [(1, "avx2"), (3, "avx2"), (2, "default")]


def calibration_rows(pot_node: str) -> list[dict]:
    """Honest replay distances on this CPU: a run trained with one thread count and kernel level,
    replayed with others (a tolerance task, so every segment is reported)."""
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for model, label, optimizer in CALIBRATION_MODELS:
            task = tmp / f"{model.replace(':', '_')}.yaml"
            task.write_text(CALIBRATION_TASK.format(model=model, optimizer=optimizer))
            run = tmp / f"run-{model.replace(':', '_')}"
            threads, cap = CALIBRATION_TRAIN
            subprocess.run([pot_node, "train", "--spec", str(task), "--out", str(run), "--threads", str(threads),
                            "--cpu-capability", cap, "--data-cache", str(tmp / "cache")],
                           check=True, capture_output=True)
            m = json.loads((run / "manifest.json").read_text())
            claim = ["--miner", m["miner"], "--salt", m["salt"], "--checkpoint-root", m["merkle_root"],
                     "--model-hash", m["model_hash"]]
            for threads, cap in CALIBRATION_REPLAYS:
                out = subprocess.run([pot_node, "verify", "--spec", str(task), "--run", str(run), *claim,
                                      "--segments", ",".join(str(i) for i in range(10)), "--threads", str(threads),
                                      "--cpu-capability", cap, "--data-cache", str(tmp / "cache")],
                                     capture_output=True, text=True)
                # At another kernel level W_0 itself is drawn differently (so verify fails the
                # claim); the segments, replayed from the committed checkpoints, are what counts.
                r = json.loads(out.stdout)
                segs = r["segments"]
                rows.append({"model": label, "replay": (threads, cap),
                             "parameters": max(s["parameters"] for s in segs),
                             "optimizer": max(s["optimizer"] for s in segs),
                             "first_parameters": segs[0]["parameters"], "first_optimizer": segs[0]["optimizer"]})
                print(rows[-1], file=sys.stderr)
    return rows


def calibration_section(rows: list[dict]) -> list[str]:
    t, c = CALIBRATION_TRAIN
    lines = [
        "",
        "## Verification: honest replay distances on CPUs (tolerance calibration)",
        "",
        "What a tolerance must allow, measured on this machine's CPU (`bench/run.py --only calibration`): a run of 400",
        f"steps (k = 40) trained with {t} threads at `ATEN_CPU_CAPABILITY={c}`, every segment replayed with another thread",
        "count or kernel level; the largest relative distance `‖replayed − committed‖ / ‖committed‖` of any model tensor",
        "and of any optimizer-state tensor over the ten segments. Tasks without a tolerance never see these: they pin",
        "kernels and the thread count and replay bit for bit (see README). GPU-against-CPU distances, measured on an H100,",
        "are in the CUDA section; the default `optimizer_tolerance` is thirty times `replay_tolerance`, because optimizer",
        "state drifts 10–15 times further than parameters here (the ratio column); AdamW's first steps on another device move a",
        "parameter by a whole lr·sign(g) (1.4e-2 on the H100), so GPU tasks need a tolerance of that order or a first",
        "segment replayed on the trainer's device class. `W_0` itself is drawn differently at another kernel level",
        "(libtorch's vectorised random draws), so the level is part of what every task pins (`avx2` by default).",
        "",
        "| model | replayed with | largest model-tensor distance | largest optimizer-tensor distance | ratio |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        threads, cap = r["replay"]
        ratio = f"{r['optimizer'] / r['parameters']:.1f}" if r["parameters"] else "–"
        plural = "s" if threads > 1 else ""
        lines.append(f"| {r['model']} | {threads} thread{plural}, {cap} | {r['parameters']:.1e} | "
                     f"{r['optimizer']:.1e} | {ratio} |")
    return lines


def measured_calibration_section(pot_node: str) -> list[str]:
    return calibration_section(calibration_rows(pot_node))


VERIFICATION_RUNS = [
    # model, steps, k, spliced runs judged: the catch rate over many spliced runs at 100
    # segments, and the cost at longer runs where the replay floor (s + Q)·k / steps is lower.
    ("mlp:128,64", 2000, 20, 40),
    ("lenet5", 2000, 20, 20),
    ("mlp:128,64", 40000, 100, 0),
    ("lenet5", 10000, 50, 0),
]


# The PyTorch side runs with what pot-node sets for itself: glibc's allocator keeping freed
# memory for reuse (pot-node calls mallopt with these values; glibc reads the same tunables from
# the environment) and MKL's reproducible AVX2 path (pot-node re-runs itself with it).
REFERENCE_ENV = {
    **os.environ,
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
                      ":glibc.malloc.top_pad=67108864",
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
}


def verification_rows(pot_node: str) -> list[dict]:
    rows = []
    for model, steps, k, trials in VERIFICATION_RUNS:
        r = run_json([pot_node, "bench", "verification", "--model", model, "--steps", str(steps), "--k", str(k),
                      "--s", "5", "--q", "3", "--trials", str(trials)])
        print(r, file=sys.stderr)
        rows.append(r)
    return rows


def plot_verification(rows: list[dict]) -> None:
    judged = [r for r in rows if r["trials"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = range(len(judged))
    ax.bar([x - 0.2 for x in xs], [100 * r["caught"] / r["trials"] for r in judged], 0.4, label="s = 5 sampled + top-Q 3")
    ax.bar([x + 0.2 for x in xs], [100 * r["caught_by_sample_alone"] / r["trials"] for r in judged], 0.4,
           label="s = 5 sampled alone")
    ax.axhline(99, color="grey", linestyle="--", linewidth=1, label="goal: 99 %")
    ax.set_xticks(list(xs), [f"{r['model']}\n{r['steps'] // r['checkpoint_interval']} segments, {r['trials']} runs" for r in judged],
                  fontsize=8)
    ax.set_ylabel("one-segment splices caught (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title("Splices to a foreign model caught, per spliced run")
    fig.tight_layout()
    fig.savefig(PLOTS / "verification_catch.png", dpi=110)


def verification_section(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "## Verification: what it costs and what it catches",
        "",
        "A validator's full `verify` of an honest run (`pot-node bench verification`, or `bench/run.py --only verification`",
        "for this section alone): every checkpoint read from disk, hashed and proved against the root, every update norm",
        "`‖W_{i+1} − W_i‖`, then s = 5 beacon-sampled segments, the Q = 3 with the largest updates and the segment before",
        "each of those (a jump can be prepared in the optimizer state it starts from) replayed bit for bit, one thread,",
        "timed against the same run's training. A validator fetches every checkpoint; the transfer column is",
        "their bytes at 1 Gbit/s against the training time. Then many spliced runs: each follows the honest run to a",
        "random segment j, jumps there to another miner's finished model (its parameters and optimizer state), and trains",
        "on honestly; each is judged with a fresh random sample, with and without the top-Q check. Goal: ≥ 99 % caught at",
        "≤ 5 % of the training time, transfer included. What this does not measure: a jump spread thinly over more than",
        "Q segments, each smaller than the Q-th largest honest update, is caught only by the sample (s/n per segment).",
        "",
        "![splices caught](bench/plots/verification_catch.png)",
        "",
        "| model | steps | k | segments | training s | verify s | verify | + transfer (1 Gbit/s) | splices caught, top-Q | by the sample alone |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        n = r["steps"] // r["checkpoint_interval"]
        total = r["verify_fraction"] + r["transfer_fraction_1gbps"]
        caught = f"**{r['caught']}/{r['trials']}**" if r["trials"] else "–"
        alone = f"{r['caught_by_sample_alone']}/{r['trials']}" if r["trials"] else "–"
        lines.append(f"| {r['model']} | {r['steps']:,} | {r['checkpoint_interval']} | {n} | {r['train_seconds']:.2f} | "
                     f"{r['verify_seconds']:.2f} | {100 * r['verify_fraction']:.1f} % | **{100 * total:.1f} %** | {caught} | {alone} |")
    return lines


def measured_verification_section(pot_node: str) -> list[str]:
    rows = verification_rows(pot_node)
    plot_verification(rows)
    return verification_section(rows)


def measured_block_cost_section(pot_node: str) -> list[str]:
    costs = block_cost_rows(pot_node)
    plot_block_cost(costs)
    return block_cost_section(costs)


LOOP_WINDOWS = ("windows: { commit: 10, reveal: 4, eval_reveal: 4, report_commit: 30, report_reveal: 12, "
                "challenge: 2, challenge_reveal: 1, vote: 1, vote_reveal: 1 }")


def window_blocks(windows: str) -> int:
    """The blocks a task's phase windows add up to."""
    return sum(int(part.split(":")[1]) for part in windows.split("{")[1].split("}")[0].split(","))


def loop_task(path: pathlib.Path, steps: int, windows: str) -> None:
    """The digits example with `steps` steps and other phase windows."""
    text = (ROOT / "node-image/node/tasks/digits-mlp.yaml").read_text()
    out = []
    for line in text.splitlines():
        if line.startswith("steps:"):
            line = f"steps: {steps}"
        elif line.startswith("windows:"):
            line = windows
        out.append(line)
    path.write_text("\n".join(out) + "\n")


def devnet(pot_node: str, task: pathlib.Path, miners: int, tasks: int, workdir: pathlib.Path) -> dict:
    d = workdir / f"net-{miners}-{tasks}-{task.stem}"
    subprocess.run([pot_node, "devnet", "--coordinators", "4", "--validators", "3", "--miners", str(miners),
                    "--tasks", str(tasks), "--task", str(task), "--block-time-ms", "500", "--dir", str(d),
                    "--timeout", "1800"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((d / "summary.json").read_text())


def pot_loop_rows(pot_node: str) -> tuple[list[dict], dict]:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="pot-bench-loop-") as tmp:
        tmp = pathlib.Path(tmp)
        tiny = tmp / "tiny.yaml"
        loop_task(tiny, 200, LOOP_WINDOWS)
        rows = []
        for miners in (1, 2, 4):
            s = devnet(pot_node, tiny, miners, 4, tmp)
            ended = max(s["task_seconds"])
            finalized = sum(1 for t in s["tasks"] if t["phase"] == "finalized")
            won = sum(1 for t in s["tasks"] if (t["task"]["status"].get("finalized") or {}).get("winner"))
            rows.append({"miners": miners, "tasks": len(s["tasks"]), "finalized": finalized, "won": won,
                         "seconds": ended, "per_minute": won * 60 / ended})
            print(rows[-1], file=sys.stderr)
        # One realistic task: submission to finalization beside plain training.
        digits = tmp / "digits.yaml"
        digits_windows = ("windows: { commit: 30, reveal: 4, eval_reveal: 4, report_commit: 20, "
                          "report_reveal: 4, challenge: 2, challenge_reveal: 1, vote: 1, vote_reveal: 1 }")
        loop_task(digits, 2000, digits_windows)
        t0 = time.perf_counter()
        subprocess.run([pot_node, "train", "--file", str(digits), "--out", str(tmp / "plain")], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        plain = time.perf_counter() - t0
        m = json.loads((tmp / "plain" / "manifest.json").read_text())
        s = devnet(pot_node, digits, 1, 1, tmp)
        real = {"plain_train_seconds": plain, "submission_to_final_seconds": s["task_seconds"][0],
                "blocks": window_blocks(digits_windows), "block_seconds": 0.5, "phase": s["tasks"][0]["phase"],
                # Training proper in the plain run: its steps without taking and storing checkpoints.
                "plain_steps_seconds": m["train_seconds"] - m.get("checkpoint_seconds", 0.0),
                "work_seconds": s.get("work_seconds", {}),
                "coordinator_cpu_seconds": s.get("coordinator_cpu_seconds", 0.0)}
        print(real, file=sys.stderr)
        return rows, real


def pot_loop_section(rows: list[dict], real: dict) -> list[str]:
    lines = [
        "",
        "## The PoT loop on a devnet: tasks finalized per minute, submission to finalization",
        "",
        "`pot-node devnet` on this machine (`bench/run.py --only pot-loop`): 4 coordinators (0.5 s blocks), 3 validators,",
        "1, 2 or 4 miners, every node a process; 4 copies of a tiny digits task (200 steps, so the protocol dominates) are",
        f"submitted at once and followed to finalization. Each task's windows add up to {window_blocks(LOOP_WINDOWS)} blocks. Tasks per minute =",
        "tasks finalized with a winner (a valid claim, paid) ÷ time from the first submission to the last finalization.",
        "With the windows this short the phases, not the miners, bound throughput.",
        "",
        "| miners | tasks | finalized | with a winner | seconds | tasks / minute |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['miners']} | {r['tasks']} | {r['finalized']} | {r['won']} | {r['seconds']:.0f} | "
                     f"**{r['per_minute']:.1f}** |")
    ratio = real["submission_to_final_seconds"] / real["plain_train_seconds"]
    lines += [
        "",
        "One realistic task, the digits MLP of `node-image/node/tasks/digits-mlp.yaml` (2,000 steps, k = 50) with windows",
        f"of {real['blocks']} blocks in all: plain training (`pot-node train`) took {real['plain_train_seconds']:.1f} s; from",
        f"submission to finalization on the devnet took {real['submission_to_final_seconds']:.0f} s "
        f"(**{ratio:.1f}×**, phase {real['phase']}). The windows, not the work, set that time: the chain waits for",
        "each window to close so that nobody can act on what others revealed.",
    ]
    return lines + cost_split_lines(real)


# The parts of a task's cost, in the order a task meets them: (key in work_seconds, what it is).
COST_PARTS = [
    ("training", "training (the miner's steps)"),
    ("checkpointing", "checkpointing (take, hash, store and publish every k steps)"),
    ("transfer", "transfer (datasets, run index and checkpoints fetched over libp2p)"),
    ("replay_sampled", "replay of the beacon's sampled segments"),
    ("replay_top_q", "replay of the top-Q (largest-update) segments"),
    ("evaluation", "evaluation of the final model on the eval set"),
    ("consensus", "consensus (the coordinators' CPU: BFT, block execution, API)"),
]


def cost_split_lines(real: dict) -> list[str]:
    """Where the realistic task's cost went, from the nodes' own work counters
    (`/v1/node/status`'s work_seconds) and the coordinators' CPU time, as fractions of plain
    training (the same task's steps in `pot-node train`, without checkpoints)."""
    work = dict(real.get("work_seconds") or {})
    if not work:
        return []
    work["consensus"] = real["coordinator_cpu_seconds"]
    plain = real["plain_steps_seconds"]
    lines = [
        "",
        f"**The task's cost split**, summed over the nodes that did the work (1 miner, 3 validators; each node counts",
        "its own seconds per kind of work and reports them in `GET /v1/node/status`), as a fraction of plain",
        f"training: the same task's steps in `pot-node train` without checkpoints, {plain:.2f} s. Consensus is the",
        "4 coordinators' CPU time over the network's life, empty blocks included: on a task this small it dwarfs",
        "the rest, and it does not grow with the task's size.",
        "",
        "![Whole-task cost split](bench/plots/pot_cost_split.png)",
        "",
        "| part | seconds | ÷ plain training |",
        "| --- | ---: | ---: |",
    ]
    for key, name in COST_PARTS:
        seconds = work.get(key, 0.0)
        lines.append(f"| {name} | {seconds:.2f} | **{seconds / plain:.2f}** |")
    verification = sum(work.get(k, 0.0) for k in ("transfer", "replay_sampled", "replay_top_q", "evaluation"))
    lines += ["", f"Everything but consensus: {sum(work.get(k, 0.0) for k, _ in COST_PARTS[:-1]) / plain:.2f}× plain "
              f"training, of which verification (transfer, replays, evaluation, by 3 validators) "
              f"{verification / plain:.2f}×. Transfer is the largest part of it: each validator fetches every",
              "checkpoint of the claim (the run is checked whole, under its Merkle root), eight requests ahead of the one",
              f"it reads, on a {os.cpu_count()}-core machine that the coordinators and the other nodes share. Seconds are wall",
              "time of the work on each node, so they include waiting for a core."]
    plot_cost_split(work, plain)
    return lines


def plot_cost_split(work: dict, plain: float) -> None:
    names = [k.replace("_", " ") for k, _ in COST_PARTS]
    fractions = [max(work.get(k, 0.0) / plain, 1e-3) for k, _ in COST_PARTS]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names[::-1], fractions[::-1], color="#4477aa")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("seconds ÷ plain training (log; dashed = plain training)")
    ax.set_title("One digits task on the devnet: where the cost goes")
    fig.tight_layout()
    fig.savefig(PLOTS / "pot_cost_split.png", dpi=110)


def measured_pot_loop_section(pot_node: str) -> list[str]:
    rows, real = pot_loop_rows(pot_node)
    return pot_loop_section(rows, real)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pot-node", required=True)
    ap.add_argument("--pot-e2e", help="needed unless --only")
    ap.add_argument("--pot-operator", help="needed for the operator section")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--only", choices=["ledger", "block-cost", "cuda", "verification", "train-steps", "calibration",
                                       "pot-loop", "operator"],
                    help="re-measure (ledger, block-cost, verification) or re-render (cuda) one section of an "
                         "existing file")
    a = ap.parse_args()
    if a.only in (None, "ledger", "operator") and not a.pot_e2e:
        ap.error("--pot-e2e is needed to measure the ledger and the operator")
    if a.only in (None, "operator") and not a.pot_operator:
        ap.error("--pot-operator is needed to measure the operator")
    PLOTS.mkdir(parents=True, exist_ok=True)
    if a.only == "block-cost":
        splice_section(a.out, "## Ledger: a block's cost against the size of the state",
                       lambda: measured_block_cost_section(a.pot_node))
        return
    if a.only == "cuda":
        splice_section(a.out, "## CUDA", cuda_section)
        return
    if a.only == "train-steps":
        splice_section(a.out, "## Training throughput: pot-node against PyTorch in Python",
                       lambda: measured_train_steps_section(a.pot_node))
        return
    if a.only == "calibration":
        splice_section(a.out, "## Verification: honest replay distances on CPUs (tolerance calibration)",
                       lambda: measured_calibration_section(a.pot_node))
        return
    if a.only == "verification":
        splice_section(a.out, "## Verification: what it costs and what it catches",
                       lambda: measured_verification_section(a.pot_node))
        return
    if a.only == "pot-loop":
        splice_section(a.out, "## The PoT loop on a devnet",
                       lambda: measured_pot_loop_section(a.pot_node))
        return
    if a.only == "operator":
        splice_section(a.out, OPERATOR_HEAD, lambda: measured_operator_section(a.pot_e2e, a.pot_operator, a.pot_node))
        return
    if a.only == "ledger":
        splice_section(a.out, "## Ledger: finality and throughput of the coordinators",
                       lambda: measured_ledger_section(a.pot_e2e, a.pot_node))
        return
    PLOTS.mkdir(parents=True, exist_ok=True)
    # Both sides run libtorch's kernels at the same level (pot-node pins avx2 for replays).
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    import torch

    over = []
    for model, steps in [("mlp:128,64", 10000), ("lenet5", 2000)]:
        for k in (10, 50, 200):
            if steps % k:
                continue
            o = run_json([a.pot_node, "bench", "overhead", "--model", model, "--steps", str(steps), "--k", str(k), "--segments", "5"])
            over.append(o)
            print(o, file=sys.stderr)

    # PoT overhead by checkpoint interval.
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for model in sorted({o["model"] for o in over}):
        pts = [o for o in over if o["model"] == model]
        ax.plot([o["checkpoint_interval"] for o in pts], [100 * o["overhead"] for o in pts], marker="o", label=model)
    ax.axhline(3, color="grey", linestyle="--", linewidth=1, label="goal at k=50: 3 %")
    ax.set_xscale("log")
    ax.set_xlabel("checkpoint interval k (steps)")
    ax.set_ylabel("PoT overhead (%)")
    ax.legend()
    ax.set_title("Checkpointing + hashing + writing, vs training time")
    fig.tight_layout()
    fig.savefig(PLOTS / "pot_overhead.png", dpi=110)

    train_steps_lines = measured_train_steps_section(a.pot_node)
    verification_lines = measured_verification_section(a.pot_node)
    verification_lines += measured_calibration_section(a.pot_node)
    ledger_lines = measured_ledger_section(a.pot_e2e, a.pot_node)
    block_cost_lines = measured_block_cost_section(a.pot_node)
    pot_loop_lines = measured_pot_loop_section(a.pot_node)
    operator_lines = measured_operator_section(a.pot_e2e, a.pot_operator, a.pot_node)

    today = datetime.date.today().isoformat()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {today}. Machine: {machine()}.",
        f"pot-node: release build, libtorch 2.11.0 (CPU, `ATEN_CPU_CAPABILITY=avx2`); reference: PyTorch {torch.__version__} in Python {platform.python_version()}, eager mode.",
        "Every ratio compares two measurements taken in the same run on the same machine. A 2-core machine is noisy:",
        "each throughput figure is the median over 3 rounds (alternating which side runs first) of the median of 5 timings",
        "after 20 warm-up steps; differences under about 15 % are within that noise.",
    ]
    lines += train_steps_lines
    lines += [
        "",
        "## PoT overhead: checkpointing and verification against plain training",
        "",
        "Overhead = time spent making checkpoints (canonical safetensors bytes of parameters and optimizer state every k",
        "steps, SHA-256, written to disk, Merkle root) ÷ time spent training, in the same run, one thread, batch 64; the two",
        "are timed apart so that machine noise does not swamp a few per cent.",
        "Verification = checking `W_0` against the run seed and replaying s = 5 segments of k steps, as a fraction of the",
        "plain training time; its floor is s·k / steps. Goals: overhead ≤ 3 % at k = 50; verification ≤ 5 % (which needs",
        "steps ≥ 100·s·k, e.g. 5,000 steps at k = 10).",
        "",
        "![PoT overhead](bench/plots/pot_overhead.png)",
        "",
        "| model | steps | k | training s | checkpoints s | overhead | verify (s = 5) | floor s·k/steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in over:
        floor = 5 * o["checkpoint_interval"] / o["steps"]
        lines.append(
            f"| {o['model']} | {o['steps']} | {o['checkpoint_interval']} | {o['train_seconds']:.2f} | {o['checkpoint_seconds']:.3f} | "
            f"**{100 * o['overhead']:.1f} %** | {100 * o['verify_fraction']:.1f} % | {100 * floor:.1f} % |"
        )
    lines += verification_lines
    lines += ledger_lines
    lines += block_cost_lines
    lines += pot_loop_lines
    lines += operator_lines
    lines += cuda_section()
    pathlib.Path(a.out).write_text("\n".join(lines))
    print(a.out)


if __name__ == "__main__":
    main()
