//! Following the chain without taking part in consensus (miners, validators, verifiers).
//!
//! A follower keeps its own copy of the chain: it asks coordinators' APIs for each next block
//! with its commit certificate, checks the certificate against the genesis coordinator set
//! (more than two thirds of the power signed this block at this height), and executes the block
//! on its own state. A coordinator that lies can therefore only withhold blocks (the follower
//! asks another), never make the follower believe a task, a claim or a balance that the
//! network did not decide. Everything a role decides, it decides from this local state.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pot_protocol::api::DecidedBlock;
use pot_protocol::client::Client;
use pot_protocol::commit::CommitError;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Chain, ChainError};

/// Why a decided block a source served was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("it is block {got}, not {asked}")]
    OtherHeight { asked: u64, got: u64 },
    #[error("its commit certificate does not prove it: {0}")]
    Certificate(#[from] CommitError),
}

/// Check that `d` is the block at `height` that the coordinators decided.
pub fn check(chain: &Chain, height: u64, d: &DecidedBlock) -> Result<(), Refused> {
    if d.block.header.height != height {
        return Err(Refused::OtherHeight {
            asked: height,
            got: d.block.header.height,
        });
    }
    d.commit.verify(
        &chain.genesis_hash(),
        &chain.genesis().coordinators,
        height,
        &d.block.hash(),
    )?;
    Ok(())
}

/// Follow the chain from `sources` (coordinator APIs), publishing each new height on `tip`,
/// until an error no other source can cure: a block whose certificate verifies but that does
/// not apply to this node's state (more than a third of the coordinators are faulty, or this
/// node's data is corrupt), or a disk that refuses writes.
pub async fn follow(
    chain: Arc<Chain>,
    sources: Vec<Client>,
    tip: watch::Sender<u64>,
    poll: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(!sources.is_empty(), "a follower needs a coordinator API");
    tip.send_replace(chain.height());
    let mut next_source = 0;
    let mut caught_up = false;
    loop {
        let src = &sources[next_source % sources.len()];
        match catch_up(&chain, src, &tip).await {
            Ok(()) => {
                if !caught_up {
                    caught_up = true;
                    info!(
                        height = chain.height(),
                        source = src.base(),
                        "caught up with the chain"
                    );
                }
                tokio::time::sleep(poll).await
            }
            Err(Failure::Source(why)) => {
                warn!(source = src.base(), "{why:#}; asking another coordinator");
                next_source += 1;
                tokio::time::sleep(poll).await;
            }
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
}

enum Failure {
    /// This source could not be reached, or served something unproven: try another.
    Source(anyhow::Error),
    /// Nothing another source serves can fix this.
    Fatal(anyhow::Error),
}

/// Take every block `src` has beyond this node's tip.
async fn catch_up(
    chain: &Arc<Chain>,
    src: &Client,
    tip: &watch::Sender<u64>,
) -> Result<(), Failure> {
    let head = src
        .head()
        .await
        .map_err(|e| Failure::Source(anyhow::Error::new(e).context("reading the head")))?;
    if head.genesis_hash != chain.genesis_hash() {
        return Err(Failure::Source(anyhow::anyhow!(
            "{} runs another chain (genesis {}, this node's {})",
            src.base(),
            head.genesis_hash,
            chain.genesis_hash()
        )));
    }
    while chain.height() < head.height {
        let height = chain.height() + 1;
        let decided = src.decided(height).await.map_err(|e| {
            Failure::Source(anyhow::Error::new(e).context(format!("block {height}")))
        })?;
        check(chain, height, &decided).map_err(|e| {
            Failure::Source(anyhow::Error::new(e).context(format!(
                "{} served a block {height} that was not decided",
                src.base()
            )))
        })?;
        let c = chain.clone();
        let committed =
            tokio::task::spawn_blocking(move || c.commit(&decided.block, &decided.commit, None))
                .await
                .context("the block executor panicked")
                .map_err(Failure::Fatal)?;
        match committed {
            Ok(()) => {}
            Err(e @ (ChainError::DecidedBlockInvalid { .. } | ChainError::Fork { .. })) => {
                return Err(Failure::Fatal(anyhow::Error::new(e).context(
                    "a block with a valid commit certificate cannot be followed: more than a \
                     third of the coordinators are faulty, or this node's data is corrupt",
                )));
            }
            Err(e) => {
                return Err(Failure::Fatal(
                    anyhow::Error::new(e).context(format!("storing block {height}")),
                ));
            }
        }
        debug!(height, "followed");
        tip.send_replace(height);
    }
    Ok(())
}
