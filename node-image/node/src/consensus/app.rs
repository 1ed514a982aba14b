//! The application side of Malachite: one loop over the engine's messages, one short arm per
//! message, each calling into the chain (build, check, commit) or the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use borsh::{BorshDeserialize, BorshSerialize};
use eyre::eyre;
use malachitebft_app::types::sync::RawDecidedValue;
use malachitebft_app::types::{LocallyProposedValue, ProposedValue};
use malachitebft_app_channel::{AppMsg, Channels, NetworkMsg};
use malachitebft_core_types::{
    CommitCertificate, Context as _, Height as _, Round, Validity, Value,
};
use malachitebft_engine::host::Next;
use pot_protocol::{Block, State, encoding};
use tracing::{debug, error, info, warn};

use super::Fault;
use super::codec::BorshCodec;
use super::context::{BlockId, BlockValue, Height, PotContext, ValidatorAddress, ValidatorSet};
use super::parts::{self, Assembled, MAX_STREAM_BYTES, Reassembly};
use super::signing::Signer;
use crate::chain::{Chain, now_ms};
use crate::metrics::Metrics;
use malachitebft_app::types::codec::Codec;

/// Complete proposals kept for heights this node has not reached yet.
const MAX_FUTURE_PROPOSALS: usize = 32;

/// What the store keeps about a proposal until its height is decided.
#[derive(BorshSerialize, BorshDeserialize)]
struct Undecided {
    round: Round,
    valid_round: Round,
    proposer: ValidatorAddress,
    valid: bool,
    value: BlockValue,
}

impl Undecided {
    fn proposed(&self, height: Height) -> ProposedValue<PotContext> {
        ProposedValue {
            height,
            round: self.round,
            valid_round: self.valid_round,
            proposer: self.proposer,
            value: self.value.clone(),
            validity: Validity::from_bool(self.valid),
        }
    }
}

pub struct App {
    chain: Arc<Chain>,
    signer: Arc<Signer>,
    me: ValidatorAddress,
    validators: ValidatorSet,
    block_time: Duration,
    metrics: Arc<Metrics>,
    reassembly: Reassembly,
    /// Proposals checked at the current height, each with the state after it, so a decision is
    /// neither read back from the store nor executed twice.
    checked: HashMap<BlockId, (BlockValue, State)>,
    proposer_key: pot_protocol::ProposerKey,
    future: BTreeMap<u64, Vec<Assembled>>,
    last_commit: Option<std::time::Instant>,
    fault: Option<Fault>,
}

impl App {
    pub fn new(
        chain: Arc<Chain>,
        signer: Arc<Signer>,
        metrics: Arc<Metrics>,
        fault: Option<Fault>,
    ) -> App {
        let validators = ValidatorSet::new(&chain.genesis().coordinators);
        let block_time = Duration::from_millis(chain.genesis().params.block_time_ms);
        App {
            me: ValidatorAddress(signer.address()),
            proposer_key: signer.proposer_key(),
            chain,
            signer,
            validators,
            block_time,
            metrics,
            reassembly: Reassembly::default(),
            checked: HashMap::new(),
            future: BTreeMap::new(),
            last_commit: None,
            fault,
        }
    }

    fn next_height(&self) -> Height {
        Height(self.chain.height() + 1)
    }

    /// Serve the engine until it stops.
    pub async fn run(mut self, channels: &mut Channels<PotContext>) -> eyre::Result<()> {
        while let Some(msg) = channels.consensus.recv().await {
            self.handle(msg, channels).await?;
        }
        Err(eyre!("the consensus engine stopped"))
    }

