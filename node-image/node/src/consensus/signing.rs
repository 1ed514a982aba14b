//! Signatures on consensus messages: ed25519 with the protocol's keys, each message hashed under
//! its own tag and the chain's genesis hash, so a vote for one chain (or one kind of message)
//! can never be replayed as another.

use std::sync::Arc;

use borsh::BorshSerialize;
use malachitebft_core_types::{self as mc, NilOrVal, SignedMessage, VoteType};
use pot_protocol::commit::{VoteContent, VoteKind};
use pot_protocol::{Address, Hash, SecretKey, Signature};
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::context::{Height, PotContext, Proposal, ProposalPart, Vote};
use super::sign_guard::{Refusal, SignGuard, Step};
use super::status::EngineStatus;

/// The signing scheme: the protocol's ed25519 keys, public key = address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ed25519;

impl mc::SigningScheme for Ed25519 {
    type DecodingError = String;
    type Signature = Signature;
    type PublicKey = Address;
    type PrivateKey = SecretKey;

    fn decode_signature(bytes: &[u8]) -> Result<Signature, String> {
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| format!("an ed25519 signature is 64 bytes, got {}", bytes.len()))?;
        Ok(Signature(bytes))
    }

    fn encode_signature(signature: &Signature) -> Vec<u8> {
        signature.0.to_vec()
    }
}

/// What gets signed: a tag naming the message kind, the chain, and the message's fields.
fn digest(tag: &str, chain: &Hash, fields: &impl BorshSerialize) -> Hash {
    let body = borsh::to_vec(fields).expect("consensus messages encode");
    Hash::tagged(tag, &[chain.as_bytes(), &body])
}

/// The vote's content in the protocol's own terms, so a commit certificate can be checked by
/// anyone with the genesis file (`pot_protocol::commit`), without this engine.
pub fn vote_content(vote: &Vote) -> VoteContent {
    VoteContent {
        kind: match vote.vote_type {
            VoteType::Prevote => VoteKind::Prevote,
            VoteType::Precommit => VoteKind::Precommit,
        },
        height: vote.height.0,
        round: round_number(vote.round),
        block: match &vote.value {
            NilOrVal::Nil => None,
            NilOrVal::Val(id) => Some(id.0),
        },
        voter: vote.validator.0,
    }
}

/// A defined round's number (the engine never signs for the nil round).
pub fn round_number(round: mc::Round) -> u32 {
    round.as_u32().unwrap_or(0)
}

pub fn vote_digest(chain: &Hash, vote: &Vote) -> Hash {
    // The extension is signed on its own; a vote's signature covers the vote itself.
    vote_content(vote).digest(chain)
}

pub fn proposal_digest(chain: &Hash, p: &Proposal) -> Hash {
    use mc::Value as _;
    digest(
        "pot/consensus/proposal",
        chain,
        &(p.height, p.round, p.value.id(), p.pol_round, p.proposer),
    )
}

pub fn part_digest(chain: &Hash, part: &ProposalPart) -> Hash {
    digest("pot/consensus/part", chain, part)
}

/// Signs for this coordinator and checks other coordinators' signatures. Every proposal and
/// vote of this key passes its [`SignGuard`] first. The engine's signing interface cannot fail,
/// so a refusal is answered in one of two ways:
/// - the key signed at a higher height (the chain database was lost or restored), or signed
///   something else at this height, round and step, or at a later round or step of this height
///   (the engine lost its memory of the height):
///   the engine gets an empty signature that no peer accepts. To the others this node is
///   silent there, like a crashed one, and it follows by sync until it can sign again;
/// - the record cannot be written (a full or failing disk): signing without it would be
///   unsafe, so the refusal is sent on `halt` and the signing call panics rather than return a
///   signature.
#[derive(Clone)]
pub struct Signer {
    key: SecretKey,
    chain: Hash,
    guard: Option<Arc<SignGuard>>,
    halt: Option<mpsc::UnboundedSender<String>>,
    /// Told when the node abstains, for `/readyz`.
    status: Option<Arc<EngineStatus>>,
    /// Tests: every guarded signature made, one line each.
    #[cfg(feature = "fault-injection")]
    log: Option<super::faults::LineLog>,
    /// Tests: every vote this key signs, for a Byzantine node to contradict.
    #[cfg(feature = "fault-injection")]
    vote_tap: Option<mpsc::UnboundedSender<Vote>>,
    /// Tests: every vote from others whose signature verified, one line each.
    #[cfg(feature = "fault-injection")]
    received: Option<super::faults::LineLog>,
}

