//! What coordinators sign in consensus, and the commit certificate of a decided block, in the
//! protocol's own types. Nodes store a certificate with each block and serve it; anyone holding
//! the genesis file can check it: the precommits of more than two thirds of the coordinators'
//! power for that block at that height and round. The consensus engine's own types stay at the
//! node's consensus boundary, so an engine upgrade never changes stored history.

use std::collections::HashSet;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::genesis::Coordinator;
use crate::{Address, Hash, Signature};

/// The two kinds of consensus vote.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

/// A vote's content: what a coordinator signs. `block` is `None` for a vote for nothing (nil).
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct VoteContent {
    pub kind: VoteKind,
    pub height: u64,
    pub round: u32,
    pub block: Option<Hash>,
    pub voter: Address,
}

impl VoteContent {
    /// The digest a vote's signature covers: tagged, and bound to the chain's genesis hash so a
    /// vote can never be replayed on another chain.
    pub fn digest(&self, chain: &Hash) -> Hash {
        let body = borsh::to_vec(self).expect("votes encode");
        Hash::tagged("pot/consensus/vote", &[chain.as_bytes(), &body])
    }
}

/// One coordinator's precommit in a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct CommitSignature {
    pub coordinator: Address,
    pub signature: Signature,
}

/// The proof that a block was decided: precommits for it at one height and round.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Commit {
    pub height: u64,
    pub round: u32,
    pub block: Hash,
    pub signatures: Vec<CommitSignature>,
}

/// Why a certificate does not prove its block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("certificate is for block {got} at height {height}, not {expected}")]
    OtherBlock {
        height: u64,
        expected: Hash,
        got: Hash,
    },
    #[error("certificate is for height {got}, not {expected}")]
    OtherHeight { expected: u64, got: u64 },
    #[error("{0} signed the certificate but is not a coordinator")]
    NotACoordinator(Address),
    #[error("{0} signed the certificate twice")]
    Duplicate(Address),
    #[error("the precommit of {0} does not verify")]
    BadSignature(Address),
    #[error("signers hold {signed} of {total} voting power; more than two thirds is needed")]
    NoQuorum { signed: u64, total: u64 },
}

impl Commit {
    /// The precommit content each signature covers.
    pub fn vote_of(&self, coordinator: Address) -> VoteContent {
        VoteContent {
            kind: VoteKind::Precommit,
            height: self.height,
            round: self.round,
            block: Some(self.block),
            voter: coordinator,
        }
    }

    /// Check that this certificate proves `block` at `height` on the chain with genesis hash
    /// `chain` and these coordinators: every signature verifies, no signer twice, and the
    /// signers hold more than two thirds of the power.
    pub fn verify(
        &self,
        chain: &Hash,
        coordinators: &[Coordinator],
        height: u64,
        block: &Hash,
    ) -> Result<(), CommitError> {
        if self.height != height {
            return Err(CommitError::OtherHeight {
                expected: height,
                got: self.height,
            });
        }
        if self.block != *block {
            return Err(CommitError::OtherBlock {
                height,
                expected: *block,
                got: self.block,
            });
        }
        let total: u64 = coordinators.iter().map(|c| c.power).sum();
        let mut seen = HashSet::new();
        let mut signed = 0u64;
        for s in &self.signatures {
            let power = coordinators
                .iter()
                .find(|c| c.address == s.coordinator)
                .map(|c| c.power)
                .ok_or(CommitError::NotACoordinator(s.coordinator))?;
            if !seen.insert(s.coordinator) {
                return Err(CommitError::Duplicate(s.coordinator));
            }
            let digest = self.vote_of(s.coordinator).digest(chain);
            s.coordinator
                .verify(digest.as_bytes(), &s.signature)
                .map_err(|_| CommitError::BadSignature(s.coordinator))?;
            signed += power;
        }
        // signed > 2/3 total, without overflow or rounding.
        if (signed as u128) * 3 <= (total as u128) * 2 {
            return Err(CommitError::NoQuorum { signed, total });
        }
        Ok(())
    }

