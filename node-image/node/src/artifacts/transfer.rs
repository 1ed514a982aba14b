//! Fetching a blob by its hash from the peers that hold it: the chunk list from one holder,
//! chunks from all of them in parallel, each chunk checked against the list before it is kept,
//! and the whole blob against its hash before it is stored. A holder that sends a bad chunk or
//! a false list is dropped; one that vanishes or times out is replaced by another; a restart
//! resumes from the chunks already kept.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use libp2p::PeerId;
use libp2p::futures::StreamExt;
use libp2p::futures::stream::FuturesUnordered;
use pot_protocol::Hash;
use tracing::{debug, warn};

use super::store::{BlobStore, CHUNK, chunk_count};
use super::wire::{MAX_BLOB, Request, Response};

/// Why a peer gave no answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AskError {
    #[error("the peer could not be reached or went away: {0}")]
    Unreachable(String),
    #[error("the peer did not answer in time")]
    Timeout,
}

/// Sends one request to one peer and waits for its answer.
#[async_trait]
pub trait Ask: Send + Sync {
    async fn ask(&self, peer: PeerId, req: Request) -> Result<Response, AskError>;
}

/// How a fetch behaves.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    /// The largest blob to accept (a task's bound on its artifacts); a holder that says the
    /// blob is larger is not believed, and if every holder says so the fetch fails.
    pub max_bytes: u64,
    /// Chunk requests in flight at once, over all holders.
    pub parallel: usize,
    /// Chunk requests in flight to one holder.
    pub per_peer: usize,
    /// How long to wait before asking a busy holder again, and how often one holder may be
    /// busy in a round before it is passed over.
    pub busy_backoff: Duration,
    pub max_busy: usize,
    /// The whole fetch gives up after this long.
    pub deadline: Duration,
}

impl FetchLimits {
    pub fn up_to(max_bytes: u64) -> FetchLimits {
        FetchLimits {
            max_bytes: max_bytes.min(MAX_BLOB),
            parallel: 8,
            per_peer: 4,
            busy_backoff: Duration::from_millis(200),
            max_busy: 50,
            deadline: Duration::from_secs(3600),
        }
    }
}

/// The length chunk `index` of a blob of `size` bytes must have.
fn chunk_len(size: u64, index: u64) -> u64 {
    CHUNK.min(size.saturating_sub(index * CHUNK))
}

/// Fetch `blob` into `store` from `holders` (in order of preference). Returns at once if it is
/// already stored.
///
/// A chunk list cannot be proved right before the whole blob is in, so each round trusts one
/// holder's list. Holders whose chunks disagree with it are only passed over for that round:
/// if the list turns out false (the assembled blob hashes to something else, or no holder can
/// supply some chunk of it), its sender is dropped for good and the others are asked again.
/// Holders that cannot be reached are dropped for good.
pub async fn fetch(
    store: &BlobStore,
    net: &dyn Ask,
    blob: Hash,
    holders: &[PeerId],
    limits: FetchLimits,
) -> anyhow::Result<()> {
    if store.contains(&blob) {
        return Ok(());
    }
    let give_up = tokio::time::Instant::now() + limits.deadline;
    match tokio::time::timeout_at(give_up, fetch_rounds(store, net, blob, holders, limits)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "could not fetch blob {blob}: gave up after {:?}",
            limits.deadline
        ),
    }
}

async fn fetch_rounds(
    store: &BlobStore,
    net: &dyn Ask,
    blob: Hash,
    holders: &[PeerId],
    limits: FetchLimits,
) -> anyhow::Result<()> {
    let mut dropped: BTreeSet<PeerId> = BTreeSet::new();
    let mut why: Vec<String> = Vec::new();
    for _ in 0..=holders.len() {
        let Some((lister, size, chunks)) =
            manifest(net, blob, holders, &mut dropped, limits, &mut why).await
        else {
            break;
        };
        match fetch_round(
            store, net, blob, holders, &dropped, limits, size, &chunks, &mut why,
        )
        .await?
        {
            Round::Done => return Ok(()),
            Round::ListWasFalse => {
                warn!(%blob, peer = %lister, "its chunk list was false; asking others");
                why.push(format!("{lister} sent a false chunk list"));
                dropped.insert(lister);
            }
            Round::Unreachable(gone) => dropped.extend(gone),
        }
    }
    bail!("could not fetch blob {blob}: {}", summary(&why))
}

enum Round {
    Done,
    /// The list could not be made into the blob: its sender lied, or holds other bytes.
    ListWasFalse,
    /// Every holder left for the list went away; these could not be reached.
    Unreachable(Vec<PeerId>),
}

