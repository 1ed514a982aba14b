//! The types Malachite is generic over: heights, coordinator addresses, the value (a block),
//! proposals, votes and proposal parts. Only this module and its siblings in `consensus` see
//! Malachite; the rest of the node deals in `pot_protocol` blocks.

use std::fmt;
use std::sync::Arc;

use borsh::{BorshDeserialize, BorshSerialize};
use malachitebft_core_types as mc;
use mc::{NilOrVal, Round, SignedExtension, VoteType};
use pot_protocol::genesis::Coordinator;
use pot_protocol::{Block, Hash};

use super::signing::Ed25519;

/// The Malachite context of a PoT chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct PotContext;

/// A block height (1 is the first block).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mc::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0 + n)
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A coordinator's address: its ed25519 public key, as everywhere in the protocol.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct ValidatorAddress(pub pot_protocol::Address);

impl fmt::Display for ValidatorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.short())
    }
}

impl mc::Address for ValidatorAddress {}

/// The id of a proposed value: the block's header hash.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct BlockId(pub Hash);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_hex()[..16])
    }
}

/// The value consensus decides on: a whole block. Shared, because the engine clones values
/// freely (WAL, driver, votekeeper) and a block may hold thousands of transactions.
#[derive(Clone, Debug)]
pub struct BlockValue {
    id: BlockId,
    block: Arc<Block>,
}

impl BlockValue {
    pub fn new(block: Block) -> BlockValue {
        BlockValue {
            id: BlockId(block.hash()),
            block: Arc::new(block),
        }
    }

    pub fn block(&self) -> &Block {
        &self.block
    }
}

impl PartialEq for BlockValue {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for BlockValue {}
impl PartialOrd for BlockValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BlockValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl BorshSerialize for BlockValue {
    fn serialize<W: borsh::io::Write>(&self, writer: &mut W) -> borsh::io::Result<()> {
        self.block.serialize(writer)
    }
}

impl BorshDeserialize for BlockValue {
    fn deserialize_reader<R: borsh::io::Read>(reader: &mut R) -> borsh::io::Result<Self> {
        Ok(BlockValue::new(Block::deserialize_reader(reader)?))
    }
}

impl mc::Value for BlockValue {
    type Id = BlockId;

    fn id(&self) -> BlockId {
        self.id
    }
}

/// A coordinator with its voting power.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub address: ValidatorAddress,
    pub public_key: pot_protocol::Address,
    pub power: u64,
}

impl mc::Validator<PotContext> for Validator {
    fn address(&self) -> &ValidatorAddress {
        &self.address
    }

    fn public_key(&self) -> &pot_protocol::Address {
        &self.public_key
    }

    fn voting_power(&self) -> u64 {
        self.power
    }
}

/// The coordinator set, sorted by address so every node indexes it the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
}

impl ValidatorSet {
    pub fn new(coordinators: &[Coordinator]) -> ValidatorSet {
        let mut validators: Vec<Validator> = coordinators
            .iter()
            .map(|c| Validator {
                address: ValidatorAddress(c.address),
                public_key: c.address,
                power: c.power,
            })
            .collect();
        validators.sort_by_key(|v| v.address);
        ValidatorSet { validators }
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }
}

impl mc::ValidatorSet<PotContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> u64 {
        self.validators.iter().map(|v| v.power).sum()
    }

    fn get_by_address(&self, address: &ValidatorAddress) -> Option<&Validator> {
        self.validators.iter().find(|v| &v.address == address)
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

/// A proposal as the engine sees it. With `PartsOnly` payloads it is never sent; the engine
/// builds it from the streamed parts.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Proposal {
    pub height: Height,
    pub round: Round,
    pub value: BlockValue,
    pub pol_round: Round,
    pub proposer: ValidatorAddress,
}

impl mc::Proposal<PotContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &BlockValue {
        &self.value
    }

    fn take_value(self) -> BlockValue {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &ValidatorAddress {
        &self.proposer
    }
}

