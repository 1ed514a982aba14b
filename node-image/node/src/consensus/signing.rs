//! Signatures on consensus messages: ed25519 with the protocol's keys, each message hashed under
//! its own tag and the chain's genesis hash, so a vote for one chain (or one kind of message)
//! can never be replayed as another.

use borsh::BorshSerialize;
use malachitebft_core_types::{self as mc, SignedMessage};
use pot_protocol::{Address, Hash, SecretKey, Signature};

use super::context::{PotContext, Proposal, ProposalPart, Vote};

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

pub fn vote_digest(chain: &Hash, vote: &Vote) -> Hash {
    // The extension is signed on its own; a vote's signature covers the vote itself.
    digest(
        "pot/consensus/vote",
        chain,
        &(
            vote.vote_type,
            vote.height,
            vote.round,
            &vote.value,
            vote.validator,
        ),
    )
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

/// Signs for this coordinator and checks other coordinators' signatures.
pub struct Signer {
    key: SecretKey,
    chain: Hash,
}

impl Signer {
    /// `chain` is the genesis hash.
    pub fn new(key: SecretKey, chain: Hash) -> Signer {
        Signer { key, chain }
    }

    pub fn chain(&self) -> &Hash {
        &self.chain
    }

    pub fn sign(&self, digest: &Hash) -> Signature {
        self.key.sign(digest.as_bytes())
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The address and VRF key this node proposes blocks with.
    pub fn proposer_key(&self) -> pot_protocol::ProposerKey {
        pot_protocol::ProposerKey::new(&self.key)
    }
}

fn verifies(public_key: &Address, digest: &Hash, signature: &Signature) -> bool {
    public_key.verify(digest.as_bytes(), signature).is_ok()
}

impl mc::SigningProvider<PotContext> for Signer {
    fn sign_vote(&self, vote: Vote) -> SignedMessage<PotContext, Vote> {
        let signature = self.sign(&vote_digest(&self.chain, &vote));
        SignedMessage::new(vote, signature)
    }

    fn verify_signed_vote(&self, vote: &Vote, signature: &Signature, public_key: &Address) -> bool {
        verifies(public_key, &vote_digest(&self.chain, vote), signature)
    }

    fn sign_proposal(&self, proposal: Proposal) -> SignedMessage<PotContext, Proposal> {
        let signature = self.sign(&proposal_digest(&self.chain, &proposal));
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
        let signature = self.sign(&part_digest(&self.chain, &part));
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
        let signature = self.sign(&digest("pot/consensus/extension", &self.chain, &()));
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
}
