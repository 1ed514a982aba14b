//! Admission of the API's submissions, in batches: a thread takes the submissions waiting
//! (until it has [`BATCH`] transactions or more) and admits them together
//! ([`Chain::submit_batch`]), so their signatures are checked in one ed25519 batch (about a
//! third of the work of checking them one by one) and a busy API costs one thread hand-off per
//! batch, not one per request. Each submitter gets the verdict
//! `Chain::submit` would have given it alone. What the thread admits as new is passed on (to
//! the other coordinators) by the thread itself, so a client that gave up waiting for its
//! answer does not leave an admitted transaction unannounced.
//!
//! A request of many transactions is one entry of the queue, taken and judged whole by one
//! thread, so its transactions are judged in their order however many threads there are (one
//! sender's consecutive nonces may share a request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pot_protocol::SignedTx;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::mempool::AdmitError;
use super::{Admission, Chain};

/// Transactions waiting for (or being judged by) the admission threads before the API answers
/// "busy".
const QUEUE: usize = 8192;
/// Transactions a thread takes at once: it takes no further request once it has this many, so
/// a verdict never waits behind a huge batch (a request is never split, so one of
/// [`SubmitTxs::MAX`](pot_protocol::SubmitTxs::MAX) can take it past this).
const BATCH: usize = 1024;
/// Queue room that batch submissions (`submit_many`) leave to single ones, so that a few large
/// batches cannot fill the queue and turn every single submitter away.
const KEPT_FOR_SINGLE: usize = 2048;
/// Admission threads at most: one per two cores (the rest serve consensus, gossip and the
/// API), so a flood of submissions is checked in parallel on a big machine.
const MAX_THREADS: usize = 8;

/// Why a submission was not judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unjudged {
    #[error("too many submitted transactions are waiting to be checked; try again shortly")]
    Busy,
    #[error("the admission threads have stopped")]
    Stopped,
}

type Verdict = Result<Admission, AdmitError>;

/// One request's transactions, judged by one thread in their order, and where their verdicts go.
struct Submission {
    txs: Vec<SignedTx>,
    reply: oneshot::Sender<Vec<Verdict>>,
    /// Its places in the queue, given back when it is dropped (judged, or never taken).
    places: Places,
}

/// Places taken in the queue: [`Admitter::take_places`] counts them in, dropping gives them back.
struct Places {
    n: usize,
    taken: Arc<AtomicUsize>,
}

