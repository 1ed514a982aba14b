//! The randomness beacon: a verifiable random function (RFC 9381 ECVRF on ristretto255) output
//! of each block's proposer, chained through block headers.
//!
//! Block `h`'s beacon is `H(beacon(h-1) ‖ VRF_sk(chain id ‖ h ‖ beacon(h-1)))`, where `sk` is the
//! proposer's VRF key. The VRF input names nothing the proposer chooses — not the block's
//! transactions, their order, or its time — and a VRF has exactly one output per key and input,
//! so a proposer cannot grind the beacon. What a proposer can still do is *withhold* its block:
//! it learns its output as soon as block `h-1` is decided and may decline to propose, and the
//! round then moves to the next proposer, whose output differs. A coalition of `f` proposers
//! thus picks among at most `f + 1` beacons for a height, at the price of rounds.
//!
//! The sampling that matters (validator assignment and segments) uses the beacon of the first
//! block after the reveal window, with the stake and the claims as the last reveal block left
//! them. Nobody but that block's proposer knows the beacon before the last reveal block is
//! decided. The residual: with round-robin proposers, the coordinator that proposes height
//! `h + 1` in round 0 also proposes height `h` in round 1, so if the round-0 proposer of `h`
//! fails, it can compute the beacon of `h + 1` while choosing which reveals and bonds block `h`
//! includes. Freezing the inputs one block earlier (sampling with the beacon of `h + 2`) would
//! need two consecutive failed rounds for the same trick; it is not done yet.
//!
//! A coordinator's VRF key is derived from its ed25519 seed, so one key file holds both; the
//! genesis names each coordinator's VRF public key.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::SecretKey;
use crate::hash::{BadHex, Hash, parse_hex32, serde_hex32};
use crate::units::Height;

/// A coordinator's VRF public key (a ristretto255 point, 32 bytes).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct VrfPublicKey(pub [u8; 32]);

serde_hex32!(VrfPublicKey);

impl FromStr for VrfPublicKey {
    type Err = BadHex;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(VrfPublicKey)
    }
}

impl fmt::Display for VrfPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for VrfPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfPublicKey({})", hex::encode(&self.0[..4]))
    }
}

impl VrfPublicKey {
    /// Whether the bytes are a valid VRF public key (a non-identity ristretto255 point).
    pub fn is_valid(&self) -> bool {
        vrf_r255::PublicKey::from_bytes(self.0).is_some()
    }
}

/// An ECVRF proof (80 bytes: Γ, c, s).
#[derive(Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct VrfProof(pub [u8; 80]);

impl Default for VrfProof {
    fn default() -> Self {
        VrfProof([0; 80])
    }
}

impl fmt::Debug for VrfProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfProof({}…)", hex::encode(&self.0[..8]))
    }
}

/// A proposer's VRF secret key.
#[derive(Clone)]
pub struct VrfSecretKey(vrf_r255::SecretKey);

impl fmt::Debug for VrfSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VrfSecretKey(public {:?})", self.public())
    }
}

impl VrfSecretKey {
    /// The VRF key that belongs to an account key: a scalar from `H(tag ‖ ed25519 seed)`,
    /// reduced below 2^252 (and so below the group order, which makes it canonical).
    pub fn from_account(key: &SecretKey) -> VrfSecretKey {
        let mut counter = 0u8;
        loop {
            let mut bytes = Hash::tagged("pot/vrf-key", &[&key.seed(), &[counter]]).0;
            bytes[31] &= 0x0f;
            let sk = vrf_r255::SecretKey::from_bytes(bytes);
            if bool::from(sk.is_some()) {
                return VrfSecretKey(sk.unwrap());
            }
            // Only the zero scalar is refused: probability 2^-252.
            counter += 1;
        }
    }

    pub fn public(&self) -> VrfPublicKey {
        VrfPublicKey(vrf_r255::PublicKey::from(self.0).to_bytes())
    }

    fn prove(&self, alpha: &[u8]) -> VrfProof {
        VrfProof(self.0.prove(alpha).to_bytes())
    }
}

