//! Proposals travel as a stream of parts: `Init` (height, round, proposer), the encoded block in
//! chunks, and `Fin` with the proposer's signature over all of it. The engine does not check
//! parts, so this module does. A stream is identified by its (height, round) and kept per
//! sending coordinator, whose identity the gossip layer authenticates; the caller drops parts
//! from anyone but the proposer of that height and round before they get here. Each sender has
//! a few streams and a bounded number of bytes in memory, counting every part; a stream is
//! accepted only when it is complete, in order, within the size limit, names its sender as the
//! proposer, and carries that proposer's signature.

use std::collections::{BTreeMap, HashMap, VecDeque};

use malachitebft_core_types::Round;
use malachitebft_engine::util::streaming::{StreamContent, StreamId, StreamMessage};
use pot_protocol::{Address, Hash, Signature};

use super::context::{Height, ProposalPart, ValidatorAddress};
use super::sign_guard::Refusal;
use super::signing::Signer;

/// Largest data chunk in one part (the gossip layer's message limit is a few MiB).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest encoded block a stream may carry (the ledger's limit plus headroom for the header).
pub const MAX_STREAM_BYTES: usize =
    pot_protocol::ledger::block_limits::MAX_TX_BYTES_TOTAL + 64 * 1024;
/// Most parts a stream can have: Init, the chunks of the largest block, the signature, the end.
const MAX_PARTS: u64 = MAX_STREAM_BYTES.div_ceil(CHUNK_BYTES) as u64 + 3;
/// Streams one coordinator may have in assembly at once; its oldest is dropped beyond this.
/// An honest proposer has one or two (a round and its successor) in flight.
pub const MAX_STREAMS_PER_SENDER: usize = 4;

/// A complete, signature-checked proposal as it came off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    pub height: Height,
    pub round: Round,
    pub pol_round: Round,
    pub proposer: ValidatorAddress,
    pub block_bytes: Vec<u8>,
}

/// What the proposer signs: the chain, the proposal's place, and the block's hash.
pub fn stream_digest(
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

/// The (height, round) a stream id names, if it is one `stream_id` makes.
pub fn parse_stream_id(id: &StreamId) -> Option<(Height, Round)> {
    let bytes = id.to_bytes();
    if bytes.len() != 16 {
        return None;
    }
    let height = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    let round = i64::from_be_bytes(bytes[8..].try_into().ok()?);
    let round = u32::try_from(round).ok()?;
    Some((Height(height), Round::new(round)))
}

/// Sign this node's proposal of `block_bytes` (the block `value`) and split it into the
/// messages to publish; refused if this key already proposed something else there.
pub fn stream(
    signer: &Signer,
    height: Height,
    round: Round,
    pol_round: Round,
    value: Hash,
    block_bytes: &[u8],
) -> Result<Vec<StreamMessage<ProposalPart>>, Refusal> {
    let proposer = ValidatorAddress(signer.address());
    let digest = stream_digest(
        signer.chain(),
        height,
        round,
        pol_round,
        proposer,
        block_bytes,
    );
    let signature = signer.sign_proposal_stream(height, round, value, &digest)?;
    Ok(stream_signed(
        height,
        round,
        pol_round,
        proposer,
        block_bytes,
        signature,
    ))
}

/// The messages of a proposal stream with its signature already made.
pub fn stream_signed(
    height: Height,
    round: Round,
    pol_round: Round,
    proposer: ValidatorAddress,
    block_bytes: &[u8],
    signature: Signature,
) -> Vec<StreamMessage<ProposalPart>> {
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
    #[error("stream is over {MAX_STREAM_BYTES} bytes of block or {MAX_PARTS} parts")]
    TooLarge,
    #[error("stream parts are out of shape: {0}")]
    Malformed(&'static str),
    #[error("proposal signature does not verify for {0}")]
    BadSignature(Address),
    #[error("parts from a peer that is not a coordinator")]
    Stranger,
    #[error(
        "{sender} sent a proposal for height {height} round {round}, where the proposer is {proposer}"
    )]
    NotProposer {
        sender: Address,
        height: Height,
        round: Round,
        proposer: Address,
    },
    #[error(
        "proposal for height {height} is outside the heights this node accepts ({from}..={to})"
    )]
    OutOfRange { height: Height, from: u64, to: u64 },
    #[error("proposal for height {height} round {round} is too far ahead of round {base}")]
    RoundOutOfRange {
        height: Height,
        round: Round,
        base: u32,
    },
}

#[derive(Default)]
struct Partial {
    messages: BTreeMap<u64, StreamContent<ProposalPart>>,
    fin_at: Option<u64>,
    bytes: usize,
}

