//! Deliberate misbehaviour, for tests of what honest coordinators do about it. Compiled only
//! with the `fault-injection` cargo feature, which the test harness enables and no shipped
//! binary has.

use std::path::PathBuf;

use pot_protocol::Block;

use super::signing::Signer;

/// A Byzantine proposer's misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Propose blocks whose header claims a state root execution does not give.
    WrongStateRoot,
    /// Propose blocks carrying a transaction with a forged signature.
    InvalidTx,
    /// Propose two different valid blocks for each of its rounds, both signed.
    Equivocate,
    /// At every round, publish dozens of never-finished proposal streams, most for rounds
    /// where another coordinator proposes, to crowd honest proposals out of peers' buffers.
    FloodParts,
    /// From height 2 on, for every vote its engine casts, gossip a second, conflicting one (nil
    /// for a block, a made-up block for nil) from a second libp2p identity, so peers get both.
    EquivocateVotes,
}

impl Fault {
    /// Whether this fault changes the blocks this node proposes (the others publish something
    /// besides an honest block).
    pub fn corrupts_blocks(self) -> bool {
        matches!(self, Fault::WrongStateRoot | Fault::InvalidTx)
    }
}

/// Streams a flooding coordinator opens at each round.
pub const FLOOD_STREAMS: u32 = 96;
/// Bytes of junk in each of them.
pub const FLOOD_BYTES: usize = 32 * 1024;

/// The faults a test may inject into one coordinator.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Faults {
    /// Misbehave as a Byzantine coordinator.
    #[arg(long = "fault", value_enum)]
    pub proposal: Option<Fault>,
    /// Fail to store the decided block at this height, as a full disk or an I/O error would.
    #[arg(long)]
    pub fail_commit_at: Option<u64>,
    /// Abort the process at a chosen point: `decided:H` (a block decided at height H, before
    /// it is stored) or `proposed:H` (right after this node's first proposal at H or above).
    #[arg(long, value_parser = parse_crash)]
    pub crash_at: Option<Crash>,
    /// Append every consensus signature this node's key makes (height, round, step, value)
    /// to this file, so a test can check that nothing was ever signed twice.
    #[arg(long)]
    pub signature_log: Option<PathBuf>,
    /// Append every vote whose signature this node verified (voter, height, round, kind,
    /// value; its own included, as certificates carry them) to this file, so a test can see
    /// the equivocations that arrived.
    #[arg(long)]
    pub received_vote_log: Option<PathBuf>,
}

/// A file a test reads line by line while the node appends to it (the signature and vote
/// logs): each line is written whole, under a lock.
#[derive(Clone)]
pub struct LineLog(std::sync::Arc<std::sync::Mutex<std::fs::File>>);

impl LineLog {
    pub fn open(path: &std::path::Path) -> std::io::Result<LineLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LineLog(std::sync::Arc::new(std::sync::Mutex::new(file))))
    }

    /// Append `line` and a newline (best effort: a test log never stops the node).
    pub fn line(&self, line: &str) {
        use std::io::Write as _;
        let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Where `--crash-at` aborts the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    BeforeStoringDecided(u64),
    AfterProposing(u64),
}

fn parse_crash(s: &str) -> Result<Crash, String> {
    let (what, height) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected decided:HEIGHT or proposed:HEIGHT"))?;
    let height: u64 = height
        .parse()
        .map_err(|e| format!("`{height}` is not a height: {e}"))?;
    match what {
        "decided" => Ok(Crash::BeforeStoringDecided(height)),
        "proposed" => Ok(Crash::AfterProposing(height)),
        other => Err(format!("`{other}`: expected decided or proposed")),
    }
}

/// Die the way SIGKILL would: nothing flushed, nothing unwound.
pub fn crash(at: &str) -> ! {
    tracing::error!(at, "injected crash");
    std::process::abort()
}