impl SecretKey {
    /// This account's VRF key (coordinators use it to make the beacon).
    pub fn vrf(&self) -> VrfSecretKey {
        VrfSecretKey::from_account(self)
    }
}

/// Why a block's beacon is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    #[error("the VRF public key is not a valid ristretto255 point")]
    BadKey,
    #[error("the VRF proof is malformed or does not verify under the proposer's VRF key")]
    BadProof,
}

/// The VRF input for block `height` of `chain_id` after `prev_beacon`.
fn alpha(chain_id: &str, height: Height, prev_beacon: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"pot/beacon-input/v1");
    out.extend_from_slice(&(chain_id.len() as u32).to_le_bytes());
    out.extend_from_slice(chain_id.as_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&prev_beacon.0);
    out
}

fn chain(prev_beacon: &Hash, output: &[u8; 64]) -> Hash {
    Hash::tagged("pot/beacon", &[&prev_beacon.0, output])
}

/// The proposer's proof and the beacon of block `height`.
pub fn prove(
    key: &VrfSecretKey,
    chain_id: &str,
    height: Height,
    prev_beacon: &Hash,
) -> (VrfProof, Hash) {
    let proof = key.prove(&alpha(chain_id, height, prev_beacon));
    let beacon = verify(&key.public(), chain_id, height, prev_beacon, &proof)
        .expect("a proof made with the key verifies");
    (proof, beacon)
}

/// Check a proposer's proof; the beacon of block `height` if it verifies.
pub fn verify(
    key: &VrfPublicKey,
    chain_id: &str,
    height: Height,
    prev_beacon: &Hash,
    proof: &VrfProof,
) -> Result<Hash, BeaconError> {
    let pk = vrf_r255::PublicKey::from_bytes(key.0).ok_or(BeaconError::BadKey)?;
    let pi = vrf_r255::Proof::from_bytes(proof.0).ok_or(BeaconError::BadProof)?;
    let out = pk.verify(&alpha(chain_id, height, prev_beacon), &pi);
    if bool::from(out.is_some()) {
        Ok(chain(prev_beacon, &out.unwrap()))
    } else {
        Err(BeaconError::BadProof)
    }
}

/// The beacon at height 0.
pub fn genesis_beacon(genesis_hash: &Hash) -> Hash {
    Hash::tagged("pot/genesis-beacon", &[&genesis_hash.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_for_their_key_height_and_chain() {
        let k = SecretKey::from_seed([3; 32]).vrf();
        let prev = Hash::digest(b"prev");
        let (proof, beacon) = prove(&k, "c", 7, &prev);
        assert_eq!(verify(&k.public(), "c", 7, &prev, &proof), Ok(beacon));
        // Deterministic: one output per key and input, nothing to grind.
        assert_eq!(prove(&k, "c", 7, &prev), (proof, beacon));
        let other = SecretKey::from_seed([4; 32]).vrf().public();
        assert_eq!(
            verify(&other, "c", 7, &prev, &proof),
            Err(BeaconError::BadProof)
        );
        assert!(verify(&k.public(), "c", 8, &prev, &proof).is_err());
        assert!(verify(&k.public(), "d", 7, &prev, &proof).is_err());
        assert!(verify(&k.public(), "c", 7, &Hash::ZERO, &proof).is_err());
        let mut bent = proof;
        bent.0[40] ^= 1;
        assert!(verify(&k.public(), "c", 7, &prev, &bent).is_err());
        assert_eq!(
            verify(&VrfPublicKey([0; 32]), "c", 7, &prev, &proof),
            Err(BeaconError::BadKey)
        );
    }

    #[test]
    fn each_account_has_its_own_vrf_key() {
        let a = SecretKey::from_seed([1; 32]).vrf().public();
        let b = SecretKey::from_seed([2; 32]).vrf().public();
        assert_ne!(a, b);
        assert!(a.is_valid() && b.is_valid());
        assert_eq!(a, SecretKey::from_seed([1; 32]).vrf().public());
    }
}
