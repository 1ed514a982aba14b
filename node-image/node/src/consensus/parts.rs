//! Proposals travel as a stream of parts: `Init` (height, round, proposer), the encoded block in
//! chunks, and `Fin` with the proposer's signature over all of it. The engine does not check
//! parts, so this module does: a stream is accepted only when it is complete, in order, within
//! the size limit, and signed by the coordinator it names.

use std::collections::{BTreeMap, VecDeque};

use malachitebft_core_types::Round;
use malachitebft_engine::util::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_peer::PeerId;
use pot_protocol::{Address, Hash, Signature};

use super::context::{Height, ProposalPart, ValidatorAddress};
use super::signing::Signer;

/// Largest data chunk in one part (the gossip layer's message limit is a few MiB).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest encoded block a stream may carry (the ledger's limit plus headroom for the header).
pub const MAX_STREAM_BYTES: usize =
    pot_protocol::ledger::block_limits::MAX_TX_BYTES_TOTAL + 64 * 1024;
/// Streams being assembled at once; the oldest is dropped beyond this.
const MAX_OPEN_STREAMS: usize = 64;

/// A complete, signature-checked proposal as it came off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    pub height: Height,
    pub round: Round,
    pub pol_round: Round,
    pub proposer: ValidatorAddress,
    pub block_bytes: Vec<u8>,
}

fn stream_digest(
    chain: &Hash,
    height: Height,
    round: Round,
    pol_round: Round,
    proposer: ValidatorAddress,
    block_bytes: &[u8],
) -> Hash {
    let header = borsh::to_vec(&(height, round, pol_round, proposer)).expect("encodes");
    Hash::tagged(
        "pot/consensus/stream",
        &[
            chain.as_bytes(),
            &header,
            Hash::digest(block_bytes).as_bytes(),
        ],
    )
}

/// The stream id of a proposal: its height and round (one proposal per proposer per round).
pub fn stream_id(height: Height, round: Round) -> StreamId {
    let mut bytes = height.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(&round.as_i64().to_be_bytes());
    StreamId::new(bytes.into())
}

/// Split a signed proposal into the messages to publish.
pub fn stream(
    signer: &Signer,
    height: Height,
    round: Round,
    pol_round: Round,
    block_bytes: &[u8],
) -> Vec<StreamMessage<ProposalPart>> {
    let proposer = ValidatorAddress(signer.address());
    let signature = signer.sign(&stream_digest(
        signer.chain(),
        height,
        round,
        pol_round,
        proposer,
        block_bytes,
    ));
    let mut parts = vec![ProposalPart::Init {
        height,
        round,
        pol_round,
        proposer,
    }];
    parts.extend(
        block_bytes
            .chunks(CHUNK_BYTES)
            .map(|c| ProposalPart::Data(c.to_vec())),
    );
    parts.push(ProposalPart::Fin(signature));
    let id = stream_id(height, round);
    let mut messages: Vec<_> = parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| StreamMessage::new(id.clone(), i as u64, StreamContent::Data(p)))
        .collect();
    messages.push(StreamMessage::new(
        id,
        messages.len() as u64,
        StreamContent::Fin,
    ));
    messages
}

/// Why a received stream was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream is over {MAX_STREAM_BYTES} bytes")]
    TooLarge,
    #[error("stream parts are out of shape: {0}")]
    Malformed(&'static str),
    #[error("proposal signature does not verify for {0}")]
    BadSignature(Address),
}

#[derive(Default)]
struct Partial {
    messages: BTreeMap<u64, StreamContent<ProposalPart>>,
    fin_at: Option<u64>,
    bytes: usize,
}

/// Streams being assembled, per sending peer.
#[derive(Default)]
pub struct Reassembly {
    open: BTreeMap<(PeerId, StreamId), Partial>,
    order: VecDeque<(PeerId, StreamId)>,
}

impl Reassembly {
    /// Add a message; returns the proposal once its stream is complete and verified. A stream
    /// that turns out bad is dropped and reported.
    pub fn add(
        &mut self,
        chain: &Hash,
        from: PeerId,
        msg: StreamMessage<ProposalPart>,
    ) -> Result<Option<Assembled>, StreamError> {
        let key = (from, msg.stream_id.clone());
        if !self.open.contains_key(&key) {
            if self.order.len() == MAX_OPEN_STREAMS
                && let Some(oldest) = self.order.pop_front()
            {
                self.open.remove(&oldest);
            }
            self.order.push_back(key.clone());
        }
        let partial = self.open.entry(key.clone()).or_default();
        if let StreamContent::Data(ProposalPart::Data(d)) = &msg.content {
            partial.bytes += d.len();
        }
        if msg.content.is_fin() {
            partial.fin_at = Some(msg.sequence);
        }
        partial.messages.insert(msg.sequence, msg.content);
        let too_large = partial.bytes > MAX_STREAM_BYTES;
        let complete = partial
            .fin_at
            .is_some_and(|fin| partial.messages.len() as u64 == fin + 1);
        if !too_large && !complete {
            return Ok(None);
        }
        let partial = self.open.remove(&key).expect("present");
        self.order.retain(|k| k != &key);
        if too_large {
            return Err(StreamError::TooLarge);
        }
        assemble(chain, partial).map(Some)
    }
}

