//! The Tendermint locking rules as the (patched) Malachite driver applies them to our context.
//!
//! Malachite 0.5's driver looked up a polka certificate by round alone, so a polka for one block
//! justified a proposal of *another* block naming that round: a single Byzantine proposer could
//! make coordinators locked on a decided block vote for a different one, and so fork the chain.
//! `third_party/informalsystems-malachitebft-core-driver` matches on the value too; these tests
//! drive the round state machine directly and fail against the unpatched crate.

use malachitebft_core_driver::{Driver, Input, Output, ThresholdParams};
use malachitebft_core_types::{
    NilOrVal, Round, SignedProposal, SignedVote, Timeout, Validity, VoteType,
};
use pot_protocol::genesis::Coordinator;
use pot_protocol::{Block, BlockHeader, Hash, SecretKey, Signature};

use super::context::{
    BlockId, BlockValue, Height, PotContext, Proposal, ValidatorAddress, ValidatorSet, Vote,
};

const H: Height = Height(1);

/// Four equal coordinators; `me` is neither round 0's nor round 1's proposer.
struct Net {
    set: ValidatorSet,
    driver: Driver<PotContext>,
}

impl Net {
    fn new() -> Net {
        let coordinators: Vec<Coordinator> = (0..4u8)
            .map(|i| Coordinator::for_key(&SecretKey::from_seed([i + 1; 32])))
            .collect();
        let set = ValidatorSet::new(&coordinators);
        let me = set.validators()[2].address;
        let driver = Driver::new(PotContext, H, set.clone(), me, ThresholdParams::default());
        Net { set, driver }
    }

    fn addr(&self, i: usize) -> ValidatorAddress {
        self.set.validators()[i].address
    }

    fn feed(&mut self, input: Input<PotContext>) -> Vec<Output<PotContext>> {
        self.driver
            .process(input)
            .expect("the driver accepts the input")
    }

    fn new_round(&mut self, round: u32) -> Vec<Output<PotContext>> {
        let proposer = self.addr(round as usize % 4);
        self.feed(Input::NewRound(H, Round::new(round), proposer))
    }

    /// A proposal from that round's proposer. The driver does not check signatures (the
    /// consensus layer does before it gets here), so a zero signature is enough.
    fn propose(
        &mut self,
        round: u32,
        value: &BlockValue,
        pol_round: Round,
    ) -> Vec<Output<PotContext>> {
        let proposal = Proposal {
            height: H,
            round: Round::new(round),
            value: value.clone(),
            pol_round,
            proposer: self.addr(round as usize % 4),
        };
        let signed = SignedProposal::new(proposal, Signature([0; 64]));
        self.feed(Input::Proposal(signed, Validity::Valid))
    }

    fn vote(
        &mut self,
        kind: VoteType,
        round: u32,
        value: Option<&BlockValue>,
        from: usize,
    ) -> Vec<Output<PotContext>> {
        let value = match value {
            Some(v) => NilOrVal::Val(BlockId(v.block().hash())),
            None => NilOrVal::Nil,
        };
        let vote = Vote::new(kind, H, Round::new(round), value, self.addr(from));
        self.feed(Input::Vote(SignedVote::new(vote, Signature([0; 64]))))
    }
}

fn block(time_ms: u64) -> BlockValue {
    BlockValue::new(Block {
        header: BlockHeader {
            height: 1,
            prev_hash: Hash::digest(b"genesis"),
            time_ms,
            proposer: pot_protocol::Address([0; 32]),
            vrf_proof: Default::default(),
            beacon: Hash::digest(b"beacon"),
            tx_root: Hash::digest(b"txs"),
            state_root: Hash::digest(b"state"),
        },
        txs: vec![],
    })
}

/// The votes among `outputs` of `kind`, as `Some(block)` or `None` for nil.
fn votes(outputs: &[Output<PotContext>], kind: VoteType) -> Vec<Option<BlockId>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Vote(v) if v.vote_type == kind => Some(match &v.value {
                NilOrVal::Val(id) => Some(*id),
                NilOrVal::Nil => None,
            }),
            _ => None,
        })
        .collect()
}

fn id(v: &BlockValue) -> Option<BlockId> {
    Some(BlockId(v.block().hash()))
}