/// One round: every chunk of the list `chunks`, from the holders not dropped.
#[allow(clippy::too_many_arguments)]
async fn fetch_round(
    store: &BlobStore,
    net: &dyn Ask,
    blob: Hash,
    holders: &[PeerId],
    dropped: &BTreeSet<PeerId>,
    limits: FetchLimits,
    size: u64,
    chunks: &[Hash],
    why: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let partial = store.partial(&blob)?;
    let have = {
        let (partial, chunks) = (partial.clone(), chunks.to_vec());
        tokio::task::spawn_blocking(move || {
            (0..chunks.len() as u64)
                .filter(|&i| partial.has(i, &chunks[i as usize]))
                .collect::<BTreeSet<u64>>()
        })
        .await?
    };
    let mut missing: VecDeque<u64> = (0..chunks.len() as u64)
        .filter(|i| !have.contains(i))
        .collect();
    debug!(%blob, size, chunks = chunks.len(), missing = missing.len(), "fetching");
    // Passed over this round only: their chunks disagreed with this list, or they were busy
    // too often. Unreachable ones are gone for good.
    let mut passed_over: BTreeSet<PeerId> = BTreeSet::new();
    let mut unreachable: Vec<PeerId> = Vec::new();
    let mut in_flight_to: HashMap<PeerId, usize> = HashMap::new();
    let mut busy_answers: HashMap<PeerId, usize> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    let mut next_peer = 0usize;
    loop {
        while in_flight.len() < limits.parallel && !missing.is_empty() {
            let candidates: Vec<PeerId> = holders
                .iter()
                .filter(|p| !dropped.contains(p) && !passed_over.contains(p))
                .filter(|p| !unreachable.contains(p))
                .filter(|p| in_flight_to.get(p).copied().unwrap_or(0) < limits.per_peer)
                .copied()
                .collect();
            if candidates.is_empty() {
                break;
            }
            let peer = candidates[next_peer % candidates.len()];
            next_peer += 1;
            let index = missing.pop_front().expect("not empty");
            *in_flight_to.entry(peer).or_default() += 1;
            in_flight.push(async move {
                let answer = net.ask(peer, Request::Chunk { blob, index }).await;
                (peer, index, answer)
            });
        }
        let Some((peer, index, answer)) = in_flight.next().await else {
            break;
        };
        *in_flight_to.entry(peer).or_default() -= 1;
        match answer {
            Ok(Response::Chunk { bytes })
                if bytes.len() as u64 == chunk_len(size, index)
                    && Hash::digest(&bytes) == chunks[index as usize] =>
            {
                let partial = partial.clone();
                tokio::task::spawn_blocking(move || partial.put(index, &bytes)).await??;
            }
            Ok(Response::Chunk { .. }) => {
                debug!(%blob, %peer, index, "a chunk that does not match the list");
                why.push(format!("{peer} sent chunk {index} unlike the list"));
                passed_over.insert(peer);
                missing.push_back(index);
            }
            Ok(Response::Busy) => {
                let n = busy_answers.entry(peer).or_default();
                *n += 1;
                if *n >= limits.max_busy {
                    why.push(format!("{peer} stayed busy"));
                    passed_over.insert(peer);
                } else {
                    tokio::time::sleep(limits.busy_backoff).await;
                }
                missing.push_back(index);
            }
            Ok(Response::NotFound | Response::Manifest { .. }) => {
                why.push(format!("{peer} does not hold chunk {index}"));
                passed_over.insert(peer);
                missing.push_back(index);
            }
            Err(e) => {
                debug!(%blob, %peer, index, "no answer: {e}");
                why.push(format!("{peer}: {e}"));
                unreachable.push(peer);
                missing.push_back(index);
            }
        }
    }
    if !missing.is_empty() {
        // Nobody left could supply the rest. If some holders were only passed over, the list
        // may be what was wrong; otherwise everyone is gone.
        return Ok(if passed_over.is_empty() {
            Round::Unreachable(unreachable)
        } else {
            Round::ListWasFalse
        });
    }
    let count = chunks.len() as u64;
    match tokio::task::spawn_blocking(move || partial.finish(count)).await? {
        Ok(()) => Ok(Round::Done),
        Err(e) => {
            debug!(%blob, "{e:#}");
            Ok(Round::ListWasFalse)
        }
    }
}