impl Signer {
    /// `chain` is the genesis hash. A signer without a guard is for tests and for keys that
    /// sign nothing that counts (an observer's throwaway key).
    pub fn new(key: SecretKey, chain: Hash) -> Signer {
        Signer {
            key,
            chain,
            guard: None,
            halt: None,
            status: None,
            #[cfg(feature = "fault-injection")]
            log: None,
            #[cfg(feature = "fault-injection")]
            vote_tap: None,
            #[cfg(feature = "fault-injection")]
            received: None,
        }
    }

    /// A signer whose proposals and votes pass `guard`, reporting a refusal on `halt`.
    pub fn guarded(
        key: SecretKey,
        chain: Hash,
        guard: Arc<SignGuard>,
        halt: mpsc::UnboundedSender<String>,
    ) -> Signer {
        Signer {
            key,
            chain,
            guard: Some(guard),
            halt: Some(halt),
            status: None,
            #[cfg(feature = "fault-injection")]
            log: None,
            #[cfg(feature = "fault-injection")]
            vote_tap: None,
            #[cfg(feature = "fault-injection")]
            received: None,
        }
    }

    /// Report abstentions to `status`.
    pub fn with_status(mut self, status: Arc<EngineStatus>) -> Signer {
        self.status = Some(status);
        self
    }

    /// Append a line for every guarded signature to `path` (tests).
    #[cfg(feature = "fault-injection")]
    pub fn with_signature_log(mut self, path: &std::path::Path) -> std::io::Result<Signer> {
        self.log = Some(super::faults::LineLog::open(path)?);
        Ok(self)
    }

    /// Append a line for every verified vote to `path` (tests).
    #[cfg(feature = "fault-injection")]
    pub fn with_received_vote_log(mut self, path: &std::path::Path) -> std::io::Result<Signer> {
        self.received = Some(super::faults::LineLog::open(path)?);
        Ok(self)
    }

    /// A vote's signature verified: log it (tests only).
    fn received_vote(&self, _vote: &Vote) {
        #[cfg(feature = "fault-injection")]
        if let Some(log) = &self.received {
            let c = vote_content(_vote);
            let value = c.block.map_or("nil".to_string(), |b| b.to_string());
            log.line(&format!(
                "{} {} {} {:?} {}",
                c.voter, c.height, c.round, c.kind, value
            ));
        }
    }

    /// Send every vote this key signs to `tap` (a Byzantine test node's equivocator).
    #[cfg(feature = "fault-injection")]
    pub fn with_vote_tap(mut self, tap: mpsc::UnboundedSender<Vote>) -> Signer {
        self.vote_tap = Some(tap);
        self
    }

    /// A guarded signature is about to be made: log it (tests only).
    fn signed(&self, _height: Height, _round: mc::Round, _step: Step, _value: &Hash) {
        #[cfg(feature = "fault-injection")]
        if let Some(log) = &self.log {
            log.line(&format!(
                "{} {} {} {}",
                _height.0,
                round_number(_round),
                _step,
                _value
            ));
        }
    }

    pub fn chain(&self) -> &Hash {
        &self.chain
    }

