//! Admission of the API's submissions, in batches: one thread takes every submission waiting
//! and admits them together ([`Chain::submit_batch`]), so their signatures are checked in one
//! ed25519 batch (about a third of the work of checking them one by one) and a busy API costs
//! one thread hand-off per batch, not one per request. Each submitter gets the verdict
//! `Chain::submit` would have given it alone.

use std::sync::Arc;

use pot_protocol::SignedTx;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::mempool::AdmitError;
use super::{Admission, Chain};

/// Submissions waiting for the admission thread before the API answers "busy".
const QUEUE: usize = 8192;
/// Submissions admitted in one batch at most, so a verdict never waits behind a huge one.
const BATCH: usize = 1024;

/// Why a submission was not judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unjudged {
    #[error("{QUEUE} submissions are already waiting to be admitted; try again shortly")]
    Busy,
    #[error("the admission thread has stopped")]
    Stopped,
}

type Verdict = Result<Admission, AdmitError>;

/// Hands submissions to the admission thread. Cheap to clone; the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Admitter {
    queue: mpsc::Sender<(SignedTx, oneshot::Sender<Verdict>)>,
}

impl Admitter {
    /// Start the admission thread for `chain`.
    pub fn start(chain: Arc<Chain>) -> std::io::Result<Admitter> {
        let (queue, waiting) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("pot-admission".into())
            .spawn(move || admit_until_closed(&chain, waiting))?;
        Ok(Admitter { queue })
    }

    /// Admit `stx` to the mempool: its verdict, once the batch it joined is judged.
    pub async fn submit(&self, stx: SignedTx) -> Result<Verdict, Unjudged> {
        let (reply, verdict) = oneshot::channel();
        self.queue.try_send((stx, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Unjudged::Busy,
            mpsc::error::TrySendError::Closed(_) => Unjudged::Stopped,
        })?;
        verdict.await.map_err(|_| Unjudged::Stopped)
    }
}

fn admit_until_closed(
    chain: &Chain,
    mut waiting: mpsc::Receiver<(SignedTx, oneshot::Sender<Verdict>)>,
) {
    while let Some(first) = waiting.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(more) = waiting.try_recv()
        {
            batch.push(more);
        }
        let (txs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let n = txs.len();
        for (verdict, reply) in chain.submit_batch(txs).into_iter().zip(replies) {
            // A submitter that gave up (its request timed out) no longer wants the answer.
            let _ = reply.send(verdict);
        }
        debug!(n, "admitted a batch of submissions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::mempool::Limits;
    use pot_protocol::genesis::{Coordinator, GenesisBalance};
    use pot_protocol::{Amount, Genesis, SecretKey, Tx, TxBody};

    fn chain(dir: &std::path::Path, keys: &[SecretKey]) -> Arc<Chain> {
        let genesis = Genesis {
            chain_id: "t".into(),
            genesis_time_ms: 0,
            params: pot_protocol::Params::default(),
            balances: keys
                .iter()
                .map(|k| GenesisBalance {
                    address: k.address(),
                    amount: Amount(1_000_000_000),
                })
                .collect(),
            stakes: vec![],
            coordinators: vec![Coordinator::for_key(&keys[0])],
        };
        Arc::new(Chain::open(genesis, dir, Limits::default()).unwrap())
    }

    fn transfer(chain: &Chain, from: &SecretKey, nonce: u64) -> SignedTx {
        Tx {
            chain_id: chain.genesis().chain_id.clone(),
            signer: from.address(),
            nonce,
            fee: chain.genesis().params.tx_fee,
            body: TxBody::Transfer {
                to: from.address(),
                amount: Amount(1),
            },
        }
        .sign(from)
    }

    /// Many concurrent submitters, one of them forging: each gets its own verdict, the forged
    /// one is refused and every honest one is held, however the batches fell.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submissions_each_get_their_own_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<SecretKey> = (0..16u8)
            .map(|i| SecretKey::from_seed([i + 1; 32]))
            .collect();
        let chain = chain(dir.path(), &keys);
        let admitter = Admitter::start(chain.clone()).unwrap();
        let mut forged = transfer(&chain, &keys[3], 0);
        forged.signature.0[0] ^= 1;
        let mut all = vec![(forged.clone(), false)];
        for k in &keys {
            for nonce in 0..4 {
                all.push((transfer(&chain, k, nonce), true));
            }
        }
        let tasks: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let admitter = admitter.clone();
                // Each sender's transactions in nonce order, as a client sends them.
                let mine: Vec<_> = all
                    .iter()
                    .filter(|(t, _)| t.tx.signer == keys[i].address())
                    .cloned()
                    .collect();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for (t, honest) in mine {
                        out.push((t.hash(), honest, admitter.submit(t).await.unwrap()));
                    }
                    out
                })
            })
            .collect();
        for t in tasks {
            for (hash, honest, verdict) in t.await.unwrap() {
                if honest {
                    assert_eq!(verdict, Ok(Admission::New(hash)));
                } else {
                    assert!(
                        matches!(verdict, Err(AdmitError::Invalid(_))),
                        "forged: {verdict:?}"
                    );
                }
            }
        }
        assert_eq!(chain.mempool_size().0, 16 * 4);
        // A retry is known, not new (and so not gossiped again).
        let again = all[1].0.clone();
        assert_eq!(
            admitter.submit(again.clone()).await.unwrap(),
            Ok(Admission::Known(again.hash()))
        );
    }
}
