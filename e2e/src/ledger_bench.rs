//! Finality latency and sustained throughput of a local coordinator network under load, for
//! `make bench`: signed transfers offered at a fixed rate through every coordinator's API, and
//! each one timed from its scheduled send time (so a sender that falls behind counts against
//! the network, as a real client's queue would) to the first sight of its block.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pot_protocol::api::SubmitTxs;
use pot_protocol::tx::{Tx, TxBody};
use pot_protocol::{Amount, Hash, SignedTx};
use serde::Serialize;
use tokio::time::Instant;

use crate::coordinators::Coordinators;

pub struct Config {
    pub pot_node: PathBuf,
    pub nodes: usize,
    pub link_delay: Duration,
    pub block_time_ms: u64,
    /// Offered load, transactions per second, for `seconds`.
    pub rate: u64,
    pub seconds: u64,
    /// Sending accounts per coordinator; each sends its transactions in nonce order through
    /// one coordinator, concurrently with the others.
    pub accounts_per_node: usize,
    /// 0: every transaction is its own `POST /v1/tx`, each account waiting for the answer
    /// before it sends its next. Otherwise one client per coordinator sends everything due in
    /// one `POST /v1/txs`, at most every `client_batch_ms`, as a wallet service or exchange
    /// would (the wait counts in each transaction's latency).
    pub client_batch_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub link_delay_ms: u64,
    pub offered_tps: u64,
    pub block_time_ms: u64,
    pub client_batch_ms: u64,
    /// Included transactions per second while the load was offered (see [`sustained_tps`]).
    pub tps: f64,
    /// How long submitting took: more than `seconds` when the coordinators' APIs could not
    /// take the offered rate.
    pub submit_seconds: f64,
    /// Finality from each transaction's scheduled send time.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Transactions seen in blocks, of all those offered.
    pub included: usize,
    pub offered: usize,
    pub submitted: usize,
    pub refused: usize,
    pub blocks: u64,
}

