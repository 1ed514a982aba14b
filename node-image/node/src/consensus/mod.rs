//! BFT consensus among coordinators, by Malachite (Tendermint). The rest of the node sees only
//! [`EngineConfig`] and [`run`]: blocks go in and out through [`crate::chain::Chain`].

pub mod app;
pub mod codec;
pub mod context;
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(test)]
mod locking_tests;
pub mod parts;
pub mod sign_guard;
pub mod signing;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytesize::ByteSize;
use eyre::eyre;
use malachitebft_app::events::RxEvent;
use malachitebft_app::node::{Node, NodeConfig, NodeHandle};
use malachitebft_app::types::Keypair;
use malachitebft_app_channel::start_engine;
use malachitebft_config::{
    ConsensusConfig, DiscoveryConfig, P2pConfig, PubSubProtocol, TimeoutConfig, ValuePayload,
    ValueSyncConfig,
};
use multiaddr::Multiaddr;
use pot_protocol::{Address, SecretKey};
use serde::{Deserialize, Serialize};
use sign_guard::SignGuard;
use tokio::sync::mpsc;
use tracing::warn;

use crate::chain::Chain;
use crate::metrics::Metrics;
use codec::BorshCodec;
use context::{Height, PotContext, ValidatorAddress, ValidatorSet};
use signing::Signer;

/// How a coordinator joins consensus.
#[derive(Clone)]
pub struct EngineConfig {
    pub moniker: String,
    /// The engine's write-ahead log lives in `<data_dir>/wal`.
    pub data_dir: PathBuf,
    pub key: SecretKey,
    pub p2p_listen: Multiaddr,
    pub peers: Vec<Multiaddr>,
    /// The record of what this key signed (see [`sign_guard`]).
    pub sign_state: PathBuf,
    /// Start a new record even though the chain database is not empty.
    pub new_sign_state: bool,
    /// Deliberate misbehaviour (tests of what honest coordinators do about it).
    #[cfg(feature = "fault-injection")]
    pub faults: faults::Faults,
}

/// What Malachite reads from a node's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    moniker: String,
    consensus: ConsensusConfig,
    value_sync: ValueSyncConfig,
}

impl NodeConfig for Settings {
    fn moniker(&self) -> &str {
        &self.moniker
    }

    fn consensus(&self) -> &ConsensusConfig {
        &self.consensus
    }

    fn value_sync(&self) -> &ValueSyncConfig {
        &self.value_sync
    }
}

impl Settings {
    fn new(cfg: &EngineConfig, block_time: Duration) -> Settings {
        // A proposer waits up to one block time before building, so give it that on top of
        // the default propose timeout.
        let timeouts = TimeoutConfig {
            timeout_propose: Duration::from_secs(3) + block_time,
            ..TimeoutConfig::default()
        };
        let consensus = ConsensusConfig {
            timeouts,
            p2p: P2pConfig {
                listen_addr: cfg.p2p_listen.clone(),
                persistent_peers: cfg.peers.clone(),
                discovery: DiscoveryConfig::default(),
                // GossipSub keeps one stream per peer. Malachite's `Broadcast` (libp2p-scatter)
                // opens and negotiates a new stream for every message, a round trip each: with
                // 100 ms links a block took ~920 ms from build to commit, and p99 finality was
                // 2.1 s against GossipSub's 1.5 s (4 coordinators; the same on loopback).
                protocol: PubSubProtocol::GossipSub(Default::default()),
                pubsub_max_size: ByteSize::mib(8),
                rpc_max_size: ByteSize::mib(16),
            },
            value_payload: ValuePayload::PartsOnly,
            queue_capacity: 0,
        };
        let value_sync = ValueSyncConfig {
            status_update_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            ..ValueSyncConfig::default()
        };
        Settings {
            moniker: cfg.moniker.clone(),
            consensus,
            value_sync,
        }
    }
}

/// The engine's view of this node: where its home is and which key it signs with.
struct EngineNode {
    home: PathBuf,
    key: SecretKey,
    settings: Settings,
    signer: Signer,
}

/// Unused: the engine is started through `start_engine`, not `Node::start`.
struct NoHandle;

#[async_trait]
impl NodeHandle<PotContext> for NoHandle {
    fn subscribe(&self) -> RxEvent<PotContext> {
        unreachable!("pot-node never starts the engine through Node::start")
    }

