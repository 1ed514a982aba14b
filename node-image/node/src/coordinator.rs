//! `pot-node run --role coordinator`: open the chain in the data directory, serve the HTTP API,
//! and take part in consensus until stopped (SIGINT/SIGTERM) or the engine fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use multiaddr::Multiaddr;
use pot_protocol::{Genesis, SecretKey};
use tracing::info;

use crate::api::{self, Api};
use crate::artifacts::BlobStore;
use crate::artifacts::net::ArtifactNet;
use crate::chain::Chain;
use crate::chain::admission::Admitter;
use crate::chain::mempool::Limits;
use crate::consensus::{self, EngineConfig};
use crate::metrics::Metrics;
use crate::p2p;

/// `peers` without this host's own entries: a `/dns4/<host>…` or `/dns/<host>…` address whose
/// first label is `host` (a pod's `$HOSTNAME`). A StatefulSet gives every coordinator the same
/// list of all of them; dialling oneself only fails and retries.
pub fn peers_other_than(host: &str, peers: Vec<Multiaddr>) -> Vec<Multiaddr> {
    use multiaddr::Protocol;
    if host.is_empty() {
        return peers;
    }
    peers
        .into_iter()
        .filter(|p| {
            !p.iter().any(|part| match part {
                Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => {
                    name.split('.').next() == Some(host)
                }
                _ => false,
            })
        })
        .collect()
}

pub struct Options {
    pub genesis: Genesis,
    pub key: SecretKey,
    pub data_dir: PathBuf,
    pub p2p_listen: Multiaddr,
    pub api_listen: SocketAddr,
    pub peers: Vec<Multiaddr>,
    /// Where to listen for transaction gossip, and the other coordinators' gossip addresses;
    /// without it, a transaction waits for this node's turn to propose.
    pub gossip: Option<(Multiaddr, Vec<Multiaddr>)>,
    /// Where the artifact swarm listens, and the peers it joins through.
    pub artifacts: Option<(Multiaddr, Vec<Multiaddr>)>,
    /// The record of what the key signed (see `consensus::sign_guard`).
    pub sign_state: PathBuf,
    /// Start a new record over a non-empty chain database.
    pub new_sign_state: bool,
    #[cfg(feature = "fault-injection")]
    pub faults: crate::consensus::faults::Faults,
}

/// A panic anywhere ends the process. The consensus engine's actors catch panics and carry on
/// without the actor that panicked, which would leave a coordinator that serves `/healthz` but
/// no longer takes part; a supervisor (Kubernetes) restarts a process that is gone.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(panic = %info, "aborting: a panic leaves a coordinator half-alive");
        std::process::abort();
    }));
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    abort_on_panic();
    let chain = Arc::new(
        Chain::open(opts.genesis, &opts.data_dir, Limits::default())
            .with_context(|| format!("opening the chain in {}", opts.data_dir.display()))?,
    );
    let metrics = Arc::new(Metrics::register());
    let listener = tokio::net::TcpListener::bind(opts.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", opts.api_listen))?;
    info!(
        api = %listener.local_addr()?,
        p2p = %opts.p2p_listen,
        height = chain.height(),
        address = %opts.key.address(),
        "coordinator starting"
    );
    let (gossip, gossip_loop) = match opts.gossip {
        Some((listen, peers)) => {
            let (handle, run) = p2p::start(chain.clone(), &opts.key, listen, peers)?;
            (Some(handle), Some(run))
        }
        None => (None, None),
    };
    let gossip_loop = async move {
        match gossip_loop {
            Some(run) => run.await,
            None => std::future::pending().await,
        }
    };
    let status = Arc::new(consensus::status::EngineStatus::default());
    let blobs = BlobStore::open(&opts.data_dir.join("artifacts"))?;
    let artifact_net = match opts.artifacts {
        Some((listen, bootstrap)) => {
            Some(ArtifactNet::start(&opts.key, listen, bootstrap, blobs.clone()).await?)
        }
        None => None,
    };
    let router = api::router(Api {
        admitter: Admitter::start(chain.clone(), move |stx| {
            if let Some(g) = &gossip {
                g.publish(stx);
            }
        })
        .context("starting the admission threads")?,
        chain: chain.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        blobs,
        artifact_net,
    });
    let server = axum::serve(listener, router);
    let engine = consensus::run(
        EngineConfig {
            moniker: opts.key.address().short(),
            data_dir: opts.data_dir.clone(),
            key: opts.key,
            p2p_listen: opts.p2p_listen,
            peers: opts.peers,
            sign_state: opts.sign_state,
            new_sign_state: opts.new_sign_state,
            #[cfg(feature = "fault-injection")]
            faults: opts.faults,
        },
        chain,
        metrics,
        status,
    );
    tokio::select! {
        r = server => r.context("the API server stopped"),
        r = gossip_loop => r.context("transaction gossip stopped"),
        r = engine => r.map_err(|e| anyhow::anyhow!("consensus stopped: {e:#}")),
        () = shutdown() => {
            info!("stopping on signal");
            Ok(())
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_does_not_dial_itself() {
        let all: Vec<Multiaddr> = [
            "/dns4/net-coordinator-0.net-coordinators.ns.svc.cluster.local/tcp/26656",
            "/dns4/net-coordinator-1.net-coordinators.ns.svc.cluster.local/tcp/26656",
            "/dns/net-coordinator-10/tcp/26656",
            "/ip4/127.0.0.1/tcp/26656",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let kept = peers_other_than("net-coordinator-1", all.clone());
        assert_eq!(kept.len(), 3);
        assert!(!kept.contains(&all[1]));
        // A prefix is not a match (coordinator-1 is not coordinator-10).
        assert!(kept.contains(&all[2]));
        assert_eq!(peers_other_than("", all.clone()), all);
    }
}
