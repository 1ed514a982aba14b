//! SHA-256 is the one hash of the protocol: transaction ids, block ids, commitments, Merkle trees,
//! the state root and dataset/checkpoint digests all use it, so a reader never has to ask which.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 digest.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    /// Plain SHA-256 of `bytes` (used for content digests such as datasets and checkpoints).
    pub fn digest(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// SHA-256 over a domain tag and the concatenated parts. The tag is length-prefixed so two
    /// domains can never produce the same preimage; parts must be fixed-size or self-delimiting
    /// (borsh encodings are).
    pub fn tagged(tag: &str, parts: &[&[u8]]) -> Hash {
        let mut h = Sha256::new();
        h.update([u8::try_from(tag.len()).expect("domain tags are short")]);
        h.update(tag.as_bytes());
        for p in parts {
            h.update(p);
        }
        Hash(h.finalize().into())
    }

    /// Domain-tagged hash of a value's canonical encoding.
    pub fn of_value<T: BorshSerialize>(tag: &str, value: &T) -> Hash {
        Hash::tagged(tag, &[&crate::encoding::encode(value)])
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first eight bytes as a little-endian integer (for sampling).
    pub fn low_u64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

/// Why a hex string is not a 32-byte value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex characters (32 bytes), got {0:?}")]
pub struct BadHex(pub String);

pub(crate) fn parse_hex32(s: &str) -> Result<[u8; 32], BadHex> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| BadHex(s.chars().take(80).collect()))?;
    Ok(out)
}

impl FromStr for Hash {
    type Err = BadHex;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(Hash)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// Serde as a hex string, for YAML/JSON.
macro_rules! serde_hex32 {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_hex32;

serde_hex32!(Hash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            Hash::digest(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tags_separate_domains() {
        assert_ne!(Hash::tagged("a", &[b"bc"]), Hash::tagged("ab", &[b"c"]));
        assert_ne!(Hash::tagged("x", &[b"1"]), Hash::digest(b"1"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::digest(b"x");
        assert_eq!(h.to_hex().parse::<Hash>().unwrap(), h);
        assert_eq!(format!("0x{h}").parse::<Hash>().unwrap(), h);
        assert!("abcd".parse::<Hash>().is_err());
        assert!("zz".repeat(32).parse::<Hash>().is_err());
    }
}