/// A prevote or precommit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub struct Vote {
    pub vote_type: VoteType,
    pub height: Height,
    pub round: Round,
    pub value: NilOrVal<BlockId>,
    pub validator: ValidatorAddress,
    pub extension: Option<SignedExtension<PotContext>>,
}

impl Vote {
    pub fn new(
        vote_type: VoteType,
        height: Height,
        round: Round,
        value: NilOrVal<BlockId>,
        validator: ValidatorAddress,
    ) -> Vote {
        Vote {
            vote_type,
            height,
            round,
            value,
            validator,
            extension: None,
        }
    }
}

impl mc::Vote<PotContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<BlockId> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<BlockId> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        self.vote_type
    }

    fn validator_address(&self) -> &ValidatorAddress {
        &self.validator
    }

    fn extension(&self) -> Option<&SignedExtension<PotContext>> {
        self.extension.as_ref()
    }

    fn take_extension(&mut self) -> Option<SignedExtension<PotContext>> {
        self.extension.take()
    }

    fn extend(self, extension: SignedExtension<PotContext>) -> Self {
        Vote {
            extension: Some(extension),
            ..self
        }
    }
}

/// One piece of a streamed proposal: who proposes what where, the encoded block in chunks, and
/// the proposer's signature over all of it (the engine does not check parts; `parts` does).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum ProposalPart {
    Init {
        height: Height,
        round: Round,
        pol_round: Round,
        proposer: ValidatorAddress,
    },
    Data(Vec<u8>),
    Fin(pot_protocol::Signature),
}

impl mc::ProposalPart<PotContext> for ProposalPart {
    fn is_first(&self) -> bool {
        matches!(self, ProposalPart::Init { .. })
    }

    fn is_last(&self) -> bool {
        matches!(self, ProposalPart::Fin(_))
    }
}

impl mc::Context for PotContext {
    type Address = ValidatorAddress;
    type Height = Height;
    type ProposalPart = ProposalPart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Value = BlockValue;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Ed25519;

    /// Round-robin over the sorted set, shifted by height, so each coordinator proposes in turn
    /// and a crashed proposer costs one round, not a height.
    fn select_proposer<'a>(
        &self,
        validator_set: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a Validator {
        let n = validator_set.validators.len() as u64;
        assert!(
            n > 0,
            "the coordinator set is never empty (genesis checks it)"
        );
        let r = round.as_u32().unwrap_or(0) as u64;
        let index = (height.0.wrapping_sub(1).wrapping_add(r)) % n;
        &validator_set.validators[index as usize]
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: BlockValue,
        pol_round: Round,
        address: ValidatorAddress,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer: address,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockId>,
        address: ValidatorAddress,
    ) -> Vote {
        Vote::new(VoteType::Prevote, height, round, value_id, address)
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockId>,
        address: ValidatorAddress,
    ) -> Vote {
        Vote::new(VoteType::Precommit, height, round, value_id, address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc::Context as _;
    use pot_protocol::SecretKey;

    fn set(n: u8) -> ValidatorSet {
        let coordinators: Vec<Coordinator> = (0..n)
            .map(|i| Coordinator::for_key(&SecretKey::from_seed([i + 1; 32])))
            .collect();
        ValidatorSet::new(&coordinators)
    }

    #[test]
    fn proposers_take_turns_by_height_and_round() {
        let vs = set(4);
        let ctx = PotContext;
        let at = |h, r| ctx.select_proposer(&vs, Height(h), Round::new(r)).address;
        let first: Vec<_> = (1..=4).map(|h| at(h, 0)).collect();
        let mut distinct = first.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "four heights, four different proposers");
        assert_eq!(at(5, 0), at(1, 0));
        assert_eq!(at(1, 1), at(2, 0), "a new round moves to the next proposer");
    }

    #[test]
    fn validator_set_order_does_not_depend_on_genesis_order() {
        let a = set(4);
        let mut coordinators: Vec<Coordinator> = a
            .validators()
            .iter()
            .map(|v| Coordinator {
                address: v.public_key,
                power: v.power,
                vrf_key: Default::default(),
            })
            .collect();
        coordinators.reverse();
        assert_eq!(ValidatorSet::new(&coordinators), a);
    }
}