fn assemble(chain: &Hash, partial: Partial) -> Result<Assembled, StreamError> {
    let mut contents = partial.messages.into_values();
    let Some(StreamContent::Data(ProposalPart::Init {
        height,
        round,
        pol_round,
        proposer,
    })) = contents.next()
    else {
        return Err(StreamError::Malformed("first part is not Init"));
    };
    let mut block_bytes = Vec::with_capacity(partial.bytes);
    let mut signature: Option<Signature> = None;
    for content in contents {
        match (content, signature) {
            (StreamContent::Data(ProposalPart::Data(d)), None) => block_bytes.extend(d),
            (StreamContent::Data(ProposalPart::Fin(s)), None) => signature = Some(s),
            (StreamContent::Fin, Some(_)) => {}
            _ => return Err(StreamError::Malformed("parts after Fin or a second Init")),
        }
    }
    let signature = signature.ok_or(StreamError::Malformed("no signature part"))?;
    let digest = stream_digest(chain, height, round, pol_round, proposer, &block_bytes);
    proposer
        .0
        .verify(digest.as_bytes(), &signature)
        .map_err(|_| StreamError::BadSignature(proposer.0))?;
    Ok(Assembled {
        height,
        round,
        pol_round,
        proposer,
        block_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::SecretKey;

    fn peer() -> PeerId {
        let id = libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        PeerId::from_bytes(&id.to_bytes()).expect("a libp2p peer id")
    }

    fn setup() -> (Signer, Hash, Vec<u8>) {
        let chain = Hash::digest(b"genesis");
        let signer = Signer::new(SecretKey::from_seed([3; 32]), chain);
        let block: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17)).map(|i| i as u8).collect();
        (signer, chain, block)
    }

    #[test]
    fn a_stream_reassembles_in_any_order() {
        let (signer, chain, block) = setup();
        let mut messages = stream(&signer, Height(5), Round::new(1), Round::Nil, &block);
        assert_eq!(
            messages.len(),
            1 + 3 + 1 + 1,
            "init, 3 chunks, signature, end"
        );
        messages.reverse();
        let mut r = Reassembly::default();
        let from = peer();
        let mut done = None;
        for m in messages {
            if let Some(a) = r.add(&chain, from, m).unwrap() {
                done = Some(a);
            }
        }
        let a = done.expect("complete");
        assert_eq!(a.block_bytes, block);
        assert_eq!(a.height, Height(5));
        assert_eq!(a.proposer.0, signer.address());
        assert!(r.open.is_empty());
    }

    #[test]
    fn a_changed_chunk_or_another_chain_fails_the_signature() {
        let (signer, chain, block) = setup();
        let mut messages = stream(&signer, Height(5), Round::new(0), Round::Nil, &block);
        messages[2].content = StreamContent::Data(ProposalPart::Data(vec![0; 10]));
        let mut r = Reassembly::default();
        let from = peer();
        let results: Vec<_> = messages
            .into_iter()
            .map(|m| r.add(&chain, from, m))
            .collect();
        assert_eq!(
            results.last().unwrap(),
            &Err(StreamError::BadSignature(signer.address()))
        );

        let messages = stream(&signer, Height(5), Round::new(0), Round::Nil, &block);
        let other = Hash::digest(b"other genesis");
        let mut r = Reassembly::default();
        let last = messages.into_iter().map(|m| r.add(&other, from, m)).last();
        assert_eq!(
            last.unwrap(),
            Err(StreamError::BadSignature(signer.address()))
        );
    }

    #[test]
    fn an_oversized_stream_is_dropped() {
        let (signer, chain, _) = setup();
        let big = vec![1u8; MAX_STREAM_BYTES + 1];
        let messages = stream(&signer, Height(1), Round::new(0), Round::Nil, &big);
        let mut r = Reassembly::default();
        let from = peer();
        let errors: Vec<_> = messages
            .into_iter()
            .filter_map(|m| r.add(&chain, from, m).err())
            .collect();
        assert_eq!(errors.first(), Some(&StreamError::TooLarge));
        assert!(r.open.len() <= 1);
    }
}