/// Break a block the way `fault` says, keeping everything else consistent (the transaction
/// root matches its transactions) so that only the intended fault is there to be caught.
pub fn corrupt(mut block: Block, fault: Fault, signer: &Signer) -> Block {
    use pot_protocol::tx::{Tx, TxBody};
    match fault {
        Fault::WrongStateRoot => {
            block.header.state_root = pot_protocol::Hash::digest(b"not the state root");
        }
        Fault::InvalidTx => {
            let forger = pot_protocol::SecretKey::from_seed([0xee; 32]);
            let mut stx = Tx {
                chain_id: String::new(),
                signer: forger.address(),
                nonce: 0,
                fee: pot_protocol::Amount(0),
                body: TxBody::Transfer {
                    to: signer.address(),
                    amount: pot_protocol::Amount(1),
                },
            }
            .sign(&forger);
            // The forger's signature, claimed for this coordinator's account.
            stx.tx.signer = signer.address();
            block.txs.push(stx);
            block.header.tx_root = pot_protocol::block::tx_root(&block.txs);
        }
        // These publish something besides; the block itself is proposed as is.
        Fault::Equivocate | Fault::FloodParts | Fault::EquivocateVotes => {}
    }
    block
}

/// Where to send the votes this coordinator's engine signs: for each one from height 2 on, a
/// conflicting vote signed with the same key (past the sign guard) is published from a second
/// gossip identity, so it reaches every peer besides the honest one, in either order, as a real
/// equivocating validator's would. That identity starts at height 2, when the others are
/// known to be listening (a persistent peer is dialled only a few times).
pub fn spawn_vote_equivocator(
    consensus: &malachitebft_config::ConsensusConfig,
    seed: [u8; 32],
    signer: Signer,
) -> tokio::sync::mpsc::UnboundedSender<super::context::Vote> {
    use malachitebft_core_consensus::SignedConsensusMsg;
    use malachitebft_core_types::{NilOrVal, SignedMessage};
    use malachitebft_engine::network::Msg as NetworkMsg;

    use super::codec::BorshCodec;
    use super::context::{BlockId, PotContext};

    let mut cfg = consensus.clone();
    // Any free port: the honest peers are dialled from here, never the other way.
    cfg.p2p.listen_addr = "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr");
    let (tap, mut votes) = tokio::sync::mpsc::unbounded_channel::<super::context::Vote>();
    tokio::spawn(async move {
        let mut network = None;
        while let Some(vote) = votes.recv().await {
            if vote.height.0 < 2 {
                continue;
            }
            if network.is_none() {
                let sidecar_seed =
                    pot_protocol::Hash::tagged("pot/faults/vote-equivocator", &[&seed]);
                let keypair =
                    malachitebft_app::types::Keypair::ed25519_from_bytes(*sidecar_seed.as_bytes())
                        .expect("32-byte seeds are valid");
                let registry = malachitebft_app::metrics::SharedRegistry::global()
                    .with_moniker("vote-equivocator");
                match malachitebft_app::spawn::spawn_network_actor::<PotContext, _>(
                    &cfg, keypair, &registry, BorshCodec,
                )
                .await
                {
                    Ok(n) => network = Some(n),
                    Err(e) => {
                        tracing::error!(%e, "the vote equivocator's network did not start");
                        return;
                    }
                }
            }
            let network = network.as_ref().expect("started above");
            let mut other = vote.clone();
            other.value = match vote.value {
                NilOrVal::Nil => NilOrVal::Val(BlockId(pot_protocol::Hash::digest(
                    b"a block nobody proposed",
                ))),
                NilOrVal::Val(_) => NilOrVal::Nil,
            };
            let digest = super::signing::vote_digest(signer.chain(), &other);
            let signed = SignedMessage::new(other, signer.sign_unguarded(&digest));
            if network
                .cast(NetworkMsg::PublishConsensusMsg(SignedConsensusMsg::Vote(
                    signed,
                )))
                .is_err()
            {
                break;
            }
            // Logged after publishing, so the honest vote has no head start.
            let peers = network
                .call(
                    |reply| NetworkMsg::GetState { reply },
                    Some(std::time::Duration::from_secs(1)),
                )
                .await
                .ok()
                .and_then(|r| r.success_or(()).ok())
                .unwrap_or(0);
            tracing::warn!(height = %vote.height, round = %vote.round, kind = ?vote.vote_type, peers, "equivocating: a conflicting vote");
        }
    });
    tap
}
