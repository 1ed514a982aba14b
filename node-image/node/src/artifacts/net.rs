//! The artifact swarm: libp2p 0.56 with noise and yamux, identify, Kademlia (seeded by
//! `--bootstrap` addresses; holders announce blobs as provider records) and the
//! request–response protocol of `wire`. The swarm runs in one task; `ArtifactNet` is the
//! handle the rest of the node talks to it through.
//!
//! Serving is bounded: at most `PER_PEER` requests of one peer in flight (more are answered
//! `Busy`), every read from disk off the async runtime, every message size-limited.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use libp2p::futures::StreamExt;
use libp2p::kad::{self, GetProvidersOk, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{
    self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, tcp, yamux};
use pot_protocol::Hash;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::store::BlobStore;
use super::transfer::{self, Ask, AskError, FetchLimits};
use super::wire::{self, Request, Response};

/// Requests of one peer served at once, and of all peers; more are answered `Busy`. A request
/// counts until its answer has been sent (or has failed), so a peer that does not read its
/// answers holds its own slots, not more.
const PER_PEER: usize = 8;
const ALL_PEERS: usize = 64;
/// Blobs fetched at once.
const FETCHES: usize = 4;
/// How long a request may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a provider lookup may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the routing table is refreshed and bootstrap peers redialled.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/pot/kad/1");

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    artifacts: request_response::Behaviour<wire::Codec>,
}

enum Command {
    Ask {
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response, AskError>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    Provide(Hash),
    Holders {
        blob: Hash,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// The handle to a running artifact swarm. Dropping every clone stops it.
#[derive(Clone)]
pub struct ArtifactNet {
    commands: mpsc::Sender<Command>,
    pub peer_id: PeerId,
    /// The address it listens on (with the port the system chose, if 0 was asked).
    pub listen: Multiaddr,
    pub store: BlobStore,
    /// One fetch per blob at a time (a second caller waits for the first and finds the blob
    /// stored), and at most `FETCHES` blobs at once.
    fetching: Arc<std::sync::Mutex<HashMap<Hash, Arc<tokio::sync::Mutex<()>>>>>,
    fetch_slots: Arc<tokio::sync::Semaphore>,
}

impl ArtifactNet {
    /// Listen on `listen`, join the network through `bootstrap` (addresses, with or without a
    /// `/p2p/<peer id>` suffix) and serve `store`. The identity is the node's account key, so a
    /// miner's peer id follows from its address.
    pub async fn start(
        key: &pot_protocol::SecretKey,
        listen: Multiaddr,
        bootstrap: Vec<Multiaddr>,
        store: BlobStore,
    ) -> anyhow::Result<ArtifactNet> {
        let mut swarm = build(key)?;
        swarm
            .listen_on(listen.clone())
            .with_context(|| format!("listening for artifacts on {listen}"))?;
        let listen = loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => break address,
                SwarmEvent::ListenerError { error, .. } => {
                    anyhow::bail!("listening for artifacts on {listen}: {error}")
                }
                _ => {}
            }
        };
        let peer_id = *swarm.local_peer_id();
        info!(%peer_id, %listen, "artifact swarm listening");
        for addr in &bootstrap {
            dial_bootstrap(&mut swarm, addr);
        }
        let (commands, rx) = mpsc::channel(1024);
        let net = ArtifactNet {
            commands,
            peer_id,
            listen,
            store: store.clone(),
            fetching: Arc::default(),
            fetch_slots: Arc::new(tokio::sync::Semaphore::new(FETCHES)),
        };
        tokio::spawn(run(swarm, rx, store.clone(), bootstrap));
        // Announce what is already here (a restart, or blobs put in place before it).
        for blob in store.list()? {
            net.provide(blob).await;
        }
        Ok(net)
    }

    /// This node's address for others to dial: the listen address with its peer id.
    pub fn address(&self) -> Multiaddr {
        self.listen.clone().with(Protocol::P2p(self.peer_id))
    }

    /// Tell the swarm where `peer` is.
    pub async fn add_peer(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.commands.send(Command::AddAddress { peer, addr }).await;
    }

    /// Announce that this node holds `blob` (a Kademlia provider record).
    pub async fn provide(&self, blob: Hash) {
        let _ = self.commands.send(Command::Provide(blob)).await;
    }

    /// Peers that announced they hold `blob`.
    pub async fn holders(&self, blob: Hash) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Holders { blob, reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Fetch `blob` (at most `max_bytes`) from `known` holders and those the network names,
    /// then announce it. Returns at once if it is already stored.
    pub async fn fetch(&self, blob: Hash, max_bytes: u64, known: &[PeerId]) -> anyhow::Result<()> {
        let this_blob = self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(blob)
            .or_default()
            .clone();
        let _one_per_blob = this_blob.lock().await;
        let result = self.fetch_exclusive(blob, max_bytes, known).await;
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&blob);
        result
    }

    async fn fetch_exclusive(
        &self,
        blob: Hash,
        max_bytes: u64,
        known: &[PeerId],
    ) -> anyhow::Result<()> {
        if self.store.contains(&blob) {
            return Ok(());
        }
        let _slot = self.fetch_slots.acquire().await?;
        let mut holders: Vec<PeerId> = known.to_vec();
        for p in self.holders(blob).await {
            if !holders.contains(&p) && p != self.peer_id {
                holders.push(p);
            }
        }
        transfer::fetch(
            &self.store,
            self,
            blob,
            &holders,
            FetchLimits::up_to(max_bytes),
        )
        .await?;
        self.provide(blob).await;
        Ok(())
    }
}

#[async_trait]
impl Ask for ArtifactNet {
    async fn ask(&self, peer: PeerId, req: Request) -> Result<Response, AskError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Ask { peer, req, reply })
            .await
            .map_err(|_| AskError::Unreachable("the artifact swarm has stopped".into()))?;
        rx.await
            .map_err(|_| AskError::Unreachable("the artifact swarm has stopped".into()))?
    }
}

