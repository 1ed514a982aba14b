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
    CommitCertificate, CommitSignature, Context as _, Height as _, Round, Validity, Value,
};
use malachitebft_engine::host::Next;
use malachitebft_engine::util::streaming::StreamMessage;
use malachitebft_peer::PeerId;
use pot_protocol::commit::{self, Commit};
use pot_protocol::{Address, Block, State, encoding};
use tracing::{debug, error, info, warn};

use super::context::{
    BlockId, BlockValue, Height, PotContext, ProposalPart, ValidatorAddress, ValidatorSet,
};
use super::parts::{self, Assembled, MAX_STREAM_BYTES, Reassembly, StreamError};
use super::sign_guard::Refusal;
use super::signing::{Signer, round_number};
use crate::chain::{Chain, now_ms};
use crate::metrics::Metrics;

/// Complete proposals kept for heights this node has not reached yet.
const MAX_FUTURE_PROPOSALS: usize = 32;
/// How far above the next height a proposal stream is accepted (a node a little behind its
/// peers keeps the proposals it will need; anything further is sync's job).
const MAX_HEIGHTS_AHEAD: u64 = 4;
/// How far above this node's current round (or round 0, for a later height) a proposal is
/// accepted. A coordinator proposes in every n-th round, so without a bound it could send
/// proposals for thousands of future rounds.
const MAX_ROUNDS_AHEAD: u32 = 4;

/// What the store keeps about a proposal until its height is decided.
#[derive(BorshSerialize, BorshDeserialize)]
struct Undecided {
    round: Round,
    valid_round: Round,
    proposer: ValidatorAddress,
    valid: bool,
    value: BlockValue,
    /// Came through sync (from a peer that is not its proposer): kept only so that a decision
    /// replayed after a crash finds it, never offered to the engine as a proposal.
    synced: bool,
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
    /// Values that came through sync at the current height: kept only to commit when the
    /// engine decides them (with a certificate it checked), never stored as proposals, since
    /// the peer that sent one is not its proposer.
    synced: HashMap<BlockId, (BlockValue, State)>,
    /// The round this node is in at the next height.
    round: Round,
    /// The value each (height, round) proposal was, once one was checked: a second, different
    /// one from the same proposer is equivocation, dropped unexecuted and unstored.
    proposed: HashMap<(u64, u32), BlockId>,
    /// The coordinators' libp2p peer ids (derived from their keys), to know who sent a part.
    peers: HashMap<PeerId, Address>,
    last_commit: Option<std::time::Instant>,
    status: Arc<super::status::EngineStatus>,
    #[cfg(feature = "fault-injection")]
    faults: super::faults::Faults,
}

/// The libp2p peer id of a coordinator's key (its identity on the consensus network).
pub fn peer_id(address: &Address) -> Option<PeerId> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&address.0).ok()?;
    let id = libp2p_identity::PublicKey::from(key).to_peer_id();
    PeerId::from_bytes(&id.to_bytes()).ok()
}