    /// Sign a digest that is not a proposal or a vote.
    fn sign_raw(&self, digest: &Hash) -> Signature {
        self.key.sign(digest.as_bytes())
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The address and VRF key this node proposes blocks with.
    pub fn proposer_key(&self) -> pot_protocol::ProposerKey {
        pot_protocol::ProposerKey::new(&self.key)
    }

    /// Ask the guard, if any, to allow a signature at this place.
    pub fn permit(
        &self,
        height: Height,
        round: mc::Round,
        step: Step,
        value: Hash,
    ) -> Result<(), Refusal> {
        match &self.guard {
            Some(g) => g.permit(height.0, round_number(round), step, value),
            None => Ok(()),
        }
    }

    /// Sign the stream of this node's proposal of `value` at (height, round).
    pub fn sign_proposal_stream(
        &self,
        height: Height,
        round: mc::Round,
        value: Hash,
        digest: &Hash,
    ) -> Result<Signature, Refusal> {
        self.permit(height, round, Step::Propose, value)?;
        self.signed(height, round, Step::Propose, &value);
        Ok(self.sign_raw(digest))
    }

    /// Sign a raw digest without asking the guard: only for a deliberately Byzantine test node.
    #[cfg(feature = "fault-injection")]
    pub fn sign_unguarded(&self, digest: &Hash) -> Signature {
        self.sign_raw(digest)
    }

    /// For the engine's infallible signing calls: the signature, an empty one (abstaining),
    /// or a halt.
    fn guarded_sign(
        &self,
        height: Height,
        round: mc::Round,
        step: Step,
        value: Hash,
        digest: &Hash,
    ) -> Signature {
        match self.permit(height, round, step, value) {
            Ok(()) => {
                self.signed(height, round, step, &value);
                self.sign_raw(digest)
            }
            Err(refusal @ Refusal::Io { .. }) => {
                let reason = refusal.to_string();
                error!(%reason, "halting instead of signing");
                if let Some(halt) = &self.halt {
                    let _ = halt.send(reason.clone());
                }
                panic!("{reason}");
            }
            Err(refusal) => {
                warn!(%refusal, "abstaining");
                if let Some(status) = &self.status {
                    status.abstained(std::time::Instant::now());
                }
                Signature([0; 64])
            }
        }
    }
}

fn verifies(public_key: &Address, digest: &Hash, signature: &Signature) -> bool {
    public_key.verify(digest.as_bytes(), signature).is_ok()
}

impl mc::SigningProvider<PotContext> for Signer {
    fn sign_vote(&self, vote: Vote) -> SignedMessage<PotContext, Vote> {
        let digest = vote_digest(&self.chain, &vote);
        let step = match vote.vote_type {
            VoteType::Prevote => Step::Prevote,
            VoteType::Precommit => Step::Precommit,
        };
        let value = match &vote.value {
            NilOrVal::Nil => Hash::ZERO,
            NilOrVal::Val(id) => id.0,
        };
        let signature = self.guarded_sign(vote.height, vote.round, step, value, &digest);
        // Contradict only a vote really cast (not an abstention's empty signature).
        #[cfg(feature = "fault-injection")]
        if let Some(tap) = self.vote_tap.as_ref().filter(|_| signature.0 != [0; 64]) {
            let _ = tap.send(vote.clone());
        }
        SignedMessage::new(vote, signature)
    }

    fn verify_signed_vote(&self, vote: &Vote, signature: &Signature, public_key: &Address) -> bool {
        // A vote is always for a defined round; the digest writes a round as its number, so
        // one for "no round" would otherwise verify as a vote for round 0.
        let ok = vote.round.is_defined()
            && verifies(public_key, &vote_digest(&self.chain, vote), signature);
        if ok {
            self.received_vote(vote);
        }
        ok
    }

    fn sign_proposal(&self, proposal: Proposal) -> SignedMessage<PotContext, Proposal> {
        // The engine also signs other coordinators' implicit proposals with this key, for its
        // own bookkeeping; those are never sent and name another proposer.
        use mc::Value as _;
        let digest = proposal_digest(&self.chain, &proposal);
        let signature = if proposal.proposer.0 == self.address() {
            let value = proposal.value.id().0;
            self.guarded_sign(
                proposal.height,
                proposal.round,
                Step::Propose,
                value,
                &digest,
            )
        } else {
            self.sign_raw(&digest)
        };
        SignedMessage::new(proposal, signature)
    }

    fn verify_signed_proposal(
        &self,
        proposal: &Proposal,
        signature: &Signature,
        public_key: &Address,
    ) -> bool {
        verifies(
            public_key,
            &proposal_digest(&self.chain, proposal),
            signature,
        )
    }

    fn sign_proposal_part(&self, part: ProposalPart) -> SignedMessage<PotContext, ProposalPart> {
        let signature = self.sign_raw(&part_digest(&self.chain, &part));
        SignedMessage::new(part, signature)
    }

    fn verify_signed_proposal_part(
        &self,
        part: &ProposalPart,
        signature: &Signature,
        public_key: &Address,
    ) -> bool {
        verifies(public_key, &part_digest(&self.chain, part), signature)
    }

    fn sign_vote_extension(&self, extension: ()) -> SignedMessage<PotContext, ()> {
        let signature = self.sign_raw(&digest("pot/consensus/extension", &self.chain, &()));
        SignedMessage::new(extension, signature)
    }

