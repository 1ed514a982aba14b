//! Transaction gossip between coordinators: a libp2p (0.56, the stack Malachite uses) swarm
//! with one GossipSub topic per chain. A transaction admitted to this node's mempool through
//! the API is published; one received is admitted here and forwarded only if it was admitted,
//! so invalid transactions stop at the first honest coordinator. Transactions are signed by
//! their senders, so messages are anonymous and identified by the transaction hash: the same
//! transaction submitted to several coordinators is one message.

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

use crate::chain::Chain;
use crate::chain::mempool::AdmitError;

/// How often peers that are not connected are dialled again.
const REDIAL_EVERY: Duration = Duration::from_secs(2);
/// Transactions waiting to be published before the API is told to slow down.
const OUTBOX: usize = 10_000;
/// Received transactions admitted together, their signatures verified in one batch.
const BATCH: usize = 256;

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
        .max_transmit_size(2 * limits::MAX_TX_BYTES)
        .heartbeat_interval(Duration::from_millis(500))
        .message_id_fn(|m| {
            gossipsub::MessageId::from(Hash::tagged("pot/gossip/tx", &[&m.data]).0.to_vec())
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
    let topic = IdentTopic::new(format!("pot/txs/{}", chain.genesis_hash()));
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
    // Messages received and not yet judged: admitted as a batch once no more are waiting (or
    // the batch is full), off the async threads.
    let mut received: Vec<Received> = Vec::new();
    loop {
        tokio::select! {
            biased;
            event = swarm.select_next_some(), if received.len() < BATCH => match event {
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
                }) => received.push(Received {
                    source: propagation_source,
                    id: message_id,
                    data: message.data,
                }),
                _ => {}
            },
            Some(bytes) = inbox.recv() => {
                // `InsufficientPeers` before the first connection is expected: the transaction
                // still reaches the chain through this node's own proposals.
                if let Err(e) = swarm.behaviour_mut().publish(topic.clone(), bytes) {
                    debug!(error = %e, "gossip publish");
                }
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
                let chain = chain.clone();
                let judged = tokio::task::spawn_blocking(move || admit(&chain, batch)).await?;
                for (r, verdict) in judged {
                    swarm
                        .behaviour_mut()
                        .report_message_validation_result(&r.id, &r.source, verdict);
                }
            }
        }
    }
}

/// A gossiped message waiting for its verdict.
struct Received {
    source: libp2p::PeerId,
    id: gossipsub::MessageId,
    data: Vec<u8>,
}

/// Admit gossiped transactions, their signatures checked in one batch. Malformed or forged
/// ones are rejected (the peer that sent them is penalised); ones that merely do not apply
/// here now (a nonce this mempool has not reached, a full pool) are ignored, not forwarded.
fn admit(chain: &Chain, batch: Vec<Received>) -> Vec<(Received, MessageAcceptance)> {
    let decoded: Vec<Option<SignedTx>> = batch
        .iter()
        .map(|r| SignedTx::decode(&r.data).ok())
        .collect();
    let mut verdicts = chain
        .submit_batch(decoded.iter().flatten().cloned().collect())
        .into_iter();
    batch
        .into_iter()
        .zip(decoded)
        .map(|(r, tx)| {
            let verdict = match tx.map(|_| verdicts.next().expect("one verdict per tx")) {
                None => MessageAcceptance::Reject,
                Some(Ok(_)) => MessageAcceptance::Accept,
                Some(Err(AdmitError::Invalid(pot_protocol::TxError::BadSignature(_)))) => {
                    MessageAcceptance::Reject
                }
                Some(Err(_)) => MessageAcceptance::Ignore,
            };
            (r, verdict)
        })
        .collect()
}