/// Block bytes a part carries (the others are small and fixed in size; their number is capped
/// by the sequence limit).
fn data_len(content: &StreamContent<ProposalPart>) -> usize {
    match content {
        StreamContent::Data(ProposalPart::Data(d)) => d.len(),
        _ => 0,
    }
}

/// Streams being assembled, per sending coordinator.
#[derive(Default)]
pub struct Reassembly {
    senders: HashMap<Address, SenderStreams>,
}

/// One sender's open streams, oldest first.
#[derive(Default)]
struct SenderStreams {
    streams: VecDeque<((Height, Round), Partial)>,
}

impl Reassembly {
    /// Add a message that `sender` (an authenticated coordinator, the proposer of `place`)
    /// sent for the stream at `place`; returns the proposal once its stream is complete and
    /// verified. A stream that turns out bad is dropped and reported.
    pub fn add(
        &mut self,
        chain: &Hash,
        sender: Address,
        place: (Height, Round),
        msg: StreamMessage<ProposalPart>,
    ) -> Result<Option<Assembled>, StreamError> {
        let mine = self.senders.entry(sender).or_default();
        let at = match mine.streams.iter().position(|(p, _)| *p == place) {
            Some(i) => i,
            None => {
                if mine.streams.len() == MAX_STREAMS_PER_SENDER {
                    mine.streams.pop_front();
                }
                mine.streams.push_back((place, Partial::default()));
                mine.streams.len() - 1
            }
        };
        let outcome = {
            let partial = &mut mine.streams[at].1;
            if msg.sequence >= MAX_PARTS {
                Err(StreamError::TooLarge)
            } else if let Some(earlier) = partial.messages.get(&msg.sequence) {
                // Gossip may deliver a part again (a restream of the same proposal); only a
                // different part at the same place is wrong.
                if *earlier == msg.content {
                    Ok(false)
                } else {
                    Err(StreamError::Malformed("two different parts at one place"))
                }
            } else {
                partial.bytes += data_len(&msg.content);
                if msg.content.is_fin() {
                    partial.fin_at = Some(msg.sequence);
                }
                partial.messages.insert(msg.sequence, msg.content);
                if partial.bytes > MAX_STREAM_BYTES {
                    Err(StreamError::TooLarge)
                } else {
                    Ok(partial
                        .fin_at
                        .is_some_and(|fin| partial.messages.len() as u64 == fin + 1))
                }
            }
        };
        match outcome {
            Ok(false) => Ok(None),
            Ok(true) => {
                let (_, partial) = mine.streams.remove(at).expect("present");
                assemble(chain, sender, place, partial).map(Some)
            }
            Err(e) => {
                mine.streams.remove(at);
                Err(e)
            }
        }
    }

    /// Forget streams for heights below `height` (decided already).
    pub fn prune_below(&mut self, height: Height) {
        for s in self.senders.values_mut() {
            s.streams.retain(|((h, _), _)| *h >= height);
        }
        self.senders.retain(|_, s| !s.streams.is_empty());
    }

    /// Bytes held for `sender`'s open streams.
    pub fn held_by(&self, sender: &Address) -> usize {
        self.senders
            .get(sender)
            .map(|s| s.streams.iter().map(|(_, p)| p.bytes).sum())
            .unwrap_or(0)
    }
}