/// The first acceptable chunk list, and who sent it; holders that cannot be reached are
/// dropped.
async fn manifest(
    net: &dyn Ask,
    blob: Hash,
    holders: &[PeerId],
    dropped: &mut BTreeSet<PeerId>,
    limits: FetchLimits,
    why: &mut Vec<String>,
) -> Option<(PeerId, u64, Vec<Hash>)> {
    let candidates: Vec<PeerId> = holders
        .iter()
        .filter(|p| !dropped.contains(p))
        .copied()
        .collect();
    for peer in candidates {
        match net.ask(peer, Request::Manifest { blob }).await {
            Ok(Response::Manifest { size, .. }) if size > limits.max_bytes => {
                why.push(format!(
                    "{peer} says it is {size} bytes, over the {} allowed",
                    limits.max_bytes
                ));
                dropped.insert(peer);
            }
            Ok(Response::Manifest { size, chunks }) if chunks.len() as u64 == chunk_count(size) => {
                return Some((peer, size, chunks));
            }
            Ok(Response::Manifest { .. }) => {
                why.push(format!("{peer} sent a chunk list of the wrong length"));
                dropped.insert(peer);
            }
            Ok(other) => {
                why.push(format!("{peer}: {other:?}"));
                dropped.insert(peer);
            }
            Err(e) => {
                why.push(format!("{peer}: {e}"));
                dropped.insert(peer);
            }
        }
    }
    None
}