    async fn handle(
        &mut self,
        msg: AppMsg<PotContext>,
        channels: &mut Channels<PotContext>,
    ) -> eyre::Result<()> {
        match msg {
            AppMsg::ConsensusReady { reply } => {
                let start = self.next_height();
                info!(%start, "consensus ready");
                let _ = reply.send((start, self.validators.clone()));
            }
            AppMsg::StartedRound {
                height,
                round,
                proposer,
                reply_value,
                ..
            } => {
                debug!(%height, %round, %proposer, "round started");
                self.metrics.round(round.as_i64());
                self.check_future(height)?;
                let _ = reply_value.send(self.stored_proposals(height, Some(round))?);
            }
            AppMsg::GetValue {
                height,
                round,
                timeout,
                reply,
            } => {
                let value = self.value_to_propose(height, round, timeout).await?;
                let _ = reply.send(LocallyProposedValue::new(height, round, value.clone()));
                self.publish(channels, height, round, Round::Nil, &value)
                    .await?;
            }
            AppMsg::ExtendVote { reply, .. } => {
                let _ = reply.send(None);
            }
            AppMsg::VerifyVoteExtension { reply, .. } => {
                let _ = reply.send(Ok(()));
            }
            AppMsg::RestreamProposal {
                height,
                round,
                valid_round,
                value_id,
                ..
            } => {
                let found = self
                    .stored_proposals(height, None)?
                    .into_iter()
                    .find(|p| p.value.id() == value_id);
                match found {
                    Some(p) => {
                        self.store_proposal(height, round, valid_round, self.me, true, &p.value)?;
                        self.publish(channels, height, round, valid_round, &p.value)
                            .await?
                    }
                    None => {
                        warn!(%height, %round, %value_id, "asked to restream an unknown proposal")
                    }
                }
            }
            AppMsg::GetHistoryMinHeight { reply } => {
                let _ = reply.send(Height::INITIAL);
            }
            AppMsg::ReceivedProposalPart { from, part, reply } => {
                let proposed = match self.reassembly.add(self.signer.chain(), from, part) {
                    Ok(Some(assembled)) => self.received_proposal(assembled)?,
                    Ok(None) => None,
                    Err(e) => {
                        warn!(%from, error = %e, "dropped a proposal stream");
                        self.metrics.rejected_proposal();
                        None
                    }
                };
                let _ = reply.send(proposed);
            }
            AppMsg::GetValidatorSet { reply, .. } => {
                let _ = reply.send(Some(self.validators.clone()));
            }
            AppMsg::Decided {
                certificate, reply, ..
            } => {
                let height = certificate.height;
                let next = match self.commit(certificate) {
                    Ok(()) => Next::Start(height.increment(), self.validators.clone()),
                    Err(e) => {
                        error!(%height, error = %e, "could not commit the decided block; restarting the height");
                        Next::Restart(height, self.validators.clone())
                    }
                };
                let _ = reply.send(next);
            }
            AppMsg::GetDecidedValue { height, reply } => {
                let _ = reply.send(self.decided_value(height)?);
            }
            AppMsg::ProcessSyncedValue {
                height,
                round,
                proposer,
                value_bytes,
                reply,
            } => {
                let proposed = match encoding::decode_limited::<Block>(
                    &value_bytes,
                    MAX_STREAM_BYTES,
                ) {
                    Ok(block) if block.header.height == height.0 => {
                        let value = BlockValue::new(block);
                        self.store_proposal(height, round, Round::Nil, proposer, true, &value)?;
                        Some(ProposedValue {
                            height,
                            round,
                            valid_round: Round::Nil,
                            proposer,
                            value,
                            validity: Validity::Valid,
                        })
                    }
                    Ok(block) => {
                        warn!(%height, got = block.header.height, "synced block is for another height");
                        None
                    }
                    Err(e) => {
                        warn!(%height, error = %e, "synced block does not decode");
                        None
                    }
                };
                let _ = reply.send(proposed);
            }
        }
        Ok(())
    }

