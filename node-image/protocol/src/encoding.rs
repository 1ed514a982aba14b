//! The canonical binary encoding: borsh, plus a re-encode check on decode.
//!
//! Borsh is deterministic (one value, one byte string) and already rejects trailing bytes,
//! unknown enum variants, bad bool bytes and truncated input. Decoding here additionally requires
//! that re-encoding the value gives back exactly the input bytes, so no second encoding of the
//! same value (for instance an unsorted map) can ever be accepted and hash differently.

use borsh::{BorshDeserialize, BorshSerialize};

/// Why bytes are not the canonical encoding of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed encoding: {0}")]
    Malformed(String),
    #[error("non-canonical encoding: the value re-encodes to different bytes")]
    NonCanonical,
}

/// Encode a value canonically.
pub fn encode<T: BorshSerialize + ?Sized>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("encoding into a Vec cannot fail")
}

/// Decode a value, rejecting anything but its canonical encoding.
pub fn decode<T: BorshSerialize + BorshDeserialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    let value: T = borsh::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if encode(&value) != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(value)
}

/// Decode with an upper bound on the input size, checked before any parsing.
pub fn decode_limited<T: BorshSerialize + BorshDeserialize>(
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32);
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn truncated_and_bad_lengths_are_rejected() {
        let bytes = encode(&vec![1u64, 2, 3]);
        assert!(decode::<Vec<u64>>(&bytes[..bytes.len() - 1]).is_err());
        // A length prefix that promises far more elements than there are bytes.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(decode::<Vec<u64>>(&huge).is_err());
    }

    #[test]
    fn invalid_bool_and_option_tags_are_rejected() {
        assert!(decode::<bool>(&[2]).is_err());
        assert!(decode::<Option<u8>>(&[2, 0]).is_err());
    }

    #[test]
    fn unsorted_map_is_not_canonical() {
        let mut m = BTreeMap::new();
        m.insert(1u8, 10u8);
        m.insert(2u8, 20u8);
        let good = encode(&m);
        assert_eq!(decode::<BTreeMap<u8, u8>>(&good).unwrap(), m);
        // Same entries, keys swapped: a second byte string for the same value.
        let swapped = [2, 0, 0, 0, 2, 20, 1, 10];
        assert!(decode::<BTreeMap<u8, u8>>(&swapped).is_err());
    }

    #[test]
    fn size_limit_is_checked_first() {
        assert_eq!(
            decode_limited::<u8>(&[0; 10], 4),
            Err(DecodeError::TooLarge { len: 10, max: 4 })
        );
    }
}
