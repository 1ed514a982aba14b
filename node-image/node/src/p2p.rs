//! Transaction gossip between coordinators: a libp2p (0.56, the stack Malachite uses) swarm
//! with one GossipSub topic per chain. A transaction admitted to this node's mempool through
//! the API is published; one received is admitted here and forwarded only if it was admitted,
//! so invalid transactions stop at the first honest coordinator. Transactions are signed by
//! their senders, so messages are anonymous and identified by their content's hash.
//!
//! Transactions admitted within [`FLUSH_AFTER`] of each other travel as one message (a batch,
//! [`frame`]): under load a message per transaction cost a frame, an encryption and a
//! write per peer each, which took more of a coordinator's CPU than checking the signatures.
//! A batch is judged whole: forwarded as it is only if every transaction in it was new here
//! and admitted; rejected if it does not decode or holds a forged signature (an honest
//! coordinator sends only what it checked); otherwise ignored, and the transactions it did
//! bring that were new here go out again in this node's own next batch. So a batch padded with
//! decided, invalid or repeated transactions stops at the first honest coordinator, and
//! carries on only what that coordinator admitted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};
use pot_protocol::tx::limits;
use pot_protocol::{Hash, SignedTx};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chain::mempool::AdmitError;
use crate::chain::{Admission, Chain};

/// How often peers that are not connected are dialled again.
const REDIAL_EVERY: Duration = Duration::from_secs(2);
/// Transactions waiting to be published before the API is told to slow down.
const OUTBOX: usize = 10_000;
/// Received transactions admitted together (a round), their signatures verified in one batch:
/// more wait in the swarm (and its bounded queues) until the round is judged.
const ROUND_TXS: usize = 4096;
/// How long an admitted transaction may wait for others to share its message.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// A batch's size at most, in bytes of transactions (each at most `MAX_TX_BYTES`).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Hands transactions the API admitted to the gossip loop.
#[derive(Clone)]
pub struct TxGossip {
    outbox: mpsc::Sender<Vec<u8>>,
}

impl TxGossip {
    /// Publish an admitted transaction; dropped (with a warning) if the outbox is full, since
    /// the transaction is already safe in this node's mempool.
    pub fn publish(&self, stx: &SignedTx) {
        if self.outbox.try_send(stx.encode()).is_err() {
            warn!(tx = %stx.hash(), "gossip outbox full; the transaction stays local");
        }
    }
}

type Behaviour = gossipsub::Behaviour;

fn swarm(key: &pot_protocol::SecretKey) -> anyhow::Result<Swarm<Behaviour>> {
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(key.seed())?;
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(MAX_BATCH_BYTES + 64 * 1024)
        .heartbeat_interval(Duration::from_millis(500))
        .message_id_fn(|m| {
            gossipsub::MessageId::from(Hash::tagged("pot/gossip/txs", &[&m.data]).0.to_vec())
        })
        .build()
        .map_err(|e| anyhow::anyhow!("gossip configuration: {e}"))?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
        })
        .map_err(|e| anyhow::anyhow!("gossip behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// Start listening and return the handle for publishing and the loop to run.
pub fn start(
    chain: Arc<Chain>,
    key: &pot_protocol::SecretKey,
    listen: Multiaddr,
    peers: Vec<Multiaddr>,
) -> anyhow::Result<(
    TxGossip,
    impl std::future::Future<Output = anyhow::Result<()>> + use<>,
)> {
    let mut swarm = swarm(key)?;
    let topic = IdentTopic::new(format!("pot/tx-batches/{}", chain.genesis_hash()));
    swarm.behaviour_mut().subscribe(&topic)?;
    swarm.listen_on(listen.clone())?;
    info!(%listen, peers = peers.len(), "transaction gossip listening");
    let (outbox, inbox) = mpsc::channel(OUTBOX);
    Ok((TxGossip { outbox }, run(swarm, chain, topic, peers, inbox)))
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    chain: Arc<Chain>,
    topic: IdentTopic,
    peers: Vec<Multiaddr>,
    mut inbox: mpsc::Receiver<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut connected: HashSet<Multiaddr> = HashSet::new();
    let mut redial = tokio::time::interval(REDIAL_EVERY);
    // Messages received and not yet judged: admitted in one round once no more are waiting
    // (or the round is full), off the async threads.
    let mut received: Vec<Received> = Vec::new();
    let mut round_txs = 0;
    // Transactions to publish as one message, and when they go at the latest.
    let mut outgoing = Outgoing::default();
    loop {
        tokio::select! {
            biased;
            event = swarm.select_next_some(), if round_txs < ROUND_TXS => match event {
                SwarmEvent::ConnectionEstablished { endpoint, .. } if endpoint.is_dialer() => {
                    connected.insert(endpoint.get_remote_address().clone());
                }
                SwarmEvent::ConnectionClosed { endpoint, num_established: 0, .. } => {
                    connected.remove(endpoint.get_remote_address());
                }
                SwarmEvent::Behaviour(gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                }) => {
                    let txs = decode_batch(&message.data);
                    // An undecodable message still counts, so a flood of them fills a round.
                    round_txs += txs.as_ref().map_or(1, Vec::len);
                    received.push(Received {
                        source: propagation_source,
                        id: message_id,
                        txs,
                    });
                }
                _ => {}
            },
            Some(bytes) = inbox.recv() => {
                let mut full = outgoing.push(bytes);
                // Whatever else is already waiting joins this message.
                while !full && let Ok(more) = inbox.try_recv() {
                    full = outgoing.push(more);
                }
                if full {
                    publish(&mut swarm, &topic, outgoing.take());
                }
            }
            () = sleep_until(outgoing.due), if outgoing.due.is_some() => {
                publish(&mut swarm, &topic, outgoing.take());
            }
            _ = redial.tick() => {
                for addr in peers.iter().filter(|a| !connected.contains(*a)) {
                    if let Err(e) = swarm.dial(addr.clone()) {
                        debug!(%addr, error = %e, "gossip dial");
                    }
                }
            }
            () = std::future::ready(()), if !received.is_empty() => {
                let batch = std::mem::take(&mut received);
                round_txs = 0;
                let chain = chain.clone();
                let (judged, relay) =
                    tokio::task::spawn_blocking(move || admit(&chain, batch)).await?;
                for (r, verdict) in judged {
                    swarm
                        .behaviour_mut()
                        .report_message_validation_result(&r.id, &r.source, verdict);
                }
                for tx in relay {
                    if outgoing.push(tx) {
                        publish(&mut swarm, &topic, outgoing.take());
                    }
                }
            }
        }
    }
}

/// Transactions waiting to be published together, framed as they arrive (the message's
/// bytes, so a flush copies nothing).
#[derive(Default)]
struct Outgoing {
    batch: Vec<u8>,
    /// When they go at the latest: [`FLUSH_AFTER`] after the first.
    due: Option<tokio::time::Instant>,
}

impl Outgoing {
    /// Add one; `true` once the batch is full and must go now.
    fn push(&mut self, tx: Vec<u8>) -> bool {
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_AFTER);
        frame(&mut self.batch, &tx);
        self.batch.len() + 4 + limits::MAX_TX_BYTES > MAX_BATCH_BYTES
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(self).batch
    }
}