fn summary(why: &[String]) -> String {
    if why.is_empty() {
        return "no holders".into();
    }
    let mut s = why.iter().take(6).cloned().collect::<Vec<_>>().join("; ");
    if why.len() > 6 {
        s += &format!("; and {} more", why.len() - 6);
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::artifacts::store::CHUNK;

    /// Holders simulated in memory: each answers from its own store, possibly lying.
    struct Peers {
        stores: HashMap<PeerId, (BlobStore, Behaviour)>,
        asked: Mutex<Vec<(PeerId, Request)>>,
        chunks_served: AtomicUsize,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        Honest,
        /// Flips a byte of every chunk it sends.
        CorruptsChunks,
        /// Goes away after serving this many chunks.
        VanishesAfter(usize),
        /// Claims the blob is huge.
        InflatesSize,
        /// Answers every chunk request with `Busy`.
        AlwaysBusy,
    }

    #[async_trait]
    impl Ask for Peers {
        async fn ask(&self, peer: PeerId, req: Request) -> Result<Response, AskError> {
            self.asked.lock().unwrap().push((peer, req.clone()));
            let (store, behaviour) = &self.stores[&peer];
            if let Behaviour::VanishesAfter(n) = behaviour
                && self.chunks_served.load(Ordering::SeqCst) >= *n
            {
                return Err(AskError::Unreachable("connection closed".into()));
            }
            Ok(match req {
                Request::Manifest { blob } => match store.chunk_hashes(&blob).unwrap() {
                    Some((size, chunks)) => Response::Manifest {
                        size: if *behaviour == Behaviour::InflatesSize {
                            MAX_BLOB
                        } else {
                            size
                        },
                        chunks,
                    },
                    None => Response::NotFound,
                },
                Request::Chunk { .. } if *behaviour == Behaviour::AlwaysBusy => Response::Busy,
                Request::Chunk { blob, index } => match store.read_chunk(&blob, index).unwrap() {
                    Some(mut bytes) => {
                        self.chunks_served.fetch_add(1, Ordering::SeqCst);
                        if *behaviour == Behaviour::CorruptsChunks {
                            bytes[0] ^= 0xff;
                        }
                        Response::Chunk { bytes }
                    }
                    None => Response::NotFound,
                },
            })
        }
    }

    fn blob() -> Vec<u8> {
        (0..(3 * CHUNK + 17)).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn peers(
        behaviours: &[Behaviour],
        bytes: &[u8],
    ) -> (Vec<tempfile::TempDir>, Vec<PeerId>, Peers) {
        let mut dirs = Vec::new();
        let mut ids = Vec::new();
        let mut stores = HashMap::new();
        for b in behaviours {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::open(dir.path()).unwrap();
            store.put(bytes).unwrap();
            let id = PeerId::random();
            stores.insert(id, (store, *b));
            ids.push(id);
            dirs.push(dir);
        }
        (
            dirs,
            ids,
            Peers {
                stores,
                asked: Mutex::new(Vec::new()),
                chunks_served: AtomicUsize::new(0),
            },
        )
    }

    /// A store to fetch into, and the directory it lives in.
    fn empty_store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_corrupt_chunk_is_refused_and_fetched_again_from_another_holder() {
        let bytes = blob();
        let h = Hash::digest(&bytes);
        let (_d, ids, net) = peers(&[Behaviour::CorruptsChunks, Behaviour::Honest], &bytes);
        let (_dir, store) = empty_store();
        run(fetch(&store, &net, h, &ids, FetchLimits::up_to(1 << 30))).unwrap();
        assert_eq!(store.read(&h).unwrap(), bytes);
        // The liar was asked for a chunk and then never again.
        let asked = net.asked.lock().unwrap();
        let liar_chunks = asked
            .iter()
            .filter(|(p, r)| *p == ids[0] && matches!(r, Request::Chunk { .. }))
            .count();
        assert!(liar_chunks >= 1, "the corrupting holder was never asked");
        assert!(liar_chunks <= FetchLimits::up_to(0).per_peer);
    }

    #[test]
    fn a_holder_that_vanishes_mid_transfer_is_replaced() {
        let bytes = blob();
        let h = Hash::digest(&bytes);
        let (_d, ids, net) = peers(&[Behaviour::VanishesAfter(1), Behaviour::Honest], &bytes);
        let (_dir, store) = empty_store();
        let limits = FetchLimits {
            parallel: 1,
            ..FetchLimits::up_to(1 << 30)
        };
        run(fetch(&store, &net, h, &ids, limits)).unwrap();
        assert_eq!(store.read(&h).unwrap(), bytes);
    }

    #[test]
    fn a_blob_larger_than_allowed_is_refused() {
        let bytes = blob();
        let h = Hash::digest(&bytes);
        let (_d, ids, net) = peers(&[Behaviour::Honest], &bytes);
        let (_dir, store) = empty_store();
        let err = run(fetch(&store, &net, h, &ids, FetchLimits::up_to(CHUNK)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("over the 1048576 allowed"), "{err}");
        assert!(!store.contains(&h));

        // One holder inflating the size does not stop an honest one from serving it.
        let (_d, ids, net) = peers(&[Behaviour::InflatesSize, Behaviour::Honest], &bytes);
        run(fetch(&store, &net, h, &ids, FetchLimits::up_to(1 << 30))).unwrap();
        assert!(store.contains(&h));
    }

    #[test]
    fn a_false_chunk_list_costs_its_sender_and_the_fetch_succeeds_elsewhere() {
        let bytes = blob();
        let h = Hash::digest(&bytes);
        // The first holder holds other bytes under the same name: its list and chunks agree
        // with each other but not with the blob's hash, in every chunk, so an honest holder's
        // chunks all disagree with the false list.
        let mut other = bytes.clone();
        for chunk in other.chunks_mut(CHUNK as usize) {
            chunk[5] ^= 1;
        }
        let (_d1, ids1, mut net) = peers(&[Behaviour::Honest], &other);
        let (_d2, ids2, net2) = peers(&[Behaviour::Honest], &bytes);
        let (liar_store, _) = net.stores.remove(&ids1[0]).unwrap();
        let other_hash = Hash::digest(&other);
        std::fs::rename(liar_store.path(&other_hash), liar_store.path(&h)).unwrap();
        net.stores.insert(ids1[0], (liar_store, Behaviour::Honest));
        net.stores.extend(net2.stores);
        let (_dir, store) = empty_store();
        let holders = [ids1[0], ids2[0]];
        run(fetch(
            &store,
            &net,
            h,
            &holders,
            FetchLimits::up_to(1 << 30),
        ))
        .unwrap();
        assert_eq!(store.read(&h).unwrap(), bytes);
    }

    #[test]
    fn a_holder_that_is_always_busy_is_passed_over() {
        let bytes = blob();
        let h = Hash::digest(&bytes);
        let (_d, ids, net) = peers(&[Behaviour::AlwaysBusy, Behaviour::Honest], &bytes);
        let (_dir, store) = empty_store();
        let limits = FetchLimits {
            busy_backoff: Duration::from_millis(1),
            max_busy: 3,
            ..FetchLimits::up_to(1 << 30)
        };
        run(fetch(&store, &net, h, &ids, limits)).unwrap();
        assert!(store.contains(&h));

        // With only a busy holder, the fetch ends rather than asking forever.
        let (_d, ids, net) = peers(&[Behaviour::AlwaysBusy], &bytes);
        let (_dir, store) = empty_store();
        let err = run(fetch(&store, &net, h, &ids, limits))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stayed busy"), "{err}");
    }

    #[test]
    fn with_no_honest_holder_the_error_says_why() {
        let bytes = blob();
        let h = Hash::digest(&bytes);
        let (_d, ids, net) = peers(&[Behaviour::CorruptsChunks], &bytes);
        let (_dir, store) = empty_store();
        let err = run(fetch(&store, &net, h, &ids, FetchLimits::up_to(1 << 30)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unlike the list"), "{err}");
        assert!(!store.contains(&h));
    }
}