    /// The value this node proposes at (height, round): the one it already proposed there if
    /// any (never two values for one round, even across a crash), else a new block built once
    /// the block time since the last block has passed.
    async fn value_to_propose(
        &mut self,
        height: Height,
        round: Round,
        timeout: Duration,
    ) -> eyre::Result<BlockValue> {
        if let Some(p) = self
            .stored_proposals(height, Some(round))?
            .into_iter()
            .find(|p| p.proposer == self.me)
        {
            info!(%height, %round, "re-proposing the value already built for this round");
            return Ok(p.value);
        }
        let due = self.chain.state().tip.time_ms + self.block_time.as_millis() as u64;
        let wait = Duration::from_millis(due.saturating_sub(now_ms())).min(timeout / 2);
        tokio::time::sleep(wait).await;
        let (mut block, after) = self.chain.propose(&self.proposer_key, now_ms());
        if let Some(fault) = self.fault {
            block = corrupt(block, fault, &self.signer);
            warn!(%height, %round, ?fault, "proposing a deliberately faulty block");
        }
        debug!(%height, %round, txs = block.txs.len(), "proposing");
        let value = BlockValue::new(block);
        self.store_proposal(height, round, Round::Nil, self.me, true, &value)?;
        self.checked.insert(value.id(), (value.clone(), after));
        Ok(value)
    }

    async fn publish(
        &self,
        channels: &mut Channels<PotContext>,
        height: Height,
        round: Round,
        pol_round: Round,
        value: &BlockValue,
    ) -> eyre::Result<()> {
        let bytes = borsh::to_vec(value.block())?;
        for msg in parts::stream(&self.signer, height, round, pol_round, &bytes) {
            channels
                .network
                .send(NetworkMsg::PublishProposalPart(msg))
                .await?;
        }
        Ok(())
    }

    /// A complete, signed proposal arrived: check who sent it and what it holds.
    fn received_proposal(
        &mut self,
        a: Assembled,
    ) -> eyre::Result<Option<ProposedValue<PotContext>>> {
        let next = self.next_height();
        if a.height < next || a.proposer == self.me {
            return Ok(None);
        }
        let expected = PotContext.select_proposer(&self.validators, a.height, a.round);
        if expected.address != a.proposer {
            warn!(height = %a.height, round = %a.round, proposer = %a.proposer, "proposal from a coordinator whose turn it is not");
            self.metrics.rejected_proposal();
            return Ok(None);
        }
        if a.height > next {
            let stash = self.future.entry(a.height.0).or_default();
            stash.push(a);
            while self.future.values().map(Vec::len).sum::<usize>() > MAX_FUTURE_PROPOSALS {
                let last = *self.future.keys().next_back().expect("non-empty");
                self.future.remove(&last);
            }
            return Ok(None);
        }
        self.check_and_store(a)
    }

    fn check_and_store(&mut self, a: Assembled) -> eyre::Result<Option<ProposedValue<PotContext>>> {
        let block = match encoding::decode_limited::<Block>(&a.block_bytes, MAX_STREAM_BYTES) {
            Ok(b) => b,
            Err(e) => {
                warn!(height = %a.height, error = %e, "proposed block does not decode");
                self.metrics.rejected_proposal();
                return Ok(None);
            }
        };
        let value = BlockValue::new(block);
        let valid = match self
            .chain
            .check_proposal(value.block(), a.proposer.0, now_ms())
        {
            Ok(after) => {
                self.checked.insert(value.id(), (value.clone(), after));
                true
            }
            Err(e) => {
                warn!(height = %a.height, round = %a.round, proposer = %a.proposer, error = %e, "voting against an invalid proposal");
                self.metrics.rejected_proposal();
                false
            }
        };
        self.store_proposal(a.height, a.round, a.pol_round, a.proposer, valid, &value)?;
        Ok(Some(ProposedValue {
            height: a.height,
            round: a.round,
            valid_round: a.pol_round,
            proposer: a.proposer,
            value,
            validity: Validity::from_bool(valid),
        }))
    }

    /// Proposals that arrived early for `height`: check them now that it is the next one.
    fn check_future(&mut self, height: Height) -> eyre::Result<()> {
        let stale: Vec<u64> = self.future.range(..=height.0).map(|(h, _)| *h).collect();
        for h in stale {
            for a in self.future.remove(&h).unwrap_or_default() {
                if a.height == height {
                    self.check_and_store(a)?;
                }
            }
        }
        Ok(())
    }

