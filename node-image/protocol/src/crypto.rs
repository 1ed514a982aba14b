//! Accounts are ed25519 keys: an [`Address`] is the 32-byte public key itself, so a signature can
//! be checked from the address alone, with no registry of keys on chain.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::hash::{BadHex, parse_hex32, serde_hex32};

/// An account address: an ed25519 public key.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Address(pub [u8; 32]);

serde_hex32!(Address);

/// An ed25519 signature. Ordered only so that collections of signed messages can be sorted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("address {0} is not a valid ed25519 public key")]
    BadPublicKey(Address),
    #[error("signature does not verify for {0}")]
    Invalid(Address),
}

impl Address {
    /// Verify `sig` over `msg`. Uses strict verification (rejects small-order keys and
    /// non-canonical signatures) so that a signature cannot be mauled into a second valid one.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
        let key =
            VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadPublicKey(*self))?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(msg, &sig)
            .map_err(|_| SignatureError::Invalid(*self))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key, if batch verification gives exactly the verdict of [`Address::verify`] for
    /// signatures under it: a valid point in the prime-order subgroup (no torsion component,
    /// which strict verification's cofactorless check treats differently).
    fn batchable_key(&self) -> Option<VerifyingKey> {
        let key = VerifyingKey::from_bytes(&self.0).ok()?;
        (!key.is_weak() && key.to_edwards().is_torsion_free()).then_some(key)
    }

    /// A short form for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl FromStr for Address {
    type Err = BadHex;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(Address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.short())
    }
}

/// A secret signing key. Debug output never shows the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> SecretKey {
        let mut seed = [0u8; 32];
        getrandom_fill(&mut seed);
        SecretKey::from_seed(seed)
    }

    /// The key for a 32-byte seed (deterministic; tests and key files use it).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn address(&self) -> Address {
        Address(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }
}

impl FromStr for SecretKey {
    type Err = BadHex;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(SecretKey::from_seed)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(address {})", self.address().short())
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    use rand_core::{OsRng, RngCore};
    OsRng.fill_bytes(buf);
}

/// Whether `sig`'s R is what strict verification accepts and batch verification treats the
/// same way: a canonical encoding of a point in the prime-order subgroup, not the identity.
fn batchable_r(sig: &Signature) -> bool {
    let bytes: [u8; 32] = sig.0[..32].try_into().expect("64-byte signatures");
    let compressed = curve25519_dalek::edwards::CompressedEdwardsY(bytes);
    match compressed.decompress() {
        Some(r) => r.compress() == compressed && !r.is_small_order() && r.is_torsion_free(),
        None => false,
    }
}

/// Verify many signatures at once (ed25519 batch verification, about twice as fast as one by
/// one). `true` only if every one verifies — exactly when [`Address::verify`] would accept
/// each: anything batch and strict verification could judge differently (a key or R with a
/// torsion component, a non-canonical R) makes this return `false`, and the caller checks one
/// by one. `false` says nothing about which failed.
pub fn verify_batch(items: &[(Address, &[u8], Signature)]) -> bool {
    let mut keys = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    let mut msgs = Vec::with_capacity(items.len());
    for (address, msg, sig) in items {
        let Some(key) = address.batchable_key() else {
            return false;
        };
        if !batchable_r(sig) {
            return false;
        }
        keys.push(key);
        sigs.push(ed25519_dalek::Signature::from_bytes(&sig.0));
        msgs.push(*msg);
    }
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let k = SecretKey::from_seed([7; 32]);
        let sig = k.sign(b"hello");
        assert_eq!(k.address().verify(b"hello", &sig), Ok(()));
        assert_eq!(
            k.address().verify(b"hellp", &sig),
            Err(SignatureError::Invalid(k.address()))
        );
        let other = SecretKey::from_seed([8; 32]).address();
        assert_eq!(
            other.verify(b"hello", &sig),
            Err(SignatureError::Invalid(other))
        );
    }

    #[test]
    fn generated_keys_differ_and_round_trip() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        assert_ne!(a.address(), b.address());
        let again: SecretKey = hex::encode(a.seed()).parse().unwrap();
        assert_eq!(again.address(), a.address());
    }

    #[test]
    fn address_hex_round_trip() {
        let a = SecretKey::from_seed([1; 32]).address();
        assert_eq!(a.to_hex().parse::<Address>().unwrap(), a);
        let yaml = serde_yaml::to_string(&a).unwrap();
        assert!(yaml.contains(&a.to_hex()));
        assert_eq!(serde_yaml::from_str::<Address>(&yaml).unwrap(), a);
    }

    #[test]
    fn a_batch_verifies_only_when_every_signature_does() {
        let keys: Vec<SecretKey> = (0..8).map(|i| SecretKey::from_seed([i + 1; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..8).map(|i| vec![i; 40]).collect();
        let good: Vec<(Address, &[u8], Signature)> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| (k.address(), m.as_slice(), k.sign(m)))
            .collect();
        assert!(verify_batch(&good));
        assert!(verify_batch(&[]));

        let mut forged = good.clone();
        forged[5].2 = keys[5].sign(b"another message");
        assert!(!verify_batch(&forged));

        // A small-order R (here the identity) is refused by strict verification; the batch
        // must not accept it either.
        let mut identity_r = good.clone();
        let mut sig = identity_r[2].2;
        sig.0[..32].copy_from_slice(
            &curve25519_dalek::edwards::EdwardsPoint::default()
                .compress()
                .0,
        );
        identity_r[2].2 = sig;
        assert!(identity_r[2].0.verify(identity_r[2].1, &sig).is_err());
        assert!(!verify_batch(&identity_r));
    }
}