/// The resolver the swarm names peers with: the system's (`/etc/resolv.conf`), or — where that
/// is missing or unreadable — one with no name server, so the swarm still starts and dials
/// peers named by IP address (the system's failure would otherwise stop the node; a public
/// default would send cluster names to a stranger's resolver).
fn resolver_config(
    resolv_conf: std::io::Result<String>,
) -> (
    hickory_resolver::config::ResolverConfig,
    hickory_resolver::config::ResolverOpts,
) {
    let parsed = resolv_conf.map_err(|e| e.to_string()).and_then(|text| {
        hickory_resolver::system_conf::parse_resolv_conf(text).map_err(|e| e.to_string())
    });
    parsed.unwrap_or_else(|e| {
        tracing::warn!(
            error = %e,
            "no usable /etc/resolv.conf: the artifact swarm dials peers by IP address only"
        );
        (
            hickory_resolver::config::ResolverConfig::new(),
            hickory_resolver::config::ResolverOpts::default(),
        )
    })
}

fn build(key: &pot_protocol::SecretKey) -> anyhow::Result<Swarm<Behaviour>> {
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(key.seed())?;
    let resolver = resolver_config(std::fs::read_to_string("/etc/resolv.conf"));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        // Bootstrap peers are named by DNS in a cluster (`/dns4/<pod>.<service>…`); without
        // a resolver they are never dialled and no holder is ever found.
        .with_dns_config(resolver.0, resolver.1)
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            kad_config.set_query_timeout(QUERY_TIMEOUT);
            // Room for many blobs: the default 1024 provided keys, shared with other peers'
            // records, would let a stranger crowd out this node's own announcements.
            let store_config = kad::store::MemoryStoreConfig {
                max_records: 1 << 16,
                max_provided_keys: 1 << 20,
                ..Default::default()
            };
            let mut kad = kad::Behaviour::with_config(
                id,
                kad::store::MemoryStore::with_config(id, store_config),
                kad_config,
            );
            // Loopback and cluster addresses are never confirmed as external; serve anyway.
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/pot/1".into(),
                    key.public(),
                )),
                kad,
                artifacts: request_response::Behaviour::new(
                    [(wire::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(REQUEST_TIMEOUT)
                        .with_max_concurrent_streams(256),
                ),
            }
        })
        .map_err(|e| anyhow::anyhow!("artifact swarm: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// Whether a peer's own address may enter the routing table: IP addresses only. Names are
/// resolved for the bootstrap addresses this node was given; a name a stranger advertises
/// would make every node that dials it query DNS for whatever the stranger chose.
fn is_ip_address(addr: &Multiaddr) -> bool {
    matches!(
        addr.iter().next(),
        Some(Protocol::Ip4(_) | Protocol::Ip6(_))
    )
}

fn dial_bootstrap(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) {
    if let Some(Protocol::P2p(peer)) = addr.iter().last() {
        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
    }
    if let Err(e) = swarm.dial(addr.clone()) {
        debug!(%addr, "dialling a bootstrap peer: {e}");
    }
}

/// A response read from disk, on its way back to the swarm.
struct Served {
    channel: ResponseChannel<Response>,
    response: Response,
}

/// The requests being served: who asked, counted until the answer is sent or fails.
struct Serving<I = InboundRequestId> {
    by_request: HashMap<I, PeerId>,
    by_peer: HashMap<PeerId, usize>,
}

impl<I> Default for Serving<I> {
    fn default() -> Self {
        Serving {
            by_request: HashMap::new(),
            by_peer: HashMap::new(),
        }
    }
}

impl<I: std::hash::Hash + Eq> Serving<I> {
    fn admit(&mut self, id: I, peer: PeerId) -> bool {
        let mine = self.by_peer.get(&peer).copied().unwrap_or(0);
        if mine >= PER_PEER || self.by_request.len() >= ALL_PEERS {
            return false;
        }
        self.by_request.insert(id, peer);
        *self.by_peer.entry(peer).or_default() += 1;
        true
    }

    fn done(&mut self, id: I) {
        if let Some(peer) = self.by_request.remove(&id)
            && let Some(n) = self.by_peer.get_mut(&peer)
        {
            *n -= 1;
            if *n == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    store: BlobStore,
    bootstrap: Vec<Multiaddr>,
) {
    let mut asks: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, AskError>>> =
        HashMap::new();
    let mut lookups: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)> =
        HashMap::new();
    let mut serving = Serving::default();
    let (served_tx, mut served_rx) = mpsc::channel::<Served>(256);
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Ask { peer, req, reply } => {
                        let id = swarm.behaviour_mut().artifacts.send_request(&peer, req);
                        asks.insert(id, reply);
                    }
                    Command::AddAddress { peer, addr } => {
                        swarm.behaviour_mut().kad.add_address(&peer, addr);
                    }
                    Command::Provide(blob) => {
                        let key = kad::RecordKey::new(&blob.0);
                        if let Err(e) = swarm.behaviour_mut().kad.start_providing(key) {
                            warn!(%blob, "announcing a blob: {e}");
                        }
                    }
                    Command::Holders { blob, reply } => {
                        let id = swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&blob.0));
                        lookups.insert(id, (HashSet::new(), reply));
                    }
                }
            }
            Some(s) = served_rx.recv() => {
                // Counted until `ResponseSent` or `InboundFailure` (which a dropped channel
                // also raises).
                let _ = swarm.behaviour_mut().artifacts.send_response(s.channel, s.response);
            }
            _ = refresh.tick() => {
                for addr in &bootstrap {
                    if let Some(Protocol::P2p(peer)) = addr.iter().last()
                        && swarm.is_connected(&peer)
                    {
                        continue;
                    }
                    dial_bootstrap(&mut swarm, addr);
                }
                let _ = swarm.behaviour_mut().kad.bootstrap();
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Artifacts(e)) => {
                    on_artifacts(&mut swarm, e, &mut asks, &mut serving, &store, &served_tx);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) => {
                    for addr in info.listen_addrs.into_iter().filter(is_ip_address) {
                        swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    id,
                    result: QueryResult::GetProviders(r),
                    step,
                    ..
                })) => {
                    if let Some((found, _)) = lookups.get_mut(&id)
                        && let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r
                    {
                        found.extend(providers);
                    }
                    if step.last
                        && let Some((found, reply)) = lookups.remove(&id)
                    {
                        let _ = reply.send(found.into_iter().collect());
                    }
                }
                _ => {}
            },
        }
    }
    debug!("artifact swarm stopped");
}

