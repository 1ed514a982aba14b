//! The artifact protocol on the wire (`/pot/artifacts/1`, libp2p request–response): ask a
//! holder for a blob's chunk list, then for its chunks. Every message is a length-prefixed
//! borsh value with a hard size limit, read before anything is allocated for it.

use std::io;

use async_trait::async_trait;
use borsh::{BorshDeserialize, BorshSerialize};
use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use pot_protocol::Hash;

use super::store::CHUNK;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/pot/artifacts/1");

/// The largest blob a manifest may describe (16 GiB: a dataset, never a checkpoint).
pub const MAX_BLOB: u64 = 16 << 30;
const MAX_REQUEST: usize = 256;
/// A chunk, or the chunk list of the largest blob, with room for the framing.
const MAX_RESPONSE: usize = CHUNK as usize + 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Request {
    /// The blob's size and the SHA-256 of each of its chunks.
    Manifest {
        blob: Hash,
    },
    Chunk {
        blob: Hash,
        index: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Response {
    Manifest {
        size: u64,
        chunks: Vec<Hash>,
    },
    Chunk {
        bytes: Vec<u8>,
    },
    /// This peer does not hold the blob (or has no such chunk).
    NotFound,
    /// This peer is serving as many of the asker's requests as it will; ask later or elsewhere.
    Busy,
}

/// Length-prefixed borsh with size limits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

async fn read_framed<T, M>(io: &mut T, max: usize) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: BorshDeserialize,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    borsh::from_slice(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_framed<T, M>(io: &mut T, msg: &M, max: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: BorshSerialize,
{
    let bytes = borsh::to_vec(msg)?;
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message over the size limit",
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

#[async_trait]
impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_framed(io, MAX_REQUEST).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_framed(io, MAX_RESPONSE).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, &req, MAX_REQUEST).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, &res, MAX_RESPONSE).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::executor::block_on;
    use libp2p::futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused_before_allocation() {
        let mut buf = Cursor::new(Vec::new());
        let chunk = Response::Chunk {
            bytes: vec![1; CHUNK as usize],
        };
        block_on(Codec.write_response(&PROTOCOL, &mut buf, chunk.clone())).unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        assert_eq!(
            block_on(Codec.read_response(&PROTOCOL, &mut rd)).unwrap(),
            chunk
        );

        // A manifest of the largest blob fits.
        let chunks = vec![Hash::ZERO; (MAX_BLOB / CHUNK) as usize];
        let mut buf = Cursor::new(Vec::new());
        block_on(write_framed(
            &mut buf,
            &Response::Manifest {
                size: MAX_BLOB,
                chunks,
            },
            MAX_RESPONSE,
        ))
        .unwrap();

        // A length prefix past the limit is refused without reading on.
        let mut rd = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let err = block_on(Codec.read_request(&PROTOCOL, &mut rd)).unwrap_err();
        assert!(err.to_string().contains("over the 256-byte limit"), "{err}");
    }
}