/// Sleep until `due` (never, when there is none: the branch is disabled then).
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn publish(swarm: &mut Swarm<Behaviour>, topic: &IdentTopic, batch: Vec<u8>) {
    // `InsufficientPeers` before the first connection is expected: the transactions still
    // reach the chain through this node's own proposals.
    if let Err(e) = swarm.behaviour_mut().publish(topic.clone(), batch) {
        debug!(error = %e, "gossip publish");
    }
}

/// A batch of `txs` as [`Outgoing`] builds it.
#[cfg(test)]
fn encode_batch(txs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for tx in txs {
        frame(&mut out, tx);
    }
    out
}

/// Append one encoded transaction to a batch. A batch on the wire: each encoded transaction
/// as a little-endian `u32` length and its bytes.
fn frame(batch: &mut Vec<u8>, tx: &[u8]) {
    batch.extend_from_slice(&(tx.len() as u32).to_le_bytes());
    batch.extend_from_slice(tx);
}

/// The transactions of a batch, or `None` if it is not one: empty, cut short, larger than
/// this node would send (more than [`MAX_BATCH_BYTES`] of transactions), or holding a
/// transaction that is too long or does not decode.
fn decode_batch(mut data: &[u8]) -> Option<Vec<SignedTx>> {
    let mut txs = Vec::new();
    let mut total = 0;
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        total += len;
        if len > limits::MAX_TX_BYTES || len > rest.len() || total > MAX_BATCH_BYTES {
            return None;
        }
        let (tx, rest) = rest.split_at(len);
        txs.push(SignedTx::decode(tx).ok()?);
        data = rest;
    }
    (!txs.is_empty()).then_some(txs)
}

/// A gossiped message waiting for its verdict, and its transactions (`None`: not a batch).
struct Received {
    source: libp2p::PeerId,
    id: gossipsub::MessageId,
    txs: Option<Vec<SignedTx>>,
}

/// Admit the transactions of gossiped messages, their signatures checked in one batch; each
/// message's verdict (see [`verdict`]), and the encoded transactions new here that arrived in
/// messages not forwarded as they are, for this node's next batch.
fn admit(
    chain: &Chain,
    messages: Vec<Received>,
) -> (Vec<(Received, MessageAcceptance)>, Vec<Vec<u8>>) {
    let mut results = chain
        .submit_batch(messages.iter().filter_map(|r| r.txs.as_ref()).flatten())
        .into_iter();
    let mut relay = Vec::new();
    let judged = messages
        .into_iter()
        .map(|r| {
            let Some(txs) = &r.txs else {
                return (r, MessageAcceptance::Reject);
            };
            let mine: Vec<_> = results.by_ref().take(txs.len()).collect();
            let verdict = verdict(&mine);
            if matches!(verdict, MessageAcceptance::Ignore) {
                for (tx, result) in txs.iter().zip(&mine) {
                    if let Ok(Admission::New(_)) = result {
                        relay.push(tx.encode());
                    }
                }
            }
            (r, verdict)
        })
        .collect();
    (judged, relay)
}