fn on_artifacts(
    swarm: &mut Swarm<Behaviour>,
    event: request_response::Event<Request, Response>,
    asks: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<Response, AskError>>>,
    serving: &mut Serving,
    store: &BlobStore,
    served: &mpsc::Sender<Served>,
) {
    use request_response::{Event, Message, OutboundFailure};
    match event {
        Event::Message {
            peer,
            message:
                Message::Request {
                    request_id,
                    request,
                    channel,
                },
            ..
        } => {
            if !serving.admit(request_id, peer) {
                let _ = swarm
                    .behaviour_mut()
                    .artifacts
                    .send_response(channel, Response::Busy);
                return;
            }
            let (store, served) = (store.clone(), served.clone());
            tokio::spawn(async move {
                let response = tokio::task::spawn_blocking(move || answer(&store, request))
                    .await
                    .unwrap_or(Response::NotFound);
                let _ = served.send(Served { channel, response }).await;
            });
        }
        Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(reply) = asks.remove(&request_id) {
                let _ = reply.send(Ok(response));
            }
        }
        Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some(reply) = asks.remove(&request_id) {
                let e = match error {
                    OutboundFailure::Timeout => AskError::Timeout,
                    other => AskError::Unreachable(other.to_string()),
                };
                let _ = reply.send(Err(e));
            }
        }
        Event::InboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            debug!(%peer, "serving an artifact request failed: {error}");
            serving.done(request_id);
        }
        Event::ResponseSent { request_id, .. } => serving.done(request_id),
    }
}

