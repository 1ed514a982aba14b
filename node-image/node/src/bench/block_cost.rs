//! What a coordinator pays per block as the state grows: re-executing a block of transfers
//! (signatures already checked, as for a proposal whose transactions its mempool holds),
//! computing the state root and storing the block with the rows it changed — against what the
//! whole-state design paid on top of execution for the same state: encoding all of it, hashing
//! that, and writing it as one row.

use std::time::Instant;

use pot_protocol::genesis::{Coordinator, GenesisBalance};
use pot_protocol::{
    Address, Amount, Genesis, Hash, ProposerKey, SecretKey, State, Tx, TxBody, apply_block_known,
    build_block,
};
use serde::Serialize;

use crate::chain::Chain;
use crate::chain::mempool::Limits;

#[derive(Serialize)]
pub struct BlockCost {
    pub accounts: usize,
    pub txs_per_block: usize,
    /// Median over the blocks: execute, state root, store (this design).
    pub block_ms: f64,
    /// Median over the blocks: encode the whole state, hash it, write it as one row.
    pub whole_state_ms: f64,
    /// Size of the whole state's encoding.
    pub state_bytes: usize,
}

/// Time `blocks` blocks of `txs` transfers each on a chain whose genesis funds `accounts`
/// accounts.
pub fn block_cost(accounts: usize, txs: usize, blocks: usize) -> anyhow::Result<BlockCost> {
    anyhow::ensure!(accounts >= txs * blocks, "need an account per sender");
    let coordinator = SecretKey::from_seed([7; 32]);
    let senders: Vec<SecretKey> = (0..txs * blocks)
        .map(|i| SecretKey::from_seed(Hash::of_value("bench/sender", &(i as u64)).0))
        .collect();
    let other = |i: usize| Address(Hash::of_value("bench/account", &(i as u64)).0);
    let balances = senders
        .iter()
        .map(|k| k.address())
        .chain((senders.len()..accounts).map(other))
        .map(|address| GenesisBalance {
            address,
            amount: Amount(1_000_000),
        })
        .collect();
    let genesis = Genesis {
        chain_id: "bench".into(),
        genesis_time_ms: 0,
        params: Default::default(),
        balances,
        stakes: vec![],
        coordinators: vec![Coordinator::for_key(&coordinator)],
    };
    let fee = genesis.params.tx_fee;
    let dir = tempfile::tempdir()?;
    let chain = Chain::open(genesis, dir.path(), Limits::default())?;
    let whole = redb::Database::create(dir.path().join("whole-state.redb"))?;
    let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("state");
    let proposer = ProposerKey::new(&coordinator);

    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    let mut state_bytes = 0;
    for b in 0..blocks {
        let state = chain.state();
        let block_txs = senders[b * txs..(b + 1) * txs]
            .iter()
            .enumerate()
            .map(|(j, k)| {
                Tx {
                    chain_id: "bench".into(),
                    signer: k.address(),
                    nonce: 0,
                    fee,
                    body: TxBody::Transfer {
                        to: other(
                            senders.len()
                                + (b * txs + j) * 7919 % (accounts - senders.len()).max(1),
                        ),
                        amount: Amount(1),
                    },
                }
                .sign(k)
            });
        let built = build_block(&state, &proposer, state.tip.time_ms + 1_000, block_txs);
        anyhow::ensure!(built.rejected.is_empty(), "a transfer was rejected");
        let commit = pot_protocol::commit::Commit {
            height: built.block.header.height,
            round: 0,
            block: built.block.hash(),
            signatures: vec![],
        };

        let start = Instant::now();
        let after = apply_block_known(&state, &built.block, |_| true)?;
        chain.commit(&built.block, &commit, Some(after))?;
        ours.push(start.elapsed().as_secs_f64() * 1e3);

        let start = Instant::now();
        state_bytes = whole_state_write(&chain.state(), &whole, table)?;
        reference.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(BlockCost {
        accounts,
        txs_per_block: txs,
        block_ms: median(ours),
        whole_state_ms: median(reference),
        state_bytes,
    })
}

/// The whole-state design's extra work per block: the state encoded in full, the root over that
/// encoding, and the encoding stored as one row.
fn whole_state_write(
    state: &State,
    db: &redb::Database,
    table: redb::TableDefinition<&str, &[u8]>,
) -> anyhow::Result<usize> {
    let bytes = borsh::to_vec(state)?;
    std::hint::black_box(Hash::tagged("pot/state", &[&bytes]));
    let w = db.begin_write()?;
    w.open_table(table)?.insert("state", bytes.as_slice())?;
    w.commit()?;
    Ok(bytes.len())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