/// A message's verdict from its transactions' admissions: rejected (its sender penalised) if
/// one is forged; forwarded as it is only if every one was new here and admitted; else
/// ignored — a batch padded with decided, invalid or repeated transactions goes no further.
fn verdict(results: &[Result<Admission, AdmitError>]) -> MessageAcceptance {
    let forged = results.iter().any(|r| {
        matches!(
            r,
            Err(AdmitError::Invalid(pot_protocol::TxError::BadSignature(_)))
        )
    });
    if forged {
        MessageAcceptance::Reject
    } else if results.iter().all(|r| matches!(r, Ok(Admission::New(_)))) {
        MessageAcceptance::Accept
    } else {
        MessageAcceptance::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::tx::{Tx, TxBody};
    use pot_protocol::{Amount, SecretKey};

    fn tx(nonce: u64) -> SignedTx {
        let key = SecretKey::from_seed([3; 32]);
        Tx {
            chain_id: "c".into(),
            signer: key.address(),
            nonce,
            fee: Amount(1),
            body: TxBody::Transfer {
                to: key.address(),
                amount: Amount(1),
            },
        }
        .sign(&key)
    }

    #[test]
    fn a_batch_round_trips_and_anything_else_is_refused() {
        let txs = vec![tx(0), tx(1), tx(2)];
        let wire = encode_batch(&txs.iter().map(SignedTx::encode).collect::<Vec<_>>());
        assert_eq!(decode_batch(&wire), Some(txs.clone()));
        // Cut short inside a transaction, empty, a length past the end or past the bound, or
        // a transaction that does not decode: not a batch.
        let one = 4 + txs[0].encode().len();
        for cut in (1..wire.len()).filter(|c| c % one != 0) {
            assert_eq!(decode_batch(&wire[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_batch(&wire[..one]), Some(txs[..1].to_vec()));
        assert_eq!(decode_batch(&[]), None);
        let mut long = ((limits::MAX_TX_BYTES + 1) as u32).to_le_bytes().to_vec();
        long.resize(4 + limits::MAX_TX_BYTES + 1, 0);
        assert_eq!(decode_batch(&long), None);
        assert_eq!(decode_batch(&encode_batch(&[vec![1, 2, 3]])), None);
    }

    #[test]
    fn a_batch_is_forwarded_as_it_is_only_if_every_transaction_was_new_here() {
        let h = |b| Hash([b; 32]);
        let new = || Ok(Admission::New(h(1)));
        let forged = || {
            let key = SecretKey::from_seed([9; 32]).address();
            Err(AdmitError::Invalid(pot_protocol::TxError::BadSignature(
                pot_protocol::crypto::SignatureError::Invalid(key),
            )))
        };
        let full = || {
            Err(AdmitError::SenderFull {
                signer: SecretKey::from_seed([9; 32]).address(),
                count: 16,
                max: 16,
            })
        };
        let accept =
            |r: &[Result<Admission, AdmitError>]| matches!(verdict(r), MessageAcceptance::Accept);
        let reject =
            |r: &[Result<Admission, AdmitError>]| matches!(verdict(r), MessageAcceptance::Reject);
        assert!(accept(&[new(), new()]));
        // One decided (or held, or repeated) transaction padding junk: not forwarded, so a
        // stranger cannot make honest coordinators carry it around the network.
        assert!(!accept(&[Ok(Admission::Known(h(2))), full(), full()]));
        assert!(!reject(&[Ok(Admission::Known(h(2))), full(), full()]));
        assert!(!accept(&[new(), Ok(Admission::Known(h(1)))]));
        // A transaction of a sender that has no room here is not verified: not forwarded
        // either, so no honest relayer is ever penalised for it further on.
        assert!(!accept(&[new(), full()]));
        assert!(reject(&[new(), forged()]));
    }

    #[test]
    fn a_batch_larger_than_a_node_sends_is_refused() {
        let one = tx(0).encode();
        let n = MAX_BATCH_BYTES / one.len() + 1;
        let wire = encode_batch(&vec![one; n]);
        assert_eq!(decode_batch(&wire), None);
    }

    #[test]
    fn a_batch_goes_once_full_or_when_due() {
        let mut out = Outgoing::default();
        assert!(out.due.is_none());
        let one = tx(0).encode();
        assert!(!out.push(one.clone()));
        assert!(out.due.is_some(), "the first transaction sets when it goes");
        let mut pushes = 1;
        while !out.push(one.clone()) {
            pushes += 1;
        }
        assert!(
            out.batch.len() <= MAX_BATCH_BYTES,
            "{} bytes",
            out.batch.len()
        );
        assert!(pushes > 100, "full after {pushes}");
        let wire = out.take();
        assert_eq!(decode_batch(&wire).map(|t| t.len()), Some(pushes + 1));
        assert!(out.due.is_none() && out.batch.is_empty());
    }
}