    /// Drop every signature that proves nothing: by someone who is not a coordinator, a second
    /// one by the same coordinator, or one that does not verify. A consensus engine counts a
    /// certificate's valid signatures and ignores the rest, so a certificate that reached it
    /// from a peer may carry junk beside a quorum; what is stored keeps only the proof.
    pub fn retain_valid(&mut self, chain: &Hash, coordinators: &[Coordinator]) {
        let mut seen = HashSet::new();
        let (height, round, block) = (self.height, self.round, self.block);
        self.signatures.retain(|s| {
            let vote = VoteContent {
                kind: VoteKind::Precommit,
                height,
                round,
                block: Some(block),
                voter: s.coordinator,
            };
            coordinators.iter().any(|c| c.address == s.coordinator)
                && !seen.contains(&s.coordinator)
                && s.coordinator
                    .verify(vote.digest(chain).as_bytes(), &s.signature)
                    .is_ok()
                && seen.insert(s.coordinator)
        });
    }

    /// The coordinators that signed.
    pub fn signers(&self) -> Vec<Address> {
        self.signatures.iter().map(|s| s.coordinator).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    fn setup(n: usize) -> (Hash, Vec<SecretKey>, Vec<Coordinator>) {
        let keys: Vec<SecretKey> = (0..n)
            .map(|i| SecretKey::from_seed([i as u8 + 1; 32]))
            .collect();
        let coordinators = keys.iter().map(Coordinator::for_key).collect();
        (Hash::digest(b"genesis"), keys, coordinators)
    }

    fn commit(chain: &Hash, keys: &[SecretKey], block: Hash) -> Commit {
        let mut c = Commit {
            height: 7,
            round: 1,
            block,
            signatures: vec![],
        };
        for k in keys {
            let digest = c.vote_of(k.address()).digest(chain);
            c.signatures.push(CommitSignature {
                coordinator: k.address(),
                signature: k.sign(digest.as_bytes()),
            });
        }
        c
    }

    #[test]
    fn three_of_four_prove_a_block_and_two_do_not() {
        let (chain, keys, coordinators) = setup(4);
        let block = Hash::digest(b"block");
        assert_eq!(
            commit(&chain, &keys[..3], block).verify(&chain, &coordinators, 7, &block),
            Ok(())
        );
        assert_eq!(
            commit(&chain, &keys[..2], block).verify(&chain, &coordinators, 7, &block),
            Err(CommitError::NoQuorum {
                signed: 2,
                total: 4
            })
        );
    }

    #[test]
    fn forged_repeated_foreign_or_misplaced_signatures_are_refused() {
        let (chain, keys, coordinators) = setup(4);
        let block = Hash::digest(b"block");
        let good = commit(&chain, &keys[..3], block);

        let mut repeated = good.clone();
        repeated.signatures[2] = repeated.signatures[0];
        assert_eq!(
            repeated.verify(&chain, &coordinators, 7, &block),
            Err(CommitError::Duplicate(keys[0].address()))
        );

        let stranger = SecretKey::from_seed([99; 32]);
        let foreign = commit(
            &chain,
            &[keys[0].clone(), keys[1].clone(), stranger.clone()],
            block,
        );
        assert_eq!(
            foreign.verify(&chain, &coordinators, 7, &block),
            Err(CommitError::NotACoordinator(stranger.address()))
        );

        let mut moved = good.clone();
        moved.round = 2;
        assert_eq!(
            moved.verify(&chain, &coordinators, 7, &block),
            Err(CommitError::BadSignature(keys[0].address()))
        );

        // Junk beside a quorum is dropped, and what is left proves the block.
        let mut padded = good.clone();
        padded.signatures.push(CommitSignature {
            coordinator: keys[3].address(),
            signature: keys[3].sign(b"anything"),
        });
        padded.signatures.push(padded.signatures[0]);
        padded.signatures.push(foreign.signatures[2]);
        assert!(padded.verify(&chain, &coordinators, 7, &block).is_err());
        padded.retain_valid(&chain, &coordinators);
        assert_eq!(padded, good);
        assert_eq!(padded.verify(&chain, &coordinators, 7, &block), Ok(()));

        let other_chain = Hash::digest(b"other genesis");
        assert_eq!(
            good.verify(&other_chain, &coordinators, 7, &block),
            Err(CommitError::BadSignature(keys[0].address()))
        );
        assert!(matches!(
            good.verify(&chain, &coordinators, 8, &block),
            Err(CommitError::OtherHeight { .. })
        ));
        assert!(matches!(
            good.verify(&chain, &coordinators, 7, &Hash::digest(b"x")),
            Err(CommitError::OtherBlock { .. })
        ));
    }
}
