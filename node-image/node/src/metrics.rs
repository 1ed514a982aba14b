//! Prometheus metrics of the node, registered in the same registry as the consensus engine's
//! own (peers, rounds, timeouts), so `/metrics` serves both.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use malachitebft_app::metrics::SharedRegistry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

pub struct Metrics {
    height: Gauge,
    round: Gauge,
    blocks: Counter,
    txs: Counter,
    block_interval: Histogram,
    txs_per_block: Histogram,
    rejected_proposals: Counter,
    rejected_parts: Counter,
    mempool_txs: Gauge,
    mempool_bytes: Gauge<u64, AtomicU64>,
    admission_waiting: Gauge,
    admission_busy: Counter,
    txs_per_batch_request: Histogram,
}

impl Metrics {
    /// Create the node's metrics and register them under `pot_`.
    pub fn register() -> Metrics {
        let m = Metrics {
            height: Gauge::default(),
            round: Gauge::default(),
            blocks: Counter::default(),
            txs: Counter::default(),
            block_interval: Histogram::new(exponential_buckets(0.05, 1.6, 14)),
            txs_per_block: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            rejected_proposals: Counter::default(),
            rejected_parts: Counter::default(),
            mempool_txs: Gauge::default(),
            mempool_bytes: Gauge::default(),
            admission_waiting: Gauge::default(),
            admission_busy: Counter::default(),
            txs_per_batch_request: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        };
        SharedRegistry::global().with_prefix("pot", |r| {
            r.register(
                "height",
                "Height of the last decided block",
                m.height.clone(),
            );
            r.register(
                "consensus_round",
                "Consensus round this node is in (0 when heights decide at once)",
                m.round.clone(),
            );
            r.register("blocks", "Blocks decided", m.blocks.clone());
            r.register(
                "txs",
                "Transactions included in decided blocks",
                m.txs.clone(),
            );
            r.register(
                "block_interval_seconds",
                "Time between consecutive decided blocks",
                m.block_interval.clone(),
            );
            r.register(
                "txs_per_block",
                "Transactions per decided block",
                m.txs_per_block.clone(),
            );
            r.register(
                "rejected_proposals",
                "Proposals voted against or dropped (invalid block, bad signature, wrong proposer)",
                m.rejected_proposals.clone(),
            );
            r.register(
                "rejected_proposal_parts",
                "Proposal parts dropped: from a stranger or a coordinator whose turn it is not, \
                 for a height out of range, over a limit, or malformed",
                m.rejected_parts.clone(),
            );
            r.register(
                "mempool_txs",
                "Transactions in the mempool",
                m.mempool_txs.clone(),
            );
            r.register(
                "mempool_bytes",
                "Encoded bytes in the mempool",
                m.mempool_bytes.clone(),
            );
            r.register(
                "admission_waiting_txs",
                "Submitted transactions waiting for (or being judged by) the admission threads",
                m.admission_waiting.clone(),
            );
            r.register(
                "admission_busy",
                "Submitted transactions turned away unjudged (503 admission_busy): the \
                 admission queue was full",
                m.admission_busy.clone(),
            );
            r.register(
                "txs_per_batch_request",
                "Transactions per POST /v1/txs request that was read (malformed items \
                 counted; bad_json and too_many_txs requests not)",
                m.txs_per_batch_request.clone(),
            );
        });
        m
    }

    pub fn committed(&self, height: u64, txs: usize, interval: Option<Duration>, round: i64) {
        self.height.set(height as i64);
        self.blocks.inc();
        self.txs.inc_by(txs as u64);
        self.txs_per_block.observe(txs as f64);
        if let Some(i) = interval {
            self.block_interval.observe(i.as_secs_f64());
        }
        self.round.set(round);
    }

    pub fn round(&self, round: i64) {
        self.round.set(round);
    }

    pub fn rejected_proposal(&self) {
        self.rejected_proposals.inc();
    }

    pub fn rejected_part(&self) {
        self.rejected_parts.inc();
    }

    pub fn mempool(&self, txs: usize, bytes: usize) {
        self.mempool_txs.set(txs as i64);
        self.mempool_bytes.set(bytes as u64);
    }

    pub fn admission_waiting(&self, txs: usize) {
        self.admission_waiting.set(txs as i64);
    }

    /// A `POST /v1/txs` request of `txs` transactions.
    pub fn batch_request(&self, txs: usize) {
        self.txs_per_batch_request.observe(txs as f64);
    }

    /// `txs` submissions turned away because the admission queue was full.
    pub fn admission_busy(&self, txs: usize) {
        self.admission_busy.inc_by(txs as u64);
    }

    /// The text exposition of every registered metric.
    pub fn export() -> String {
        let mut out = String::new();
        malachitebft_app::metrics::export(&mut out);
        out
    }
}