impl App {
    pub fn new(
        chain: Arc<Chain>,
        signer: Arc<Signer>,
        metrics: Arc<Metrics>,
        status: Arc<super::status::EngineStatus>,
    ) -> App {
        let validators = ValidatorSet::new(&chain.genesis().coordinators);
        let block_time = Duration::from_millis(chain.genesis().params.block_time_ms);
        let peers = chain
            .genesis()
            .coordinators
            .iter()
            .filter_map(|c| Some((peer_id(&c.address)?, c.address)))
            .collect();
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
            synced: HashMap::new(),
            round: Round::new(0),
            proposed: HashMap::new(),
            peers,
            last_commit: None,
            status,
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        }
    }

    /// Inject these faults (tests only).
    #[cfg(feature = "fault-injection")]
    pub fn with_faults(mut self, faults: super::faults::Faults) -> App {
        self.faults = faults;
        self
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
                self.round = round;
                self.metrics.round(round.as_i64());
                self.check_future(height).await?;
                let _ = reply_value.send(self.stored_proposals(height, Some(round))?);
                #[cfg(feature = "fault-injection")]
                self.flood(channels, height).await?;
            }
            AppMsg::GetValue {
                height,
                round,
                timeout,
                reply,
            } => {
                let (value, pol_round) = self.value_to_propose(height, round, timeout).await?;
                let _ = reply.send(LocallyProposedValue::new(height, round, value.clone()));
                self.publish(channels, height, round, pol_round, &value)
                    .await?;
                #[cfg(feature = "fault-injection")]
                {
                    self.equivocate(channels, height, round).await?;
                    if let Some(super::faults::Crash::AfterProposing(h)) = self.faults.crash_at
                        && height.0 >= h
                    {
                        // Give the parts a moment to leave through the network actor.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        super::faults::crash("after proposing");
                    }
                }
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
                address,
                value_id,
            } => {
                if let Some(value) = self.value_to_restream(height, round, address, value_id)? {
                    self.store_proposal(height, round, valid_round, self.me, true, &value)?;
                    self.publish(channels, height, round, valid_round, &value)
                        .await?
                }
            }
            AppMsg::GetHistoryMinHeight { reply } => {
                let _ = reply.send(Height::INITIAL);
            }
            AppMsg::ReceivedProposalPart { from, part, reply } => {
                let proposed = match self.received_part(from, part) {
                    Ok(Some(assembled)) => self.received_proposal(assembled).await?,
                    Ok(None) => None,
                    Err(e) => {
                        debug!(%from, error = %e, "dropped a proposal part");
                        self.metrics.rejected_part();
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
                // A block the network decided and this node cannot store or apply: halting is
                // the only safe answer. Restarting the height would re-run it with no memory of
                // this node's votes (the engine resets its WAL), and a persistent error would
                // spin while the node looked healthy.
                if let Err(e) = self.commit(certificate).await {
                    error!(%height, error = %e, "halting: could not commit the decided block");
                    return Err(eyre!(
                        "halting: could not commit the decided block at height {height}: {e:#}"
                    ));
                }
                let _ = reply.send(Next::Start(height.increment(), self.validators.clone()));
            }
            AppMsg::GetDecidedValue { height, reply } => {
                let _ = reply.send(self.decided_value(height));
            }
            AppMsg::ProcessSyncedValue {
                height,
                round,
                proposer,
                value_bytes,
                reply,
            } => {
                let proposed = self
                    .synced_value(height, round, proposer, &value_bytes)
                    .await;
                let _ = reply.send(proposed);
            }
        }
        Ok(())
    }

    /// The value this node proposes at (height, round), with its polka round: the one it
    /// already proposed there if any (never two values for one round, even across a crash; a
    /// re-proposal keeps the polka round it was streamed with, or the others would judge
    /// another coordinator's block as this one's fresh proposal), else a new block built once
    /// the block time since the last block has passed.
    async fn value_to_propose(
        &mut self,
        height: Height,
        round: Round,
        timeout: Duration,
    ) -> eyre::Result<(BlockValue, Round)> {
        if let Some(p) = self
            .stored_proposals(height, Some(round))?
            .into_iter()
            .find(|p| p.proposer == self.me)
        {
            info!(%height, %round, pol_round = %p.valid_round, "proposing again the value already proposed in this round");
            return Ok((p.value, p.valid_round));
        }
        let due = self.chain.state().tip.time_ms + self.block_time.as_millis() as u64;
        let wait = Duration::from_millis(due.saturating_sub(now_ms())).min(timeout / 2);
        tokio::time::sleep(wait).await;
        #[allow(unused_mut)]
        let (mut block, after) = {
            let (chain, key) = (self.chain.clone(), self.proposer_key.clone());
            tokio::task::spawn_blocking(move || chain.propose(&key, now_ms())).await?
        };
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = self.faults.proposal.filter(|f| f.corrupts_blocks()) {
            block = super::faults::corrupt(block, fault, &self.signer);
            warn!(%height, %round, ?fault, "proposing a deliberately faulty block");
        }
        debug!(%height, %round, txs = block.txs.len(), "proposing");
        let value = BlockValue::new(block);
        self.store_proposal(height, round, Round::Nil, self.me, true, &value)?;
        self.checked.insert(value.id(), (value.clone(), after));
        Ok((value, Round::Nil))
    }

    /// The value to stream again for `proposer`'s proposal at (height, round), if that is this
    /// node's to send: only its own proposals (the engine also asks for other coordinators'
    /// in late rounds; signed as this node they would be refused by every peer and by the sign
    /// guard, and storing them as this node's would make a restart propose them as its own).
    fn value_to_restream(
        &self,
        height: Height,
        round: Round,
        proposer: ValidatorAddress,
        value_id: BlockId,
    ) -> eyre::Result<Option<BlockValue>> {
        if proposer != self.me {
            debug!(%height, %round, %proposer, "not restreaming another coordinator's proposal");
            return Ok(None);
        }
        let found = self
            .stored_proposals(height, None)?
            .into_iter()
            .find(|p| p.value.id() == value_id)
            .map(|p| p.value);
        if found.is_none() {
            warn!(%height, %round, %value_id, "asked to restream an unknown proposal");
        }
        Ok(found)
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
        let messages =
            match parts::stream(&self.signer, height, round, pol_round, value.id().0, &bytes) {
                Ok(messages) => messages,
                // The record cannot be kept: signing without it would be unsafe.
                Err(refusal @ Refusal::Io { .. }) => return Err(eyre!("halting: {refusal}")),
                // Catching up below what this key signed, it proposed something else here
                // before it lost its memory, or the round moved on: propose nothing.
                Err(refusal) => {
                    warn!(%refusal, "not proposing");
                    return Ok(());
                }
            };
        send_parts(channels, messages).await
    }

    /// A part of a proposal stream: accepted only from the coordinator whose turn it is at the
    /// stream's height and round, for a height this node is about to decide.
    fn received_part(
        &mut self,
        from: PeerId,
        part: StreamMessage<ProposalPart>,
    ) -> Result<Option<Assembled>, StreamError> {
        let sender = *self.peers.get(&from).ok_or(StreamError::Stranger)?;
        let (height, round) = parts::parse_stream_id(&part.stream_id).ok_or(
            StreamError::Malformed("stream id is not a height and round"),
        )?;
        let next = self.next_height().0;
        if height.0 < next || height.0 > next + MAX_HEIGHTS_AHEAD {
            return Err(StreamError::OutOfRange {
                height,
                from: next,
                to: next + MAX_HEIGHTS_AHEAD,
            });
        }
        let base = if height.0 == next {
            round_number(self.round)
        } else {
            0
        };
        if round_number(round) > base + MAX_ROUNDS_AHEAD {
            return Err(StreamError::RoundOutOfRange {
                height,
                round,
                base,
            });
        }
        let proposer = PotContext.select_proposer(&self.validators, height, round);
        if proposer.address.0 != sender {
            return Err(StreamError::NotProposer {
                sender,
                height,
                round,
                proposer: proposer.address.0,
            });
        }
        self.reassembly
            .add(self.signer.chain(), sender, (height, round), part)
    }

    /// A block a peer sent through sync, for a height whose certificate the engine checked.
    /// The peer is not the block's proposer, so what it sent is checked here (it must be a
    /// block of this height by that proposer that applies to this node's state) and kept
    /// only in memory, never stored as a proposal this node could later vote for.
    async fn synced_value(
        &mut self,
        height: Height,
        round: Round,
        proposer: ValidatorAddress,
        value_bytes: &[u8],
    ) -> Option<ProposedValue<PotContext>> {
        self.status.synced(std::time::Instant::now());
        let block = match encoding::decode_limited::<Block>(value_bytes, MAX_STREAM_BYTES) {
            Ok(block) => block,
            Err(e) => {
                warn!(%height, error = %e, "synced block does not decode");
                return None;
            }
        };
        if block.header.height != height.0 {
            warn!(%height, got = block.header.height, "synced block is for another height");
            return None;
        }
        let value = BlockValue::new(block);
        // The engine checked the certificate before it asked: the block was decided, so it is
        // executed as it is (its proposer and time were judged when it was proposed).
        let checked = {
            let (chain, value) = (self.chain.clone(), value.clone());
            tokio::task::spawn_blocking(move || chain.check_decided(value.block())).await
        };
        let checked = match checked {
            Ok(checked) => checked,
            Err(e) => {
                error!(%height, error = %e, "checking a synced block failed");
                return None;
            }
        };
        let validity = match checked {
            Ok(after) => {
                if let Err(e) = self.store_synced(height, round, proposer, &value) {
                    error!(%height, error = %e, "cannot keep a synced block");
                    return None;
                }
                self.synced.insert(value.id(), (value.clone(), after));
                Validity::Valid
            }
            Err(e) => {
                warn!(%height, %round, error = %e, "synced block does not apply");
                Validity::Invalid
            }
        };
        Some(ProposedValue {
            height,
            round,
            valid_round: Round::Nil,
            proposer,
            value,
            validity,
        })
    }

    /// Publish a second, different valid block for this round (a Byzantine proposer).
    #[cfg(feature = "fault-injection")]
    async fn equivocate(
        &mut self,
        channels: &mut Channels<PotContext>,
        height: Height,
        round: Round,
    ) -> eyre::Result<()> {
        if self.faults.proposal != Some(super::faults::Fault::Equivocate) {
            return Ok(());
        }
        let (other, _) = self.chain.propose(&self.proposer_key, now_ms() + 1);
        let bytes = borsh::to_vec(&other)?;
        let me = ValidatorAddress(self.signer.address());
        let digest =
            parts::stream_digest(self.signer.chain(), height, round, Round::Nil, me, &bytes);
        let signature = self.signer.sign_unguarded(&digest);
        warn!(%height, %round, other = %BlockValue::new(other).id(), "equivocating: a second proposal for this round");
        send_parts(
            channels,
            parts::stream_signed(height, round, Round::Nil, me, &bytes, signature),
        )
        .await
    }

    /// Re-execute a block `proposer` proposed, on a blocking thread: the state after it if
    /// it is valid.
    async fn execute(
        &self,
        value: &BlockValue,
        proposer: Address,
    ) -> eyre::Result<Result<State, crate::chain::ProposalError>> {
        let (chain, value) = (self.chain.clone(), value.clone());
        Ok(tokio::task::spawn_blocking(move || {
            chain.check_proposal(value.block(), proposer, now_ms())
        })
        .await?)
    }

    /// Publish many unfinished streams at `height` (a Byzantine coordinator crowding out honest
    /// proposals).
    #[cfg(feature = "fault-injection")]
    async fn flood(
        &mut self,
        channels: &mut Channels<PotContext>,
        height: Height,
    ) -> eyre::Result<()> {
        use super::faults::{FLOOD_BYTES, FLOOD_STREAMS, Fault};
        use malachitebft_engine::util::streaming::StreamContent;
        if self.faults.proposal != Some(Fault::FloodParts) {
            return Ok(());
        }
        for r in 0..FLOOD_STREAMS {
            let round = Round::new(r);
            let proposer = PotContext
                .select_proposer(&self.validators, height, round)
                .address;
            let id = parts::stream_id(height, round);
            let init = ProposalPart::Init {
                height,
                round,
                pol_round: Round::Nil,
                proposer,
            };
            let junk = ProposalPart::Data(vec![0xab; FLOOD_BYTES]);
            let msgs = [init, junk].into_iter().enumerate().map(|(seq, part)| {
                StreamMessage::new(id.clone(), seq as u64, StreamContent::Data(part))
            });
            send_parts(channels, msgs.collect()).await?;
        }
        Ok(())
    }

    /// A complete, signed proposal arrived: check who sent it and what it holds.
    async fn received_proposal(
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
            // One per round: the proposer of a round gets one slot, however much it sends.
            if stash.iter().any(|s| s.round == a.round) {
                return Ok(None);
            }
            stash.push(a);
            while self.future.values().map(Vec::len).sum::<usize>() > MAX_FUTURE_PROPOSALS {
                let last = *self.future.keys().next_back().expect("non-empty");
                self.future.remove(&last);
            }
            return Ok(None);
        }
        self.check_and_store(a).await
    }

    async fn check_and_store(
        &mut self,
        a: Assembled,
    ) -> eyre::Result<Option<ProposedValue<PotContext>>> {
        let block = match encoding::decode_limited::<Block>(&a.block_bytes, MAX_STREAM_BYTES) {
            Ok(b) => b,
            Err(e) => {
                warn!(height = %a.height, error = %e, "proposed block does not decode");
                self.metrics.rejected_proposal();
                return Ok(None);
            }
        };
        // A fresh proposal must be the sender's own block. A re-proposal (of a value a polka
        // formed for in `pol_round`) carries the block its first proposer built, and is judged
        // as that block, as Tendermint's valid(v) is: requiring the sender would make every
        // re-proposal invalid (a network locked on a block whose builder went silent would
        // never decide again), and requiring that this node saw the block in `pol_round` would
        // stall a network whose locked coordinators are too few without one that missed it.
        // What stops a proposer from splicing another coordinator's header onto its own
        // transactions and calling it a re-proposal is the engine: a re-proposal is prevoted
        // only with a polka for that very value in `pol_round` (third_party/README.md), and a
        // polka forms only for a block its builder proposed itself.
        let builder = if a.pol_round == Round::Nil {
            a.proposer.0
        } else {
            block.header.proposer
        };
        let value = BlockValue::new(block);
        let place = (a.height.0, round_number(a.round));
        match self.proposed.get(&place) {
            Some(first) if *first != value.id() => {
                warn!(height = %a.height, round = %a.round, proposer = %a.proposer, "equivocation: a second, different proposal for one round; dropped");
                self.metrics.rejected_proposal();
                return Ok(None);
            }
            Some(_) => return Ok(None),
            None => {
                self.proposed.insert(place, value.id());
            }
        }
        let valid = match self.execute(&value, builder).await? {
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
    async fn check_future(&mut self, height: Height) -> eyre::Result<()> {
        let stale: Vec<u64> = self.future.range(..=height.0).map(|(h, _)| *h).collect();
        for h in stale {
            for a in self.future.remove(&h).unwrap_or_default() {
                if a.height == height {
                    self.check_and_store(a).await?;
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
            synced: false,
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

    /// Keep a value that came through sync until its height is decided, so that a decision
    /// the engine replays after a crash finds it.
    fn store_synced(
        &self,
        height: Height,
        round: Round,
        proposer: ValidatorAddress,
        value: &BlockValue,
    ) -> eyre::Result<()> {
        let record = Undecided {
            round,
            valid_round: Round::Nil,
            proposer,
            valid: true,
            value: value.clone(),
            synced: true,
        };
        self.chain.store().put_undecided(
            height.0,
            round_number(round),
            &value.id().0,
            &borsh::to_vec(&record)?,
        )?;
        Ok(())
    }

    /// Proposals stored for `height` (in `round`, or any round); not values from sync.
    fn stored_proposals(
        &self,
        height: Height,
        round: Option<Round>,
    ) -> eyre::Result<Vec<ProposedValue<PotContext>>> {
        let mut out = Vec::new();
        for (_, _, bytes) in self.chain.store().undecided_at(height.0)? {
            let record: Undecided = borsh::from_slice(&bytes)?;
            if !record.synced && round.is_none_or(|r| r == record.round) {
                out.push(record.proposed(height));
            }
        }
        Ok(out)
    }

    /// A value stored at `height` with this id, a proposal or one from sync.
    fn stored_value(&self, height: Height, id: BlockId) -> eyre::Result<Option<BlockValue>> {
        for (_, stored, bytes) in self.chain.store().undecided_at(height.0)? {
            if stored == id.0 {
                let record: Undecided = borsh::from_slice(&bytes)?;
                return Ok(Some(record.value));
            }
        }
        Ok(None)
    }

    async fn commit(&mut self, certificate: CommitCertificate<PotContext>) -> eyre::Result<()> {
        let height = certificate.height;
        let id = certificate.value_id;
        #[cfg(feature = "fault-injection")]
        {
            if self.faults.fail_commit_at == Some(height.0) {
                return Err(eyre!("injected fault: the store refused the write"));
            }
            if self.faults.crash_at == Some(super::faults::Crash::BeforeStoringDecided(height.0)) {
                super::faults::crash("between the decision and the store");
            }
        }
        // A value checked at this height is in memory with the state after it; one that came
        // before a restart is in the store and is executed on commit.
        let (value, after) = match self.checked.remove(&id).or_else(|| self.synced.remove(&id)) {
            Some((value, after)) => (value, Some(after)),
            None => {
                let stored = self.stored_value(height, id)?.ok_or_else(|| {
                    eyre!("decided value {id} at height {height} was never received")
                })?;
                (stored, None)
            }
        };
        let mut commit = to_commit(&certificate);
        // The engine counted the valid precommits (a certificate from sync may carry junk
        // beside them, which it ignores); keep only those, and check again in the protocol's
        // own terms that what is stored proves the block to anyone holding the genesis.
        commit.retain_valid(self.signer.chain(), &self.chain.genesis().coordinators);
        commit
            .verify(
                self.signer.chain(),
                &self.chain.genesis().coordinators,
                height.0,
                &id.0,
            )
            .map_err(|e| eyre!("the decided block's certificate does not verify: {e}"))?;
        {
            // Executing (when not done yet) and a synced write: off the async threads.
            let (chain, value) = (self.chain.clone(), value.clone());
            tokio::task::spawn_blocking(move || chain.commit(value.block(), &commit, after))
                .await??;
        }
        self.checked.clear();
        self.synced.clear();
        self.reassembly.prune_below(height.increment());
        self.proposed.retain(|(h, _), _| *h > height.0);
        let now = std::time::Instant::now();
        self.status.committed(height.0, now);
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

    /// A decided block and its certificate for a peer that is catching up. A stored record that
    /// does not decode is reported and not served; it must not take the node down.
    fn decided_value(&self, height: Height) -> Option<RawDecidedValue<PotContext>> {
        let store = self.chain.store();
        let found = store
            .block_bytes(height.0)
            .and_then(|b| Ok((b, store.commit_at(height.0)?)));
        match found {
            Ok((Some(value_bytes), Some(commit))) => Some(RawDecidedValue {
                value_bytes: value_bytes.into(),
                certificate: from_commit(&commit),
            }),
            Ok(_) => None,
            Err(e) => {
                error!(%height, error = %e, "cannot serve a decided block to a peer");
                None
            }
        }
    }
}

/// Hand a proposal stream's messages to the network for gossip.
async fn send_parts(
    channels: &mut Channels<PotContext>,
    messages: Vec<StreamMessage<ProposalPart>>,
) -> eyre::Result<()> {
    for msg in messages {
        channels
            .network
            .send(NetworkMsg::PublishProposalPart(msg))
            .await?;
    }
    Ok(())
}

/// The engine's certificate in the protocol's terms (what the store keeps).
fn to_commit(c: &CommitCertificate<PotContext>) -> Commit {
    Commit {
        height: c.height.0,
        round: round_number(c.round),
        block: c.value_id.0,
        signatures: c
            .commit_signatures
            .iter()
            .map(|s| commit::CommitSignature {
                coordinator: s.address.0,
                signature: s.signature,
            })
            .collect(),
    }
}

/// A stored certificate for the engine (sync serves it to peers).
fn from_commit(c: &Commit) -> CommitCertificate<PotContext> {
    CommitCertificate {
        height: Height(c.height),
        round: Round::new(c.round),
        value_id: BlockId(c.block),
        commit_signatures: c
            .signatures
            .iter()
            .map(|s| CommitSignature::new(ValidatorAddress(s.coordinator), s.signature))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use malachitebft_engine::util::streaming::StreamContent;
    use pot_protocol::SecretKey;
    use pot_protocol::genesis::Coordinator;

    /// An application over a fresh chain of four coordinators, as the first of them.
    fn app(dir: &std::path::Path) -> (App, Vec<SecretKey>) {
        let keys: Vec<SecretKey> = (0..4).map(|i| SecretKey::from_seed([i + 10; 32])).collect();
        let genesis = pot_protocol::Genesis {
            chain_id: "t".into(),
            genesis_time_ms: 0,
            params: Default::default(),
            balances: vec![],
            stakes: vec![],
            coordinators: keys.iter().map(Coordinator::for_key).collect(),
        };
        let chain = Arc::new(Chain::open(genesis, dir, Default::default()).unwrap());
        let signer = Arc::new(Signer::new(keys[0].clone(), chain.genesis_hash()));
        let metrics = Arc::new(Metrics::register());
        let status = Arc::new(super::super::status::EngineStatus::default());
        (App::new(chain, signer, metrics, status), keys)
    }

    fn init_part(h: u64, r: u32, proposer: &SecretKey) -> StreamMessage<ProposalPart> {
        let (height, round) = (Height(h), Round::new(r));
        StreamMessage::new(
            parts::stream_id(height, round),
            0,
            StreamContent::Data(ProposalPart::Init {
                height,
                round,
                pol_round: Round::Nil,
                proposer: ValidatorAddress(proposer.address()),
            }),
        )
    }

    #[test]
    fn parts_are_taken_only_from_the_proposer_of_a_near_height_and_round() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, keys) = app(dir.path());
        let proposer_of = |app: &App, h: u64, r: u32| {
            let p = PotContext.select_proposer(&app.validators, Height(h), Round::new(r));
            keys.iter()
                .find(|k| k.address() == p.address.0)
                .unwrap()
                .clone()
        };
        let p = proposer_of(&app, 1, 0);
        let from = peer_id(&p.address()).unwrap();
        assert_eq!(app.received_part(from, init_part(1, 0, &p)), Ok(None));

        let stranger = SecretKey::from_seed([99; 32]);
        assert_eq!(
            app.received_part(
                peer_id(&stranger.address()).unwrap(),
                init_part(1, 0, &stranger)
            ),
            Err(StreamError::Stranger)
        );
        let other = keys.iter().find(|k| k.address() != p.address()).unwrap();
        assert!(matches!(
            app.received_part(peer_id(&other.address()).unwrap(), init_part(1, 0, other)),
            Err(StreamError::NotProposer { .. })
        ));
        let far = proposer_of(&app, 1, 4 * MAX_ROUNDS_AHEAD);
        assert!(matches!(
            app.received_part(
                peer_id(&far.address()).unwrap(),
                init_part(1, 4 * MAX_ROUNDS_AHEAD, &far)
            ),
            Err(StreamError::RoundOutOfRange { .. })
        ));
        let ahead = proposer_of(&app, 2 + MAX_HEIGHTS_AHEAD, 0);
        assert!(matches!(
            app.received_part(
                peer_id(&ahead.address()).unwrap(),
                init_part(2 + MAX_HEIGHTS_AHEAD, 0, &ahead)
            ),
            Err(StreamError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_corrupt_stored_certificate_is_not_served_and_does_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = app(dir.path());
        assert!(app.decided_value(Height(1)).is_none());
        app.chain
            .store()
            .put_raw_commit_for_test(1, b"not a certificate");
        app.chain
            .store()
            .put_raw_block_for_test(1, b"not a block either");
        assert!(app.decided_value(Height(1)).is_none());
    }

    /// A valid next block built by `key`'s coordinator.
    fn built_by(app: &App, key: &SecretKey) -> Block {
        app.chain
            .propose(&pot_protocol::ProposerKey::new(key), now_ms())
            .0
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_synced_block_is_kept_for_the_decision_but_never_offered_as_a_proposal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, keys) = app(dir.path());
        let block = built_by(&app, &keys[1]);
        let bytes = borsh::to_vec(&block).unwrap();
        let id = BlockId(block.hash());
        let proposer = ValidatorAddress(keys[1].address());
        let got = block_on(app.synced_value(Height(1), Round::new(0), proposer, &bytes)).unwrap();
        assert_eq!(got.validity, Validity::Valid);
        assert!(app.stored_proposals(Height(1), None).unwrap().is_empty());
        assert!(app.stored_value(Height(1), id).unwrap().is_some());

        // A block that does not apply is invalid, and kept nowhere.
        let mut bad = block.clone();
        bad.header.state_root = pot_protocol::Hash::digest(b"wrong");
        let bad_bytes = borsh::to_vec(&bad).unwrap();
        let got =
            block_on(app.synced_value(Height(1), Round::new(0), proposer, &bad_bytes)).unwrap();
        assert_eq!(got.validity, Validity::Invalid);
        assert!(
            app.stored_value(Height(1), BlockId(bad.hash()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_second_different_proposal_for_one_round_is_dropped_unexecuted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, keys) = app(dir.path());
        let p = PotContext.select_proposer(&app.validators, Height(1), Round::new(0));
        let key = keys.iter().find(|k| k.address() == p.address.0).unwrap();
        let assembled = |time: u64| {
            let (block, _) = app
                .chain
                .propose(&pot_protocol::ProposerKey::new(key), time);
            Assembled {
                height: Height(1),
                round: Round::new(0),
                pol_round: Round::Nil,
                proposer: ValidatorAddress(key.address()),
                block_bytes: borsh::to_vec(&block).unwrap(),
            }
        };
        let (first, second) = (assembled(now_ms()), assembled(now_ms() + 7));
        assert!(block_on(app.check_and_store(first)).unwrap().is_some());
        assert!(block_on(app.check_and_store(second)).unwrap().is_none());
        assert_eq!(app.stored_proposals(Height(1), None).unwrap().len(), 1);
    }

    #[test]
    fn a_re_proposal_is_judged_as_its_builders_block_but_a_fresh_one_must_be_the_senders() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, keys) = app(dir.path());
        let who: Vec<SecretKey> = (0..8)
            .map(|r| {
                let p = PotContext.select_proposer(&app.validators, Height(1), Round::new(r));
                keys.iter()
                    .find(|k| k.address() == p.address.0)
                    .unwrap()
                    .clone()
            })
            .collect();
        // The first round's proposer built a block; proposers of later rounds, other
        // coordinators, pass it on. This node never saw round 0's proposal (it was down, or
        // the parts were lost): it judges the block itself, or a network locked on it could
        // stall for want of this node's prevote.
        let later: Vec<u32> = (1..8)
            .filter(|&r| who[r as usize].address() != who[0].address())
            .collect();
        let block = built_by(&app, &who[0]);
        let passed_on = |round: u32, pol_round: Round, block: &Block| Assembled {
            height: Height(1),
            round: Round::new(round),
            pol_round,
            proposer: ValidatorAddress(who[round as usize].address()),
            block_bytes: borsh::to_vec(block).unwrap(),
        };
        let again = block_on(app.check_and_store(passed_on(later[0], Round::new(0), &block)))
            .unwrap()
            .unwrap();
        assert_eq!(
            again.validity,
            Validity::Valid,
            "a re-proposal of a block this node did not see proposed"
        );
        // A re-proposed block that does not apply is invalid like any other.
        let mut broken = block.clone();
        broken.header.state_root = pot_protocol::Hash::digest(b"wrong");
        let got = block_on(app.check_and_store(passed_on(later[1], Round::new(0), &broken)))
            .unwrap()
            .unwrap();
        assert_eq!(
            got.validity,
            Validity::Invalid,
            "a block that does not apply"
        );
        // Passed on as the sender's own fresh proposal, someone else's block is invalid.
        let fresh = block_on(app.check_and_store(passed_on(later[2], Round::Nil, &block)))
            .unwrap()
            .unwrap();
        assert_eq!(
            fresh.validity,
            Validity::Invalid,
            "a fresh proposal of someone else's block"
        );
    }

    #[test]
    fn only_this_nodes_own_proposals_are_restreamed() {
        let dir = tempfile::tempdir().unwrap();
        let (app, keys) = app(dir.path());
        let block = built_by(&app, &keys[1]);
        let value = BlockValue::new(block);
        let other = ValidatorAddress(keys[1].address());
        app.store_proposal(Height(1), Round::new(10), Round::Nil, other, true, &value)
            .unwrap();
        let asked = |proposer| {
            app.value_to_restream(Height(1), Round::new(10), proposer, value.id())
                .unwrap()
        };
        assert_eq!(asked(other), None, "another coordinator's proposal");
        assert_eq!(asked(app.me).map(|v| v.id()), Some(value.id()));
    }

    #[test]
    fn a_value_proposed_again_keeps_the_polka_round_it_was_streamed_with() {
        let dir = tempfile::tempdir().unwrap();
        let (mut app, keys) = app(dir.path());
        let block = built_by(&app, &keys[1]);
        let value = BlockValue::new(block);
        // This node re-proposed another coordinator's block in round 3 (RestreamProposal), then
        // crashed; after the restart the engine asks it for a value for round 3 again.
        let me = app.me;
        app.store_proposal(Height(1), Round::new(3), Round::new(1), me, true, &value)
            .unwrap();
        let (again, pol_round) =
            block_on(app.value_to_propose(Height(1), Round::new(3), Duration::from_secs(1)))
                .unwrap();
        assert_eq!(again.id(), value.id());
        assert_eq!(
            pol_round,
            Round::new(1),
            "not a fresh proposal of someone else's block"
        );
    }
}