impl Drop for Places {
    fn drop(&mut self) {
        self.taken.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Hands submissions to the admission threads. Cheap to clone; the threads end when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Admitter {
    /// Unbounded as a channel: `taken` bounds it, in transactions rather than requests.
    queue: mpsc::UnboundedSender<Submission>,
    /// Transactions queued or being judged.
    taken: Arc<AtomicUsize>,
}

impl Admitter {
    /// Start the admission threads for `chain`; `pass_on` is given every transaction they
    /// admit as new (not a retry of one held or decided).
    pub fn start(
        chain: Arc<Chain>,
        pass_on: impl Fn(&SignedTx) + Send + Sync + 'static,
    ) -> std::io::Result<Admitter> {
        Admitter::start_threads(chain, threads(), pass_on)
    }

    /// [`Admitter::start`] with `threads` admission threads.
    fn start_threads(
        chain: Arc<Chain>,
        threads: usize,
        pass_on: impl Fn(&SignedTx) + Send + Sync + 'static,
    ) -> std::io::Result<Admitter> {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        let pass_on = Arc::new(pass_on);
        for i in 0..threads {
            let (chain, waiting, pass_on) = (chain.clone(), waiting.clone(), pass_on.clone());
            std::thread::Builder::new()
                .name(format!("pot-admission-{i}"))
                .spawn(move || admit_until_closed(&chain, &waiting, &*pass_on))?;
        }
        Ok(Admitter {
            queue,
            taken: Arc::default(),
        })
    }

    /// Whether submissions are still being admitted (a thread that panicked takes the
    /// process with it in a coordinator, but not in every embedding).
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Transactions queued or being judged now.
    pub fn waiting(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Admit `stx` to the mempool: its verdict, once the batch it joined is judged.
    pub async fn submit(&self, stx: SignedTx) -> Result<Verdict, Unjudged> {
        let places = self.take_places(1, QUEUE).ok_or(Unjudged::Busy)?;
        let mut verdicts = self.judge(vec![stx], places).await?;
        verdicts.pop().ok_or(Unjudged::Stopped)
    }

    /// Admit each of `txs`, in order: each one's verdict, as [`Admitter::submit`] would give
    /// it. They are queued together and judged by one thread in this order, so each sees the
    /// ones before it as admitted (or not). Batches leave [`KEPT_FOR_SINGLE`] places of the
    /// queue to single submissions. Those the queue has no room for are `Busy`, from the first
    /// on, so that none is judged ahead of one before it that was not (a sender's next nonce
    /// would only wait for the refused one).
    pub async fn submit_many(&self, mut txs: Vec<SignedTx>) -> Vec<Result<Verdict, Unjudged>> {
        let n = txs.len();
        if !self.is_running() {
            return vec![Err(Unjudged::Stopped); n];
        }
        let Some(places) = self.take_places(n, QUEUE - KEPT_FOR_SINGLE) else {
            return vec![Err(Unjudged::Busy); n];
        };
        let queued = places.n;
        txs.truncate(queued);
        let judged: Vec<Result<Verdict, Unjudged>> = match self.judge(txs, places).await {
            Ok(verdicts) => verdicts.into_iter().map(Ok).collect(),
            Err(why) => vec![Err(why); queued],
        };
        judged
            .into_iter()
            .chain(std::iter::repeat_n(Err(Unjudged::Busy), n - queued))
            .collect()
    }

    /// Up to `wanted` places in the queue, so that no more than `limit` are taken in all; none
    /// if there is no room at all.
    fn take_places(&self, wanted: usize, limit: usize) -> Option<Places> {
        let mut n = 0;
        let _ = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                n = wanted.min(limit.saturating_sub(taken));
                Some(taken + n)
            });
        let places = Places {
            n,
            taken: self.taken.clone(),
        };
        (n > 0).then_some(places)
    }

    /// Queue `txs` (in the `places` taken for them) as one submission: their verdicts.
    async fn judge(&self, txs: Vec<SignedTx>, places: Places) -> Result<Vec<Verdict>, Unjudged> {
        let (reply, verdicts) = oneshot::channel();
        self.queue
            .send(Submission { txs, reply, places })
            .map_err(|_| Unjudged::Stopped)?;
        verdicts.await.map_err(|_| Unjudged::Stopped)
    }
}

/// Admission threads on this machine: one per two cores, at least one, at most [`MAX_THREADS`].
fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, MAX_THREADS)
}

type Waiting = Mutex<mpsc::UnboundedReceiver<Submission>>;