fn assemble(
    chain: &Hash,
    sender: Address,
    place: (Height, Round),
    partial: Partial,
) -> Result<Assembled, StreamError> {
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
    if (height, round) != place {
        return Err(StreamError::Malformed(
            "Init names another height or round than the stream",
        ));
    }
    if proposer.0 != sender {
        return Err(StreamError::Malformed(
            "Init names another proposer than the sender",
        ));
    }
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

    fn setup() -> (Signer, Hash, Vec<u8>) {
        let chain = Hash::digest(b"genesis");
        let signer = Signer::new(SecretKey::from_seed([3; 32]), chain);
        let block: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17)).map(|i| i as u8).collect();
        (signer, chain, block)
    }

    fn messages(signer: &Signer, h: u64, r: u32, block: &[u8]) -> Vec<StreamMessage<ProposalPart>> {
        stream(
            signer,
            Height(h),
            Round::new(r),
            Round::Nil,
            Hash::digest(block),
            block,
        )
        .unwrap()
    }

    fn feed(
        r: &mut Reassembly,
        chain: &Hash,
        sender: Address,
        messages: Vec<StreamMessage<ProposalPart>>,
    ) -> Vec<Result<Option<Assembled>, StreamError>> {
        messages
            .into_iter()
            .map(|m| {
                let place = parse_stream_id(&m.stream_id).expect("our stream ids parse");
                r.add(chain, sender, place, m)
            })
            .collect()
    }

    #[test]
    fn a_stream_reassembles_in_any_order() {
        let (signer, chain, block) = setup();
        let mut msgs = messages(&signer, 5, 1, &block);
        assert_eq!(msgs.len(), 1 + 3 + 1 + 1, "init, 3 chunks, signature, end");
        msgs.reverse();
        let mut r = Reassembly::default();
        let done = feed(&mut r, &chain, signer.address(), msgs)
            .into_iter()
            .find_map(|x| x.unwrap())
            .expect("complete");
        assert_eq!(done.block_bytes, block);
        assert_eq!(done.height, Height(5));
        assert_eq!(done.proposer.0, signer.address());
        assert_eq!(r.held_by(&signer.address()), 0);
    }

    #[test]
    fn a_stream_id_names_its_height_and_round() {
        assert_eq!(
            parse_stream_id(&stream_id(Height(9), Round::new(4))),
            Some((Height(9), Round::new(4)))
        );
        assert_eq!(parse_stream_id(&StreamId::new(vec![1, 2, 3].into())), None);
        assert_eq!(parse_stream_id(&stream_id(Height(9), Round::Nil)), None);
    }

    #[test]
    fn a_changed_chunk_or_another_chain_fails_the_signature() {
        let (signer, chain, block) = setup();
        let mut msgs = messages(&signer, 5, 0, &block);
        msgs[2].content = StreamContent::Data(ProposalPart::Data(vec![0; 10]));
        let mut r = Reassembly::default();
        let results = feed(&mut r, &chain, signer.address(), msgs);
        assert_eq!(
            results.last().unwrap(),
            &Err(StreamError::BadSignature(signer.address()))
        );

        let other = Hash::digest(b"other genesis");
        let mut r = Reassembly::default();
        let last = feed(
            &mut r,
            &other,
            signer.address(),
            messages(&signer, 5, 0, &block),
        );
        assert_eq!(
            last.last().unwrap(),
            &Err(StreamError::BadSignature(signer.address()))
        );
    }

    #[test]
    fn a_stream_relayed_under_another_senders_name_is_refused() {
        // A coordinator that relays (or forges) a stream naming someone else as proposer.
        let (signer, chain, block) = setup();
        let other = SecretKey::from_seed([4; 32]).address();
        let mut r = Reassembly::default();
        let results = feed(&mut r, &chain, other, messages(&signer, 5, 0, &block));
        assert_eq!(
            results.last().unwrap(),
            &Err(StreamError::Malformed(
                "Init names another proposer than the sender"
            ))
        );
    }

    #[test]
    fn an_oversized_stream_is_dropped() {
        let (signer, chain, _) = setup();
        let big = vec![1u8; MAX_STREAM_BYTES + 1];
        let mut r = Reassembly::default();
        let errors: Vec<_> = feed(
            &mut r,
            &chain,
            signer.address(),
            messages(&signer, 1, 0, &big),
        )
        .into_iter()
        .filter_map(Result::err)
        .collect();
        assert_eq!(errors.first(), Some(&StreamError::TooLarge));
    }

    #[test]
    fn a_flood_of_small_parts_is_bounded_too() {
        let (signer, chain, _) = setup();
        let id = stream_id(Height(2), Round::new(0));
        let mut r = Reassembly::default();
        let mut refused = false;
        for seq in 0..10_000u64 {
            let m = StreamMessage::new(
                id.clone(),
                seq,
                StreamContent::Data(ProposalPart::Data(vec![])),
            );
            if r.add(&chain, signer.address(), (Height(2), Round::new(0)), m)
                .is_err()
            {
                refused = true;
                break;
            }
        }
        assert!(refused, "empty parts are counted");
        assert_eq!(r.held_by(&signer.address()), 0, "the stream was dropped");
    }

    #[test]
    fn one_sender_cannot_evict_another_senders_stream() {
        let (honest, chain, block) = setup();
        let flooder = Signer::new(SecretKey::from_seed([5; 32]), chain);
        let mut r = Reassembly::default();
        let mut msgs = messages(&honest, 7, 0, &block);
        let last = msgs.pop().unwrap();
        assert!(
            feed(&mut r, &chain, honest.address(), msgs)
                .iter()
                .all(|x| x == &Ok(None))
        );
        // The flooder opens many streams of its own (rounds it might propose in).
        for round in 0..100 {
            let mut m = messages(&flooder, 7, round, &block);
            m.pop();
            feed(&mut r, &chain, flooder.address(), m);
        }
        assert!(r.held_by(&flooder.address()) <= MAX_STREAMS_PER_SENDER * MAX_STREAM_BYTES);
        let done = r
            .add(&chain, honest.address(), (Height(7), Round::new(0)), last)
            .unwrap()
            .expect("the honest stream completes");
        assert_eq!(done.block_bytes, block);
    }
}
