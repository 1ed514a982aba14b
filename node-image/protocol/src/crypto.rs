//! Accounts are ed25519 keys: an [`Address`] is the 32-byte public key itself, so a signature can
//! be checked from the address alone, with no registry of keys on chain.
//!
//! # Which signatures are valid
//!
//! One rule, used by single and batch verification alike so that they can never disagree (a
//! coordinator checking a gossip burst in one batch and another checking a block one by one
//! must reach the same verdict, or the chain forks): RFC 8032's *cofactored* equation
//! `[8]([s]B − R − [k]A) = 0` with `k = SHA-512(R ‖ A ‖ M)`, as ZIP-215 and "Taming the many
//! EdDSAs" (Chalkias et al., 2020) recommend for consensus, plus:
//!
//! - A and R canonical encodings (y < p, and no x = 0 point with the sign bit set), so one key
//!   has one address and a signature one byte string;
//! - A not of small order (any signature would verify under it);
//! - s canonical (s < ℓ), so s + ℓ is not a second signature.
//!
//! Only the signer can make two valid signatures of one message (with another nonce, or a
//! torsion component in R); a third party cannot maul one, since R's bytes are hashed into k.
//! The cofactored batch check needs no per-signature subgroup test, which cost two scalar
//! multiplications per signature when batches had to match cofactorless strict verification.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha512};

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
    /// Verify `sig` over `msg` by the rule in the module documentation.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
        let a = self.point().ok_or(SignatureError::BadPublicKey(*self))?;
        let (r, s) = sig.parts().ok_or(SignatureError::Invalid(*self))?;
        let k = challenge(sig, self, msg);
        // [k](−A) + [s]B − R, times the cofactor.
        let p = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s) - r;
        if p.mul_by_cofactor().is_identity() {
            Ok(())
        } else {
            Err(SignatureError::Invalid(*self))
        }
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The public key as a curve point, if it is one signatures can be checked under: a
    /// canonical encoding of a point not of small order. Decompressing takes a field square
    /// root, as much work as a fifth of a batch item, and a busy chain sees the same senders
    /// again and again, so valid keys are remembered per thread ([`KEY_CACHE`]).
    fn point(&self) -> Option<EdwardsPoint> {
        if let Some(a) = KEY_CACHE.with_borrow(|c| c.get(&self.0).copied()) {
            return Some(a);
        }
        let a = decompress_canonical(&self.0)?;
        if a.is_small_order() {
            return None;
        }
        KEY_CACHE.with_borrow_mut(|c| {
            // Bounded: a stranger who signs with fresh keys only empties it now and then.
            if c.len() >= KEY_CACHE_ENTRIES {
                c.clear();
            }
            c.insert(self.0, a);
        });
        Some(a)
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

/// Valid public keys each thread decompressed lately, at most this many (about 200 bytes each).
const KEY_CACHE_ENTRIES: usize = 1024;

thread_local! {
    /// Only keys [`Address::point`] accepted go in, keyed by their exact bytes, so a cached
    /// answer is the one decompressing again would give.
    static KEY_CACHE: std::cell::RefCell<std::collections::HashMap<[u8; 32], EdwardsPoint>> =
        std::cell::RefCell::default();
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

impl Signature {
    /// R as a point (canonically encoded) and s as a canonical scalar, if they are.
    fn parts(&self) -> Option<(EdwardsPoint, Scalar)> {
        let r_bytes: [u8; 32] = self.0[..32].try_into().expect("64-byte signatures");
        let s_bytes: [u8; 32] = self.0[32..].try_into().expect("64-byte signatures");
        let r = decompress_canonical(&r_bytes)?;
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
        Some((r, s))
    }
}

/// `k = SHA-512(R ‖ A ‖ M) mod ℓ`.
fn challenge(sig: &Signature, signer: &Address, msg: &[u8]) -> Scalar {
    let hash = Sha512::new()
        .chain_update(&sig.0[..32])
        .chain_update(signer.0)
        .chain_update(msg)
        .finalize();
    Scalar::from_bytes_mod_order_wide(&hash.into())
}

/// The point `bytes` encode, only if they are its canonical encoding: `decompress` also takes
/// y ≥ p (reduced mod p) and a set sign bit on x = 0 (y = ±1), which would give one point
/// several encodings. Checked on the bytes: re-compressing would cost a field inversion.
fn decompress_canonical(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let top = bytes[31] & 0x7f;
    let middle = &bytes[1..31];
    let all = |v: u8| middle.iter().all(|&b| b == v);
    // p = 2²⁵⁵ − 19 and p − 1, little-endian: ed|ec ff … ff 7f; 1: 01 00 … 00.
    let y_at_least_p = top == 0x7f && all(0xff) && bytes[0] >= 0xed;
    let y_is_minus_one = top == 0x7f && all(0xff) && bytes[0] == 0xec;
    let y_is_one = top == 0 && all(0) && bytes[0] == 1;
    let sign = bytes[31] >> 7 == 1;
    if y_at_least_p || (sign && (y_is_one || y_is_minus_one)) {
        return None;
    }
    CompressedEdwardsY(*bytes).decompress()
}

/// Verify many signatures at once, about three times as fast as one by one: `true` exactly
/// when [`Address::verify`] accepts every one (but for a chance of 2⁻¹²⁸ that a batch holding
/// a bad signature passes). `false` says nothing about which failed; the caller checks those
/// one by one.
///
/// Checks `[8](Σ zᵢ(Rᵢ + kᵢAᵢ) − (Σ zᵢsᵢ)B) = 0` for random 128-bit zᵢ: the cofactored form
/// of the single equation, so a torsion component in any Rᵢ or Aᵢ changes no verdict, however
/// the zᵢ fall.
///
/// The terms of one signer share a point: `Σ zᵢkᵢAᵢ` is summed per distinct A into one
/// coefficient (the same equation), so a batch of n signatures from m senders is a
/// multiscalar multiplication of n + m + 1 points, not 2n + 1.
pub fn verify_batch(items: &[(Address, &[u8], Signature)]) -> bool {
    let mut z_bytes = vec![0u8; 16 * items.len()];
    getrandom_fill(&mut z_bytes);
    let mut scalars = Vec::with_capacity(2 * items.len() + 1);
    let mut points = Vec::with_capacity(2 * items.len() + 1);
    // Where each signer's coefficient sits in `scalars`.
    let mut signer_at: std::collections::HashMap<Address, usize> =
        std::collections::HashMap::with_capacity(items.len());
    let mut b = Scalar::ZERO;
    for ((address, msg, sig), z) in items.iter().zip(z_bytes.chunks_exact(16)) {
        let Some((r, s)) = sig.parts() else {
            return false;
        };
        let z = Scalar::from(u128::from_le_bytes(z.try_into().expect("16 bytes")));
        b += z * s;
        scalars.push(z);
        points.push(r);
        let zk = z * challenge(sig, address, msg);
        match signer_at.get(address) {
            Some(&at) => scalars[at] += zk,
            None => {
                let Some(a) = address.point() else {
                    return false;
                };
                signer_at.insert(*address, scalars.len());
                scalars.push(zk);
                points.push(a);
            }
        }
    }
    scalars.push(-b);
    points.push(ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
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

    use curve25519_dalek::constants::EIGHT_TORSION;
    use proptest::prelude::*;

    /// A signature made by hand, as a hostile signer could: secret scalar `a` (key `A = [a]B +
    /// key_torsion`), nonce `r`, and `R = [r]B + r_torsion`, or `r_bytes` verbatim if given.
    fn craft(
        a: u64,
        key_torsion: usize,
        r: u64,
        r_torsion: usize,
        r_bytes: Option<[u8; 32]>,
        msg: &[u8],
    ) -> (Address, Signature) {
        let (a, r) = (Scalar::from(a), Scalar::from(r));
        let key = Address(
            (ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[key_torsion])
                .compress()
                .0,
        );
        let big_r = r_bytes.unwrap_or_else(|| {
            (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[r_torsion])
                .compress()
                .0
        });
        let mut sig = Signature([0; 64]);
        sig.0[..32].copy_from_slice(&big_r);
        let k = challenge(&sig, &key, msg);
        sig.0[32..].copy_from_slice(&(r + k * a).to_bytes());
        (key, sig)
    }

    /// The canonical encoding of y = 1 (the identity) plus p: `decompress` reduces it.
    fn identity_plus_p() -> [u8; 32] {
        let mut b = [0xff; 32];
        b[0] = 0xee;
        b[31] = 0x7f;
        b
    }

    /// What each kind of signature must get from both verifiers.
    fn kinds() -> Vec<(&'static str, Address, Signature, bool)> {
        let m = b"the message";
        let honest = SecretKey::from_seed([3; 32]);
        let mut high_s = honest.sign(m);
        let s = Scalar::from_canonical_bytes(high_s.0[32..].try_into().unwrap()).unwrap();
        // s + ℓ, still 32 bytes: the same s modulo ℓ, not canonical.
        let lb: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut sum = [0u8; 32];
        let sb = s.to_bytes();
        let mut carry = 0u16;
        for i in 0..32 {
            let t = sb[i] as u16 + lb[i] as u16 + carry;
            sum[i] = t as u8;
            carry = t >> 8;
        }
        high_s.0[32..].copy_from_slice(&sum);
        let mut sign_bit_on_identity = [0u8; 32];
        sign_bit_on_identity[0] = 1;
        sign_bit_on_identity[31] = 0x80;
        let crafted = |name, a, kt, r, rt, rb, valid| {
            let (key, sig) = craft(a, kt, r, rt, rb, m);
            (name, key, sig, valid)
        };
        vec![
            ("honest", honest.address(), honest.sign(m), true),
            crafted("crafted without torsion", 11, 0, 22, 0, None, true),
            crafted(
                "torsion in R (the signer's choice)",
                11,
                0,
                22,
                3,
                None,
                true,
            ),
            crafted("torsion in A", 11, 5, 22, 0, None, true),
            crafted("small-order A", 0, 4, 22, 0, None, false),
            crafted(
                "R encoded with y + p",
                11,
                0,
                0,
                0,
                Some(identity_plus_p()),
                false,
            ),
            crafted(
                "R with x = 0 and the sign bit set",
                11,
                0,
                0,
                0,
                Some(sign_bit_on_identity),
                false,
            ),
            ("s + ℓ", honest.address(), high_s, false),
            (
                "another message",
                honest.address(),
                honest.sign(b"other"),
                false,
            ),
        ]
    }

    #[test]
    fn only_canonical_encodings_decompress() {
        // Every y ≥ p, every x = 0 point with its sign bit set: `decompress` takes them all.
        let mut non_canonical = Vec::new();
        for low in 0xedu8..=0xff {
            for sign in [0, 0x80] {
                let mut b = [0xff; 32];
                b[0] = low;
                b[31] = 0x7f | sign;
                non_canonical.push(b);
            }
        }
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut minus_one = [0xff; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        for mut b in [one, minus_one] {
            b[31] |= 0x80;
            non_canonical.push(b);
        }
        for b in &non_canonical {
            assert!(decompress_canonical(b).is_none(), "{}", hex::encode(b));
            if let Some(p) = CompressedEdwardsY(*b).decompress() {
                assert_ne!(
                    p.compress().0,
                    *b,
                    "a second encoding of {}",
                    hex::encode(b)
                );
            }
        }
        // And every canonical encoding still decompresses: random points, the torsion points.
        for i in 0..64u64 {
            let p = ED25519_BASEPOINT_POINT * Scalar::from(i * 7919 + 1)
                + EIGHT_TORSION[i as usize % 8];
            assert_eq!(decompress_canonical(&p.compress().0), Some(p));
        }
        for t in EIGHT_TORSION {
            assert_eq!(decompress_canonical(&t.compress().0), Some(t));
        }
    }

    #[test]
    fn single_verification_follows_the_rule_case_by_case() {
        for (name, key, sig, valid) in kinds() {
            assert_eq!(key.verify(b"the message", &sig).is_ok(), valid, "{name}");
        }
    }

    #[test]
    fn a_batch_verifies_exactly_when_every_signature_does() {
        assert!(verify_batch(&[]));
        let honest: Vec<(Address, Signature)> = (0..6u8)
            .map(|i| {
                let k = SecretKey::from_seed([i + 10; 32]);
                (k.address(), k.sign(b"the message"))
            })
            .collect();
        for (name, key, sig, valid) in kinds() {
            let mut items: Vec<(Address, &[u8], Signature)> = honest
                .iter()
                .map(|(k, s)| (*k, &b"the message"[..], *s))
                .collect();
            items.insert(3, (key, b"the message", sig));
            // The random coefficients must not matter: a torsion component that a cofactorless
            // batch would cancel only for some of them gets the same verdict every time.
            for _ in 0..16 {
                assert_eq!(verify_batch(&items), valid, "{name}");
            }
        }
    }

    /// A signer's terms are summed into one coefficient: still one verdict per signature, so
    /// one bad signature among many good ones by the same key (or a good one moved to another
    /// of its messages) fails the batch.
    #[test]
    fn a_batch_of_one_signers_many_messages_checks_each() {
        let k = SecretKey::from_seed([21; 32]);
        let other = SecretKey::from_seed([22; 32]);
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 40]).collect();
        let mut items: Vec<(Address, &[u8], Signature)> = msgs
            .iter()
            .map(|m| (k.address(), m.as_slice(), k.sign(m)))
            .collect();
        items.push((other.address(), &msgs[0], other.sign(&msgs[0])));
        assert!(verify_batch(&items));
        let swapped = {
            let mut v = items.clone();
            v[5].2 = items[6].2;
            v
        };
        let by_other = {
            let mut v = items.clone();
            v[2].2 = other.sign(&msgs[2]);
            v
        };
        let dropped = {
            let mut v = items.clone();
            v[7].2.0[40] ^= 1;
            v
        };
        for bad in [swapped, by_other, dropped] {
            for _ in 0..8 {
                assert!(!verify_batch(&bad));
            }
        }
    }

    #[test]
    fn a_remembered_key_gives_the_verdict_a_fresh_one_would() {
        let k = SecretKey::from_seed([23; 32]);
        let sig = k.sign(b"m");
        // First sight decompresses and remembers; the second is answered from the cache.
        assert_eq!(k.address().verify(b"m", &sig), Ok(()));
        assert_eq!(k.address().verify(b"m", &sig), Ok(()));
        assert!(k.address().verify(b"n", &sig).is_err());
        // Filling the cache past its bound empties it; verdicts do not change.
        for i in 0..(KEY_CACHE_ENTRIES as u32 + 8) {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            seed[31] = 0x5a;
            assert!(SecretKey::from_seed(seed).address().point().is_some());
        }
        assert!(KEY_CACHE.with_borrow(|c| c.len() <= KEY_CACHE_ENTRIES));
        assert_eq!(k.address().verify(b"m", &sig), Ok(()));
        for (name, key, sig, valid) in kinds() {
            for _ in 0..2 {
                assert_eq!(key.verify(b"the message", &sig).is_ok(), valid, "{name}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any mix of kinds: the batch says yes exactly when each single verification does.
        #[test]
        fn batch_and_single_agree_on_any_mix(picks in proptest::collection::vec(0usize..9, 0..12)) {
            let kinds = kinds();
            let items: Vec<(Address, &[u8], Signature)> = picks
                .iter()
                .map(|&i| (kinds[i].1, &b"the message"[..], kinds[i].2))
                .collect();
            let each = items.iter().all(|(k, m, s)| k.verify(m, s).is_ok());
            prop_assert_eq!(verify_batch(&items), each);
        }
    }
}
