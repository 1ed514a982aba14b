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
                // The next poll asks the next coordinator: one that answers but holds back its
                // head (or answers slowly) delays this node by a poll, never for good.
                next_source += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::commit::{Commit, CommitSignature, VoteContent, VoteKind};
    use pot_protocol::genesis::{Coordinator, GenesisBalance};
    use pot_protocol::{Amount, Block, Genesis, ProposerKey, SecretKey};

    fn keys() -> Vec<SecretKey> {
        (1..=4).map(|i| SecretKey::from_seed([i; 32])).collect()
    }

    fn genesis(keys: &[SecretKey]) -> Genesis {
        Genesis {
            chain_id: "t".into(),
            genesis_time_ms: 0,
            params: Default::default(),
            balances: vec![GenesisBalance {
                address: keys[0].address(),
                amount: Amount(1_000_000),
            }],
            stakes: vec![],
            coordinators: keys.iter().map(Coordinator::for_key).collect(),
        }
    }

    /// A certificate for `block` signed by `signers`.
    fn certificate(chain: &Chain, block: &Block, signers: &[&SecretKey]) -> Commit {
        let signatures = signers
            .iter()
            .map(|k| {
                let vote = VoteContent {
                    kind: VoteKind::Precommit,
                    height: block.header.height,
                    round: 0,
                    block: Some(block.hash()),
                    voter: k.address(),
                };
                CommitSignature {
                    coordinator: k.address(),
                    signature: k.sign(vote.digest(&chain.genesis_hash()).as_bytes()),
                }
            })
            .collect();
        Commit {
            height: block.header.height,
            round: 0,
            block: block.hash(),
            signatures,
        }
    }

    #[test]
    fn only_a_block_more_than_two_thirds_of_the_coordinators_signed_is_followed() {
        let keys = keys();
        let dir = tempfile::tempdir().unwrap();
        let network =
            Chain::open(genesis(&keys), &dir.path().join("n"), Default::default()).unwrap();
        let follower =
            Chain::open(genesis(&keys), &dir.path().join("f"), Default::default()).unwrap();
        let (block, _) = network.propose(&ProposerKey::new(&keys[0]), 1_000);

        // Two of four is not a quorum; a stranger's signature counts for nothing.
        let stranger = SecretKey::from_seed([9; 32]);
        for signers in [
            vec![&keys[0], &keys[1]],
            vec![&keys[0], &keys[1], &stranger],
        ] {
            let d = DecidedBlock {
                block: block.clone(),
                commit: certificate(&network, &block, &signers),
            };
            assert!(matches!(
                check(&follower, 1, &d),
                Err(Refused::Certificate(_))
            ));
        }
        // A quorum's certificate does not cover another block: one lying coordinator cannot
        // swap the transactions under a real certificate.
        let quorum = [&keys[0], &keys[1], &keys[2]];
        let (mut forged, _) = network.propose(&ProposerKey::new(&keys[0]), 2_000);
        forged.header.time_ms += 1;
        let d = DecidedBlock {
            block: forged,
            commit: certificate(&network, &block, &quorum),
        };
        assert!(matches!(
            check(&follower, 1, &d),
            Err(Refused::Certificate(CommitError::OtherBlock { .. }))
        ));
        // Served for another height.
        let d = DecidedBlock {
            block: block.clone(),
            commit: certificate(&network, &block, &quorum),
        };
        assert!(matches!(
            check(&follower, 2, &d),
            Err(Refused::OtherHeight { .. })
        ));
        // The real thing is followed.
        check(&follower, 1, &d).unwrap();
        follower.commit(&d.block, &d.commit, None).unwrap();
        assert_eq!(follower.height(), 1);
        assert_eq!(follower.state().tip.hash, block.hash());
    }
}