/// What this node answers to a request, from its store.
fn answer(store: &BlobStore, request: Request) -> Response {
    let result = match request {
        Request::Manifest { blob } => store
            .chunk_hashes(&blob)
            .map(|m| m.map(|(size, chunks)| Response::Manifest { size, chunks })),
        Request::Chunk { blob, index } => store
            .read_chunk(&blob, index)
            .map(|c| c.map(|bytes| Response::Chunk { bytes })),
    };
    match result {
        Ok(Some(r)) => r,
        Ok(None) => Response::NotFound,
        Err(e) => {
            warn!("reading an artifact to serve: {e:#}");
            Response::NotFound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_resolv_conf_leaves_a_resolver_with_no_name_server() {
        let missing = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(resolver_config(missing).0.name_servers().is_empty());
        let garbage = Ok("nameserver not-an-address\n".to_string());
        assert!(resolver_config(garbage).0.name_servers().is_empty());
        let cluster = Ok("nameserver 10.96.0.10\nsearch ns.svc.cluster.local\n".to_string());
        let (cfg, _) = resolver_config(cluster);
        assert_eq!(
            cfg.name_servers()[0].socket_addr,
            "10.96.0.10:53".parse().unwrap()
        );
    }

    #[test]
    fn only_ip_addresses_a_peer_advertises_are_kept() {
        let ok = |s: &str| is_ip_address(&s.parse().unwrap());
        assert!(ok("/ip4/10.0.0.7/tcp/26658"));
        assert!(ok("/ip6/::1/tcp/26658"));
        assert!(!ok("/dns4/anything.example/tcp/26658"));
        assert!(!ok("/dns/x.svc.cluster.local/tcp/1"));
        assert!(!ok("/dnsaddr/bootstrap.example"));
    }

    #[test]
    fn a_request_holds_its_slot_until_its_answer_is_gone_and_strangers_share_a_cap() {
        let mut s = Serving::<u64>::default();
        let greedy = PeerId::random();
        for id in 0..PER_PEER as u64 {
            assert!(s.admit(id, greedy));
        }
        // Reconnecting or not, the same peer gets no more until one answer has been sent.
        assert!(!s.admit(100, greedy));
        s.done(0);
        assert!(s.admit(101, greedy));
        s.done(0); // an id finished twice frees nothing more
        assert!(!s.admit(102, greedy));
        // Many peers together stop at the global cap.
        let mut id = 1000;
        while s.admit(id, PeerId::random()) {
            id += 1;
        }
        assert_eq!(s.by_request.len(), ALL_PEERS);
    }
}