    async fn kill(&self, _reason: Option<String>) -> eyre::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Node for EngineNode {
    type Context = PotContext;
    type Config = Settings;
    type Genesis = ();
    type PrivateKeyFile = [u8; 32];
    type SigningProvider = Signer;
    type NodeHandle = NoHandle;

    async fn start(&self) -> eyre::Result<NoHandle> {
        Err(eyre!("pot-node starts the engine with consensus::run"))
    }

    async fn run(self) -> eyre::Result<()> {
        Err(eyre!("pot-node starts the engine with consensus::run"))
    }

    fn get_home_dir(&self) -> PathBuf {
        self.home.clone()
    }

    fn load_config(&self) -> eyre::Result<Settings> {
        Ok(self.settings.clone())
    }

    fn get_address(&self, pk: &Address) -> ValidatorAddress {
        ValidatorAddress(*pk)
    }

    fn get_public_key(&self, sk: &SecretKey) -> Address {
        sk.address()
    }

    fn get_keypair(&self, sk: SecretKey) -> Keypair {
        // The libp2p identity is the coordinator's own key, so its peer id is derived from
        // the address in the genesis file.
        Keypair::ed25519_from_bytes(sk.seed()).expect("32-byte ed25519 seeds are valid")
    }

    fn load_private_key(&self, seed: [u8; 32]) -> SecretKey {
        SecretKey::from_seed(seed)
    }

    fn load_private_key_file(&self) -> eyre::Result<[u8; 32]> {
        Ok(self.key.seed())
    }

    fn load_genesis(&self) -> eyre::Result<()> {
        Ok(())
    }

    fn get_signing_provider(&self, _sk: SecretKey) -> Signer {
        self.signer.clone()
    }
}

/// Join consensus and serve the engine until it stops. Returns only with an error.
pub async fn run(
    cfg: EngineConfig,
    chain: Arc<Chain>,
    metrics: Arc<Metrics>,
    status: Arc<status::EngineStatus>,
) -> eyre::Result<()> {
    let block_time = Duration::from_millis(chain.genesis().params.block_time_ms);
    let me = cfg.key.address();
    if !chain.genesis().coordinators.iter().any(|c| c.address == me) {
        return Err(eyre!(
            "key {me} is not a coordinator in the genesis file; coordinators are {}",
            chain
                .genesis()
                .coordinators
                .iter()
                .map(|c| c.address.short())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !SignGuard::exists(&cfg.sign_state) && chain.height() > 0 && !cfg.new_sign_state {
        return Err(eyre!(
            "the signing record {} is missing, but the chain database is at height {}: this key \
             may have signed at heights it would sign again. Restore the record; or, only if this \
             key has never signed on this chain or its last signature is long decided, start \
             once with --new-sign-state",
            cfg.sign_state.display(),
            chain.height()
        ));
    }
    let guard = Arc::new(SignGuard::open(&cfg.sign_state)?);
    if guard.height() > chain.height() + 1 {
        warn!(
            signed = guard.height(),
            chain = chain.height(),
            record = %guard.path().display(),
            "this key signed at a height the chain database has not reached; following without \
             signing until sync passes it"
        );
    }
    let (halt, mut halted) = mpsc::unbounded_channel();
    let signer = Signer::guarded(cfg.key.clone(), chain.genesis_hash(), guard, halt)
        .with_status(status.clone());
    #[cfg(feature = "fault-injection")]
    let signer = match &cfg.faults.signature_log {
        Some(path) => signer.with_signature_log(path)?,
        None => signer,
    };
    let settings = Settings::new(&cfg, block_time);
    #[cfg(feature = "fault-injection")]
    let signer = if cfg.faults.proposal == Some(faults::Fault::EquivocateVotes) {
        let tap =
            faults::spawn_vote_equivocator(&settings.consensus, cfg.key.seed(), signer.clone());
        signer.with_vote_tap(tap)
    } else {
        signer
    };
    #[cfg(feature = "fault-injection")]
    let signer = match &cfg.faults.received_vote_log {
        Some(path) => signer.with_received_vote_log(path)?,
        None => signer,
    };
    let node = EngineNode {
        home: cfg.data_dir.clone(),
        key: cfg.key.clone(),
        settings: settings.clone(),
        signer: signer.clone(),
    };
    let validators = ValidatorSet::new(&chain.genesis().coordinators);
    let start = Height(chain.height() + 1);
    let (mut channels, handle) = start_engine(
        PotContext,
        node,
        settings,
        BorshCodec,
        BorshCodec,
        Some(start),
        validators,
    )
    .await?;
    let app = app::App::new(chain, Arc::new(signer), metrics, status);
    #[cfg(feature = "fault-injection")]
    let app = app.with_faults(cfg.faults.clone());
    let result = tokio::select! {
        r = app.run(&mut channels) => r,
        Some(reason) = halted.recv() => Err(eyre!("halting: {reason}")),
    };
    handle.actor.stop(Some("application stopped".into()));
    result
}