fn admit_until_closed(chain: &Chain, waiting: &Waiting, pass_on: &impl Fn(&SignedTx)) {
    loop {
        // One thread at a time takes what is waiting; the others wait for the next batch.
        let (batch, n) = {
            let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
            let Some(first) = waiting.blocking_recv() else {
                return;
            };
            let mut n = first.txs.len();
            let mut batch = vec![first];
            while n < BATCH
                && let Ok(more) = waiting.try_recv()
            {
                n += more.txs.len();
                batch.push(more);
            }
            (batch, n)
        };
        let verdicts = chain.submit_batch(batch.iter().flat_map(|s| &s.txs));
        assert_eq!(verdicts.len(), n, "one verdict per transaction");
        let mut verdicts = verdicts.into_iter();
        for Submission { txs, reply, places } in batch {
            let theirs: Vec<Verdict> = verdicts.by_ref().take(txs.len()).collect();
            for (verdict, tx) in theirs.iter().zip(&txs) {
                if let Ok(Admission::New(_)) = verdict {
                    pass_on(tx);
                }
            }
            // Judged: its places are free before its submitter hears so.
            drop(places);
            // A submitter that gave up (its request timed out) no longer wants the answer.
            let _ = reply.send(theirs);
        }
        debug!(n, "admitted a batch of submissions");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chain::mempool::Limits;
    use pot_protocol::genesis::{Coordinator, GenesisBalance};
    use pot_protocol::{Amount, Genesis, Hash, SecretKey, Tx, TxBody};

    /// A chain whose genesis funds `keys`, with the first as its coordinator.
    pub(crate) fn chain(dir: &std::path::Path, keys: &[SecretKey]) -> Arc<Chain> {
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

    /// `judging`'s output, with the mempool held for `wait` first: what it queued waits (every
    /// admission thread free to take a share meanwhile) and is not judged before it is let go.
    // Held on purpose: only the admission threads wait for it.
    #[allow(clippy::await_holding_lock)]
    async fn judged_after_holding<F: Future>(
        chain: &Chain,
        wait: std::time::Duration,
        judging: F,
    ) -> F::Output {
        let held = chain.mempool.lock().unwrap();
        tokio::pin!(judging);
        let once = tokio::time::timeout(wait, &mut judging).await;
        assert!(once.is_err(), "judged while the mempool was held");
        drop(held);
        judging.await
    }

    /// At least `count` transfers, `keys` taking turns, each key's nonces in order.
    fn transfers(chain: &Chain, keys: &[SecretKey], count: usize) -> Vec<SignedTx> {
        (0..count.div_ceil(keys.len()) as u64)
            .flat_map(|nonce| keys.iter().map(move |k| (k, nonce)))
            .map(|(k, nonce)| transfer(chain, k, nonce))
            .collect()
    }

    pub(crate) fn transfer(chain: &Chain, from: &SecretKey, nonce: u64) -> SignedTx {
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
        let passed_on = Arc::new(std::sync::Mutex::new(Vec::new()));
        let admitter = {
            let passed_on = passed_on.clone();
            Admitter::start(chain.clone(), move |t: &SignedTx| {
                passed_on.lock().unwrap().push(t.hash())
            })
            .unwrap()
        };
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
        // A retry is known, not new, and so not passed on again.
        let again = all[1].0.clone();
        assert_eq!(
            admitter.submit(again.clone()).await.unwrap(),
            Ok(Admission::Known(again.hash()))
        );
        // Every honest one was passed on exactly once, the forged one never.
        let mut passed_on = passed_on.lock().unwrap().clone();
        passed_on.sort();
        let mut honest: Vec<_> = all[1..].iter().map(|(t, _)| t.hash()).collect();
        honest.sort();
        assert_eq!(passed_on, honest);
    }

    /// A batch gets one verdict per transaction, in its order; what the queue has no room for
    /// is `Busy` (and only that: a busy queue never reorders or drops the rest).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_gets_a_verdict_per_transaction_in_order_and_busy_past_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<SecretKey> = (0..64u8)
            .map(|i| SecretKey::from_seed([i + 100; 32]))
            .collect();
        let chain = chain(dir.path(), &keys);
        let admitter = Admitter::start(chain.clone(), |_: &SignedTx| {}).unwrap();
        // More than the queue leaves a batch, each sender's nonces in order (the places of
        // what is being judged are taken until it is judged).
        let room = QUEUE - KEPT_FOR_SINGLE;
        let txs = transfers(&chain, &keys, room + 100);
        // The admission thread waits for the mempool, so the queue fills up.
        let judging = admitter.submit_many(txs.clone());
        let verdicts = judged_after_holding(&chain, std::time::Duration::ZERO, judging).await;
        assert_eq!(verdicts.len(), txs.len());
        let busy_from = verdicts
            .iter()
            .position(|v| *v == Err(Unjudged::Busy))
            .expect("some found no room");
        assert_eq!(busy_from, room);
        for (i, (tx, verdict)) in txs.iter().zip(&verdicts).enumerate() {
            if i < busy_from {
                assert_eq!(
                    *verdict,
                    Ok(Ok(Admission::New(tx.hash()))),
                    "transaction {i}"
                );
            } else {
                assert_eq!(*verdict, Err(Unjudged::Busy), "transaction {i}");
            }
        }
        assert_eq!(chain.mempool_size().0, busy_from);
        assert_eq!(
            admitter.waiting(),
            0,
            "places of the judged and the busy given back"
        );
    }

    /// A request is judged in its order by one thread, however many there are: a sender's
    /// later nonces are never judged before its earlier ones (they would be refused as too
    /// far ahead), and the request is never split between threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_is_judged_in_order_by_one_thread_however_many_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<SecretKey> = (0..8u8)
            .map(|i| SecretKey::from_seed([i + 70; 32]))
            .collect();
        let chain = chain(dir.path(), &keys);
        let passed_on = Arc::new(std::sync::Mutex::new(Vec::new()));
        let admitter = {
            let passed_on = passed_on.clone();
            Admitter::start_threads(chain.clone(), 4, move |t: &SignedTx| {
                let thread = std::thread::current().name().map(str::to_owned);
                passed_on.lock().unwrap().push((t.hash(), thread));
            })
            .unwrap()
        };
        // Three admission batches' worth, each sender's nonces far past what the mempool
        // queues ahead of a gap.
        let txs = transfers(&chain, &keys, 3 * BATCH);
        // Every thread is free to take a share while the first waits for the mempool.
        let judging = admitter.submit_many(txs.clone());
        let wait = std::time::Duration::from_millis(200);
        let verdicts = judged_after_holding(&chain, wait, judging).await;
        for (i, (tx, verdict)) in txs.iter().zip(&verdicts).enumerate() {
            assert_eq!(
                *verdict,
                Ok(Ok(Admission::New(tx.hash()))),
                "transaction {i}"
            );
        }
        let passed_on = passed_on.lock().unwrap().clone();
        let order: Vec<Hash> = passed_on.iter().map(|(h, _)| *h).collect();
        assert_eq!(order, txs.iter().map(SignedTx::hash).collect::<Vec<_>>());
        let by = &passed_on[0].1;
        assert!(
            passed_on.iter().all(|(_, t)| t == by),
            "split between threads"
        );
    }

    /// Batches cannot fill the queue: a single submission still finds room when batches are
    /// turned away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Held on purpose: only the admission thread waits for it.
    #[allow(clippy::await_holding_lock)]
    async fn batches_leave_room_for_single_submissions() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<SecretKey> = (0..64u8)
            .map(|i| SecretKey::from_seed([i + 1; 32]))
            .collect();
        let chain = chain(dir.path(), &keys);
        let admitter = Admitter::start(chain.clone(), |_: &SignedTx| {}).unwrap();
        let (batchers, single) = keys.split_at(63);
        let txs = transfers(&chain, batchers, QUEUE);
        let lone = transfer(&chain, &single[0], 0);
        let held = chain.mempool.lock().unwrap();
        let (batch_verdicts, lone_verdict) = {
            let judging = admitter.submit_many(txs);
            tokio::pin!(judging);
            let once = tokio::time::timeout(std::time::Duration::ZERO, &mut judging).await;
            assert!(once.is_err(), "judged while the mempool was held");
            let lone_judging = admitter.submit(lone.clone());
            tokio::pin!(lone_judging);
            let once = tokio::time::timeout(std::time::Duration::ZERO, &mut lone_judging).await;
            assert!(
                once.is_err(),
                "the single submission was not queued: {once:?}"
            );
            drop(held);
            (judging.await, lone_judging.await)
        };
        assert!(batch_verdicts.contains(&Err(Unjudged::Busy)));
        assert_eq!(lone_verdict, Ok(Ok(Admission::New(lone.hash()))));
        assert_eq!(admitter.waiting(), 0);
    }

    /// A submitter that stops waiting (its request timed out) does not stop its transaction
    /// from being admitted and passed on.
    #[tokio::test]
    // Held on purpose: only the admission thread waits for it.
    #[allow(clippy::await_holding_lock)]
    async fn a_submission_whose_client_gave_up_is_still_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let keys = [SecretKey::from_seed([40; 32])];
        let chain = chain(dir.path(), &keys);
        let (passed_on, mut announced) = tokio::sync::mpsc::unbounded_channel();
        let admitter = Admitter::start(chain.clone(), move |t: &SignedTx| {
            passed_on.send(t.hash()).unwrap()
        })
        .unwrap();
        let tx = transfer(&chain, &keys[0], 0);
        // Dropped before its verdict could arrive (admission waits for the mempool, held
        // here): the request is gone, the queue holds it.
        let held = chain.mempool.lock().unwrap();
        let gave_up =
            tokio::time::timeout(std::time::Duration::ZERO, admitter.submit(tx.clone())).await;
        assert!(gave_up.is_err(), "answered while the mempool was held");
        drop(held);
        assert_eq!(announced.recv().await, Some(tx.hash()));
        assert_eq!(chain.mempool_size().0, 1);
        // Its place is given back once judged, though nobody heard the verdict.
        let freed = async {
            while admitter.waiting() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), freed)
            .await
            .expect("the place of a submission nobody waits for is given back");
    }
}