/// Round 0 as `me` sees it: the proposal of `v`, a polka for it (three prevotes, `me`'s among
/// them) and `me`'s precommit, so `me` is locked on `v` in round 0. Too few precommits for `v`
/// arrive to decide it (`me`'s and one more; two are nil).
fn locked_in_round_0(net: &mut Net, v: &BlockValue) {
    net.new_round(0);
    let out = net.propose(0, v, Round::Nil);
    assert_eq!(votes(&out, VoteType::Prevote), vec![id(v)]);
    let mut out = Vec::new();
    for from in [0, 1, 2] {
        out.extend(net.vote(VoteType::Prevote, 0, Some(v), from));
    }
    assert_eq!(votes(&out, VoteType::Precommit), vec![id(v)], "locked on v");
    for (from, value) in [(2, Some(v)), (0, Some(v)), (1, None), (3, None)] {
        net.vote(VoteType::Precommit, 0, value, from);
    }
}

/// Round 0 times out undecided and round 1 starts; what `me` said on the way.
fn into_round_1(net: &mut Net) -> Vec<Output<PotContext>> {
    let mut out = net.feed(Input::TimeoutElapsed(Timeout::precommit(Round::new(0))));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::NewRound(_, r) if *r == Round::new(1))),
        "round 0 ends undecided: {out:?}"
    );
    out.extend(net.new_round(1));
    out
}

#[test]
fn a_polka_for_one_block_does_not_justify_another_naming_its_round() {
    let (v, w) = (block(1), block(2));
    let mut net = Net::new();
    locked_in_round_0(&mut net, &v);
    into_round_1(&mut net);

    // Round 1's (Byzantine) proposer re-proposes a *different* block, claiming round 0's polka.
    let mut out = net.propose(1, &w, Round::new(0));
    out.extend(net.feed(Input::TimeoutElapsed(Timeout::propose(Round::new(1)))));
    assert_eq!(
        votes(&out, VoteType::Prevote),
        vec![None],
        "locked on v, `me` must prevote nil, never w"
    );
}

#[test]
fn a_re_proposal_of_the_locked_block_is_prevoted() {
    // The control: the same round 1 with the block that really had the polka.
    let v = block(1);
    let mut net = Net::new();
    locked_in_round_0(&mut net, &v);
    into_round_1(&mut net);
    let out = net.propose(1, &v, Round::new(0));
    assert_eq!(votes(&out, VoteType::Prevote), vec![id(&v)]);
}

#[test]
fn a_polka_for_one_block_does_not_lock_an_equivocating_proposal_of_another() {
    let (v, w) = (block(1), block(2));
    let mut net = Net::new();
    net.new_round(0);
    // `me` saw no proposal in time and prevoted nil; the others saw v and formed a polka for it.
    let out = net.feed(Input::TimeoutElapsed(Timeout::propose(Round::new(0))));
    assert_eq!(votes(&out, VoteType::Prevote), vec![None]);
    for from in [0, 1, 3] {
        net.vote(VoteType::Prevote, 0, Some(&v), from);
    }
    // Then the equivocating proposer's other block reaches `me`.
    let out = net.propose(0, &w, Round::Nil);
    assert_eq!(
        votes(&out, VoteType::Precommit),
        vec![],
        "no polka for w: `me` must not lock on it or precommit it"
    );
    // The control: v itself, with its polka, is locked on and precommitted.
    let out = net.propose(0, &v, Round::Nil);
    assert_eq!(votes(&out, VoteType::Precommit), vec![id(&v)]);
}

#[test]
fn a_proposal_stored_before_its_round_starts_gets_the_same_judgement() {
    // The Byzantine re-proposal reaches `me` before round 1 starts: the driver judges stored
    // proposals again when the round begins (its step-change path).
    let (v, w) = (block(1), block(2));
    let mut net = Net::new();
    locked_in_round_0(&mut net, &v);
    let mut out = net.propose(1, &w, Round::new(0));
    out.extend(into_round_1(&mut net));
    out.extend(net.feed(Input::TimeoutElapsed(Timeout::propose(Round::new(1)))));
    assert_eq!(votes(&out, VoteType::Prevote), vec![None]);
}

#[test]
fn the_build_uses_the_patched_driver() {
    // A Malachite upgrade that leaves the `=0.5.0` patch behind would still pass the tests
    // above if only this test's copy of the driver were patched; the lock file says which
    // driver every crate links: exactly one, from the path, none from the registry.
    let lock = include_str!("../../../../Cargo.lock");
    let entries: Vec<&str> = lock
        .split("[[package]]")
        .filter(|p| p.contains("name = \"informalsystems-malachitebft-core-driver\""))
        .collect();
    assert_eq!(entries.len(), 1, "one driver in the build");
    assert!(
        !entries[0].contains("source ="),
        "the driver comes from third_party/, not crates.io: {}",
        entries[0]
    );
}