    fn verify_signed_vote_extension(
        &self,
        _extension: &(),
        signature: &Signature,
        public_key: &Address,
    ) -> bool {
        let d = digest("pot/consensus/extension", &self.chain, &());
        verifies(public_key, &d, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::context::{BlockId, Height, ValidatorAddress};
    use mc::{NilOrVal, Round, SigningProvider, VoteType};

    fn vote(key: &SecretKey) -> Vote {
        Vote {
            vote_type: VoteType::Prevote,
            height: Height(3),
            round: Round::new(0),
            value: NilOrVal::Val(BlockId(Hash::digest(b"block"))),
            validator: ValidatorAddress(key.address()),
            extension: None,
        }
    }

    #[test]
    fn a_vote_verifies_only_on_its_own_chain_and_unaltered() {
        let key = SecretKey::from_seed([7; 32]);
        let chain = Hash::digest(b"genesis A");
        let signer = Signer::new(key.clone(), chain);
        let signed = signer.sign_vote(vote(&key));
        assert!(signer.verify_signed_vote(&signed.message, &signed.signature, &key.address()));

        let other_chain = Signer::new(key.clone(), Hash::digest(b"genesis B"));
        assert!(!other_chain.verify_signed_vote(
            &signed.message,
            &signed.signature,
            &key.address()
        ));

        let mut changed = signed.message.clone();
        changed.value = NilOrVal::Nil;
        assert!(!signer.verify_signed_vote(&changed, &signed.signature, &key.address()));

        let stranger = SecretKey::from_seed([8; 32]).address();
        assert!(!signer.verify_signed_vote(&signed.message, &signed.signature, &stranger));
    }

    #[test]
    fn below_the_recorded_height_a_vote_gets_a_signature_no_one_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("sign-state.json");
        let key = SecretKey::from_seed([7; 32]);
        let chain = Hash::digest(b"genesis A");
        let guarded = || {
            let (halt, _) = mpsc::unbounded_channel();
            let guard = Arc::new(SignGuard::open(&record).unwrap());
            Signer::guarded(key.clone(), chain, guard, halt)
        };
        let mut v = vote(&key);
        v.height = Height(9);
        let signed = guarded().sign_vote(v);
        assert!(guarded().verify_signed_vote(&signed.message, &signed.signature, &key.address()));

        // The node restarts with its chain database gone: the engine starts again at height 3.
        let restarted = guarded();
        let old = restarted.sign_vote(vote(&key));
        assert!(!restarted.verify_signed_vote(&old.message, &old.signature, &key.address()));
    }

    #[test]
    fn a_conflicting_vote_at_the_recorded_height_gets_no_valid_signature() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([7; 32]);
        let (halt, mut halted) = mpsc::unbounded_channel();
        let guard = Arc::new(SignGuard::open(&dir.path().join("s.json")).unwrap());
        let signer = Signer::guarded(key.clone(), Hash::digest(b"g"), guard, halt);
        let first = signer.sign_vote(vote(&key));
        assert!(signer.verify_signed_vote(&first.message, &first.signature, &key.address()));
        let mut nil = vote(&key);
        nil.value = NilOrVal::Nil;
        let second = signer.sign_vote(nil);
        assert!(!signer.verify_signed_vote(&second.message, &second.signature, &key.address()));
        // The same vote again is signed as before.
        let again = signer.sign_vote(vote(&key));
        assert_eq!(again.signature, first.signature);
        assert!(halted.try_recv().is_err(), "abstaining is not halting");
    }

    #[test]
    fn a_record_that_cannot_be_written_halts_instead_of_signing() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("s.json");
        let key = SecretKey::from_seed([7; 32]);
        let (halt, mut halted) = mpsc::unbounded_channel();
        let guard = Arc::new(SignGuard::open(&record).unwrap());
        let signer = Signer::guarded(key.clone(), Hash::digest(b"g"), guard, halt);
        std::fs::create_dir(record.with_extension("tmp")).unwrap();
        let signed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            signer.sign_vote(vote(&key))
        }));
        assert!(signed.is_err(), "no signature came back");
        let reason = halted.try_recv().expect("the halt was reported");
        assert!(reason.contains("recording a signature"), "{reason}");
    }
}
