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
}

/// Streams a flooding coordinator opens at each round.
pub const FLOOD_STREAMS: u32 = 96;
/// Bytes of junk in each of them.
pub const FLOOD_BYTES: usize = 32 * 1024;

/// The faults a test may inject into one coordinator.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Faults {
    /// Misbehave as a proposer.
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
        Fault::Equivocate | Fault::FloodParts => {}
    }
    block
}