    fn store_proposal(
        &self,
        height: Height,
        round: Round,
        valid_round: Round,
        proposer: ValidatorAddress,
        valid: bool,
        value: &BlockValue,
    ) -> eyre::Result<()> {
        let record = Undecided {
            round,
            valid_round,
            proposer,
            valid,
            value: value.clone(),
        };
        let round_key = round.as_u32().unwrap_or(0);
        self.chain.store().put_undecided(
            height.0,
            round_key,
            &value.id().0,
            &borsh::to_vec(&record)?,
        )?;
        Ok(())
    }

    /// Proposals stored for `height` (in `round`, or any round).
    fn stored_proposals(
        &self,
        height: Height,
        round: Option<Round>,
    ) -> eyre::Result<Vec<ProposedValue<PotContext>>> {
        let mut out = Vec::new();
        for (_, _, bytes) in self.chain.store().undecided_at(height.0)? {
            let record: Undecided = borsh::from_slice(&bytes)?;
            if round.is_none_or(|r| r == record.round) {
                out.push(record.proposed(height));
            }
        }
        Ok(out)
    }

    fn commit(&mut self, certificate: CommitCertificate<PotContext>) -> eyre::Result<()> {
        let height = certificate.height;
        let id = certificate.value_id;
        // A value checked at this height is in memory with the state after it; one that came
        // through sync, or before a restart, is in the store and is executed on commit.
        let (value, after) = match self.checked.remove(&id) {
            Some((value, after)) => (value, Some(after)),
            None => {
                let stored = self
                    .stored_proposals(height, None)?
                    .into_iter()
                    .find(|p| p.value.id() == id)
                    .ok_or_else(|| {
                        eyre!("decided value {id} at height {height} was never received")
                    })?;
                (stored.value, None)
            }
        };
        let cert_bytes = BorshCodec.encode(&certificate)?;
        self.chain.commit(value.block(), &cert_bytes, after)?;
        self.checked.clear();
        let now = std::time::Instant::now();
        let interval = self.last_commit.map(|t| now - t);
        self.last_commit = Some(now);
        self.metrics.committed(
            height.0,
            value.block().txs.len(),
            interval,
            certificate.round.as_i64(),
        );
        info!(%height, round = %certificate.round, txs = value.block().txs.len(), hash = %id, "committed");
        Ok(())
    }

    fn decided_value(&self, height: Height) -> eyre::Result<Option<RawDecidedValue<PotContext>>> {
        let store = self.chain.store();
        let (Some(value_bytes), Some(cert)) =
            (store.block_bytes(height.0)?, store.certificate(height.0)?)
        else {
            return Ok(None);
        };
        let certificate: CommitCertificate<PotContext> = BorshCodec.decode(cert.into())?;
        Ok(Some(RawDecidedValue {
            value_bytes: value_bytes.into(),
            certificate,
        }))
    }
}

/// Break a block the way `fault` says, keeping everything else consistent (the transaction
/// root matches its transactions) so that only the intended fault is there to be caught.
fn corrupt(mut block: Block, fault: Fault, signer: &Signer) -> Block {
    use pot_protocol::tx::{Tx, TxBody};
    match fault {
        Fault::WrongStateRoot => {
            block.header.state_root = pot_protocol::Hash::digest(b"not the state root");
        }
        Fault::InvalidTx => {
            let forger = pot_protocol::SecretKey::from_seed([0xee; 32]);
            let mut stx = Tx {
                chain_id: String::new(),
                signer: forger.address(),
                nonce: 0,
                fee: pot_protocol::Amount(0),
                body: TxBody::Transfer {
                    to: signer.address(),
                    amount: pot_protocol::Amount(1),
                },
            }
            .sign(&forger);
            // The forger's signature, claimed for this coordinator's account.
            stx.tx.signer = signer.address();
            block.txs.push(stx);
            block.header.tx_root = pot_protocol::block::tx_root(&block.txs);
        }
    }
    block
}
