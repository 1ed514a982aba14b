//! One codec for everything the engine sends or logs (consensus messages, proposal parts, sync
//! requests and responses, WAL entries): borsh, through the engine crates' `borsh` features.

use borsh::{BorshDeserialize, BorshSerialize};
use bytes::Bytes;
use malachitebft_app::types::codec::Codec;

/// Borsh for any type that has it. Decoding fails on trailing bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct BorshCodec;

impl<T> Codec<T> for BorshCodec
where
    T: BorshSerialize + BorshDeserialize,
{
    type Error = std::io::Error;

    fn decode(&self, bytes: Bytes) -> Result<T, Self::Error> {
        borsh::from_slice(&bytes)
    }

    fn encode(&self, msg: &T) -> Result<Bytes, Self::Error> {
        borsh::to_vec(msg).map(Bytes::from)
    }
}