pub async fn run(cfg: Config) -> anyhow::Result<Report> {
    let n = cfg.nodes;
    let accounts = n * cfg.accounts_per_node;
    let net = Coordinators::start_delayed(
        cfg.pot_node.clone(),
        n,
        cfg.block_time_ms,
        accounts,
        cfg.link_delay,
    )
    .await?;
    for i in 0..n {
        net.client(i)
            .wait_height(2, Duration::from_secs(120))
            .await
            .map_err(|e| anyhow::anyhow!("coordinator {i}: {e}\n{}", net.log_tails(20)))?;
    }
    let start_height = net.client(0).head().await?.height;

    // Sign everything first so signing does not compete with the network for the CPU.
    let total = (cfg.rate * cfg.seconds) as usize;
    let txs: Vec<SignedTx> = (0..total)
        .map(|k| {
            let from = &net.accounts[k % accounts];
            Tx {
                chain_id: net.genesis.chain_id.clone(),
                signer: from.address(),
                nonce: (k / accounts) as u64,
                fee: net.genesis.params.tx_fee,
                body: TxBody::Transfer {
                    to: net.accounts[(k + 1) % accounts].address(),
                    amount: Amount(1),
                },
            }
            .sign(from)
        })
        .collect();

    let submitted: Arc<Mutex<HashMap<Hash, Instant>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let begin = Instant::now();
    // Transaction k is due k/rate seconds after the start, and its finality counts from then,
    // however late its sender gets to it.
    let rate = cfg.rate;
    let due = move |k: usize| begin + Duration::from_secs_f64(k as f64 / rate as f64);
    // Account a sends through coordinator a mod n, so one sender's nonces reach one
    // coordinator in order.
    let mut senders = Vec::new();
    if cfg.client_batch_ms == 0 {
        // One sequential submitter per account.
        for a in 0..accounts {
            let client = net.client(a % n);
            let mine = numbered(&txs, |k| k % accounts == a);
            let (submitted, refused) = (submitted.clone(), refused.clone());
            senders.push(tokio::spawn(async move {
                for (k, tx) in mine {
                    tokio::time::sleep_until(due(k)).await;
                    // Recorded before the call, so a block seen before the reply still counts.
                    let hash = tx.hash();
                    submitted.lock().unwrap().insert(hash, due(k));
                    if client.submit(&tx).await.is_err() {
                        submitted.lock().unwrap().remove(&hash);
                        *refused.lock().unwrap() += 1;
                    }
                }
            }));
        }
    } else {
        // One batching client per coordinator, for all of its accounts.
        let every = Duration::from_millis(cfg.client_batch_ms);
        for c in 0..n {
            let client = net.client(c);
            let mine = numbered(&txs, |k| (k % accounts) % n == c);
            let (submitted, refused) = (submitted.clone(), refused.clone());
            senders.push(tokio::spawn(async move {
                let mut next = 0;
                let mut last_send = begin;
                while next < mine.len() {
                    tokio::time::sleep_until(due(mine[next].0).max(last_send + every)).await;
                    last_send = Instant::now();
                    let mut batch = Vec::new();
                    {
                        let mut map = submitted.lock().unwrap();
                        while next < mine.len()
                            && due(mine[next].0) <= last_send
                            && batch.len() < SubmitTxs::MAX
                        {
                            let (k, tx) = &mine[next];
                            map.insert(tx.hash(), due(*k));
                            batch.push(tx.clone());
                            next += 1;
                        }
                    }
                    // A request that failed whole refused every transaction in it.
                    let refusals: Vec<bool> = match client.submit_many(&batch).await {
                        Ok(v) => v.iter().map(Result::is_err).collect(),
                        Err(_) => vec![true; batch.len()],
                    };
                    for (tx, refused_here) in batch.iter().zip(refusals) {
                        if refused_here {
                            submitted.lock().unwrap().remove(&tx.hash());
                            *refused.lock().unwrap() += 1;
                        }
                    }
                }
            }));
        }
    }

    // Watch one coordinator's blocks and time every transaction in them.
    let mut latencies = Vec::new();
    let mut height = start_height;
    // Blocks seen while the load was still being offered: (when, transactions).
    let mut during_load: Vec<(Instant, usize)> = Vec::new();
    let mut load_end = None;
    let deadline = begin + Duration::from_secs(cfg.seconds + 60);
    let client = net.client(0);
    loop {
        let senders_done = senders.iter().all(|s| s.is_finished());
        if senders_done && load_end.is_none() {
            load_end = Some(Instant::now());
        }
        let pending = submitted.lock().unwrap().len();
        if senders_done && pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        // An overloaded node may answer late or not at all; the watcher just asks again.
        let Ok(head) = client.head().await.map(|h| h.height) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while height < head {
            let Ok(block) = client.block(height + 1).await else {
                break;
            };
            height += 1;
            let seen = Instant::now();
            if !senders_done {
                during_load.push((seen, block.txs.len()));
            }
            let mut map = submitted.lock().unwrap();
            for t in &block.txs {
                if let Some(at) = map.remove(&t.hash) {
                    latencies.push(seen - at);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in senders {
        s.await?;
    }
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let refused = *refused.lock().unwrap();
    Ok(Report {
        nodes: n,
        link_delay_ms: cfg.link_delay.as_millis() as u64,
        offered_tps: cfg.rate,
        block_time_ms: cfg.block_time_ms,
        client_batch_ms: cfg.client_batch_ms,
        tps: sustained_tps(&during_load),
        submit_seconds: (load_end.unwrap_or_else(Instant::now) - begin).as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        included: latencies.len(),
        offered: total,
        submitted: total - refused,
        refused,
        blocks: height - start_height,
    })
}

/// The transactions whose number `k` is `mine`, with their numbers (which say when each is due).
fn numbered(txs: &[SignedTx], mine: impl Fn(usize) -> bool) -> Vec<(usize, SignedTx)> {
    txs.iter()
        .enumerate()
        .filter(|(k, _)| mine(*k))
        .map(|(k, t)| (k, t.clone()))
        .collect()
}

/// Transactions per second the chain included while load was offered: the transactions in
/// every block after the first, over the time from the first block to the last. (The first
/// block's own transactions arrived before the window starts; the backlog drained after the
/// load stops is not counted, so a chain that falls behind shows less than it was offered.)
fn sustained_tps(blocks: &[(Instant, usize)]) -> f64 {
    match (blocks.first(), blocks.last()) {
        (Some((first, _)), Some((last, _))) if last > first => {
            let txs: usize = blocks[1..].iter().map(|(_, n)| n).sum();
            txs as f64 / (*last - *first).as_secs_f64()
        }
        _ => f64::NAN,
    }
}
