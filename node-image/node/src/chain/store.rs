//! The node's embedded transactional store (redb) under `--data-dir`: decided blocks with their
//! commit certificates (in the protocol's own `Commit` type, so an engine upgrade never changes
//! stored history; the database carries a format version), the state after the last block,
//! where each transaction landed, and the proposals seen but not yet decided (the engine may
//! ask for them again after a crash).
//!
//! The state is stored incrementally: one row per entry of each of its keyed maps, plus one row
//! for the rest, and a block writes only the rows it changed (found by diffing the state
//! before and after it, which skips everything the two share), so its cost grows with its
//! transactions, not with the size of the state. Everything a decided height changes is
//! written in one transaction, so a crash leaves either the old height or the new one, never
//! half of it.

use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use pot_protocol::commit::Commit;
use pot_protocol::encoding;
use pot_protocol::merkle_map::{Change, MerkleMap, TrieKey};
use pot_protocol::state::{StateMaps, StateScalars};
use pot_protocol::{Block, Hash, State};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// height -> the block's commit certificate (`pot_protocol::commit::Commit`, borsh).
const COMMITS: TableDefinition<u64, &[u8]> = TableDefinition::new("commits");
const TX_INDEX: TableDefinition<&[u8; 32], (u64, u32)> = TableDefinition::new("tx_index");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (height, round, value id) -> the proposal record the consensus layer wrote.
const UNDECIDED: TableDefinition<(u64, u32, &[u8; 32]), &[u8]> = TableDefinition::new("undecided");
/// task id -> the task as it ended (finalized or failed), borsh: the ledger drops ended tasks
/// from its state, and queries read them here.
const ENDED_TASKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("ended_tasks");

/// The state's keyed maps, a row per entry: borsh key -> borsh value.
const STATE_ACCOUNTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state_accounts");
const STATE_STAKES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state_stakes");
const STATE_UNBONDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state_unbonding");
const STATE_TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state_tasks");
const STATE_DEADLINES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state_deadlines");
const STATE_REPUTATION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state_reputation");

const META_GENESIS: &str = "genesis_hash";
/// The state less its maps (`StateScalars`, borsh).
const META_STATE: &str = "state";
const META_FORMAT: &str = "format";

/// The layout of the tables above. A database of another format is refused, never misread.
/// 4: tasks carry the one task format (`pot_protocol::task::TaskSpec`).
pub const FORMAT: u32 = 4;

/// Why the store failed. Corruption is reported, never papered over.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Db(#[from] redb::Error),
    #[error("creating the data directory {dir}: {error}")]
    Io {
        dir: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("data directory belongs to chain with genesis {found}, not {expected}")]
    OtherChain { expected: Hash, found: Hash },
    #[error(
        "the chain database is in format {found}, and this pot-node reads format {FORMAT}; \
         sync a fresh data directory from the other coordinators"
    )]
    OtherFormat { found: u32 },
    #[error("stored {what} does not decode: {error}")]
    Corrupt {
        what: &'static str,
        error: encoding::DecodeError,
    },
    #[error("the stored {what} row with key {key} does not decode: {error}")]
    CorruptRow {
        what: &'static str,
        key: String,
        error: encoding::DecodeError,
    },
}

macro_rules! via_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
via_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub struct Store {
    db: Database,
}

impl Store {
    /// Open (or create) the store for the chain with this genesis hash.
    pub fn open(dir: &Path, genesis_hash: Hash) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::Io {
            dir: dir.to_path_buf(),
            error,
        })?;
        let db = Database::create(dir.join("chain.redb"))?;
        let w = db.begin_write()?;
        {
            let mut meta = w.open_table(META)?;
            let found = meta.get(META_GENESIS)?.map(|v| {
                let mut h = [0u8; 32];
                h.copy_from_slice(v.value());
                Hash(h)
            });
            match found {
                Some(found) if found != genesis_hash => {
                    return Err(StoreError::OtherChain {
                        expected: genesis_hash,
                        found,
                    });
                }
                Some(_) => {
                    let format = meta
                        .get(META_FORMAT)?
                        .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
                        .map(u32::from_le_bytes)
                        // Databases from before the version was recorded.
                        .unwrap_or(1);
                    if format != FORMAT {
                        return Err(StoreError::OtherFormat { found: format });
                    }
                }
                None => {
                    meta.insert(META_GENESIS, genesis_hash.as_bytes().as_slice())?;
                    meta.insert(META_FORMAT, FORMAT.to_le_bytes().as_slice())?;
                }
            }
            // Create the other tables so readers never meet a missing one.
            w.open_table(BLOCKS)?;
            w.open_table(COMMITS)?;
            w.open_table(TX_INDEX)?;
            w.open_table(UNDECIDED)?;
            w.open_table(ENDED_TASKS)?;
            for table in [
                STATE_ACCOUNTS,
                STATE_STAKES,
                STATE_UNBONDING,
                STATE_TASKS,
                STATE_DEADLINES,
                STATE_REPUTATION,
            ] {
                w.open_table(table)?;
            }
        }
        w.commit()?;
        Ok(Store { db })
    }

    /// The stored state: after the last decided block, or the genesis state if no block was
    /// decided yet; `None` before [`Store::init_state`].
    pub fn load_state(&self) -> Result<Option<State>, StoreError> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        let Some(bytes) = meta.get(META_STATE)? else {
            return Ok(None);
        };
        let scalars: StateScalars = decode(bytes.value(), "state")?;
        let maps = StateMaps {
            accounts: read_map(&r.open_table(STATE_ACCOUNTS)?, "account")?,
            stakes: read_map(&r.open_table(STATE_STAKES)?, "stake")?,
            unbonding_queue: read_map(&r.open_table(STATE_UNBONDING)?, "unbonding")?,
            tasks: read_map(&r.open_table(STATE_TASKS)?, "task")?,
            task_deadlines: read_map(&r.open_table(STATE_DEADLINES)?, "task deadline")?,
            reputation: read_map(&r.open_table(STATE_REPUTATION)?, "reputation")?,
        };
        Ok(Some(State::from_parts(scalars, maps)))
    }

    /// Store the genesis state in full (a new data directory).
    pub fn init_state(&self, genesis_state: &State) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        write_state(
            &w,
            &State::from_parts(genesis_state.scalars(), StateMaps::default()),
            genesis_state,
        )?;
        w.commit()?;
        Ok(())
    }

    /// Record a decided block, its certificate and the state after it, atomically; forget the
    /// undecided proposals at or below its height. `prev` is the stored state the block was
    /// applied to: only the rows where `state` differs from it are written.
    pub fn commit(
        &self,
        block: &Block,
        commit: &Commit,
        prev: &State,
        state: &State,
    ) -> Result<(), StoreError> {
        let height = block.header.height;
        assert_eq!(
            prev.tip.height + 1,
            height,
            "a block's rows are written over the state it was applied to"
        );
        let w = self.db.begin_write()?;
        {
            w.open_table(BLOCKS)?
                .insert(height, borsh::to_vec(block).expect("encodes").as_slice())?;
            w.open_table(COMMITS)?
                .insert(height, borsh::to_vec(commit).expect("encodes").as_slice())?;
            let mut index = w.open_table(TX_INDEX)?;
            for (i, tx) in block.txs.iter().enumerate() {
                index.insert(tx.hash().as_bytes(), (height, i as u32))?;
            }
            write_state(&w, prev, state)?;
            let mut ended = w.open_table(ENDED_TASKS)?;
            for task in &state.ended {
                ended.insert(
                    task.id.as_bytes(),
                    borsh::to_vec(task).expect("encodes").as_slice(),
                )?;
            }
            let mut undecided = w.open_table(UNDECIDED)?;
            undecided.retain_in(..=(height, u32::MAX, &[0xff; 32]), |_, _| false)?;
        }
        w.commit()?;
        Ok(())
    }

    /// A task that has ended (finalized or failed), as the block that ended it left it.
    pub fn ended_task(&self, id: &Hash) -> Result<Option<pot_protocol::state::Task>, StoreError> {
        let r = self.db.begin_read()?;
        let Some(bytes) = r.open_table(ENDED_TASKS)?.get(id.as_bytes())? else {
            return Ok(None);
        };
        borsh::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "ended task",
                error: encoding::DecodeError::Malformed(e.to_string()),
            })
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        let r = self.db.begin_read()?;
        let Some(bytes) = r.open_table(BLOCKS)?.get(height)? else {
            return Ok(None);
        };
        borsh::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "block",
                error: encoding::DecodeError::Malformed(e.to_string()),
            })
    }

    /// The encoded block at `height`, as it was stored (what sync sends to a lagging peer).
    pub fn block_bytes(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(BLOCKS)?
            .get(height)?
            .map(|v| v.value().to_vec()))
    }

    /// The commit certificate of the block at `height`.
    pub fn commit_at(&self, height: u64) -> Result<Option<Commit>, StoreError> {
        let r = self.db.begin_read()?;
        let Some(bytes) = r.open_table(COMMITS)?.get(height)? else {
            return Ok(None);
        };
        borsh::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "commit certificate",
                error: encoding::DecodeError::Malformed(e.to_string()),
            })
    }

    /// Height and position of an included transaction.
    pub fn tx_location(&self, hash: &Hash) -> Result<Option<(u64, u32)>, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(TX_INDEX)?
            .get(hash.as_bytes())?
            .map(|v| v.value()))
    }

    /// `tx_location` of each of `hashes`, read in one transaction (a gossip burst's worth).
    pub fn tx_locations(&self, hashes: &[Hash]) -> Result<Vec<Option<(u64, u32)>>, StoreError> {
        let r = self.db.begin_read()?;
        let index = r.open_table(TX_INDEX)?;
        hashes
            .iter()
            .map(|h| Ok(index.get(h.as_bytes())?.map(|v| v.value())))
            .collect()
    }

    /// Write raw bytes where a commit certificate goes (tests of corrupt stores).
    #[cfg(test)]
    pub fn put_raw_commit_for_test(&self, height: u64, bytes: &[u8]) {
        let w = self.db.begin_write().unwrap();
        w.open_table(COMMITS)
            .unwrap()
            .insert(height, bytes)
            .unwrap();
        w.commit().unwrap();
    }

    /// Write a raw row into the accounts table (tests of corrupt stores).
    #[cfg(test)]
    pub fn put_raw_account_for_test(&self, key: &[u8], value: &[u8]) {
        let w = self.db.begin_write().unwrap();
        w.open_table(STATE_ACCOUNTS)
            .unwrap()
            .insert(key, value)
            .unwrap();
        w.commit().unwrap();
    }

    /// Write raw bytes where a block goes (tests of corrupt stores).
    #[cfg(test)]
    pub fn put_raw_block_for_test(&self, height: u64, bytes: &[u8]) {
        let w = self.db.begin_write().unwrap();
        w.open_table(BLOCKS).unwrap().insert(height, bytes).unwrap();
        w.commit().unwrap();
    }

    /// Persist a proposal before telling the engine about it, so that after a crash the node
    /// can answer for it (re-propose the same value, or commit it when the engine decides it).
    pub fn put_undecided(
        &self,
        height: u64,
        round: u32,
        id: &Hash,
        record: &[u8],
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        w.open_table(UNDECIDED)?
            .insert((height, round, id.as_bytes()), record)?;
        w.commit()?;
        Ok(())
    }

    /// Every undecided proposal at `height`: (round, value id, record).
    pub fn undecided_at(&self, height: u64) -> Result<Vec<(u32, Hash, Vec<u8>)>, StoreError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(UNDECIDED)?;
        let mut out = Vec::new();
        for entry in table.range((height, 0, &[0u8; 32])..=(height, u32::MAX, &[0xff; 32]))? {
            let (k, v) = entry?;
            let (_, round, id) = k.value();
            out.push((round, Hash(*id), v.value().to_vec()));
        }
        Ok(out)
    }
}

fn decode<T: BorshDeserialize>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    borsh::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        error: encoding::DecodeError::Malformed(e.to_string()),
    })
}

/// Write `state` over `prev`: its scalars, and the map rows that differ.
fn write_state(w: &redb::WriteTransaction, prev: &State, state: &State) -> Result<(), StoreError> {
    w.open_table(META)?.insert(
        META_STATE,
        borsh::to_vec(&state.scalars()).expect("encodes").as_slice(),
    )?;
    write_changes(
        &mut w.open_table(STATE_ACCOUNTS)?,
        &prev.accounts,
        &state.accounts,
    )?;
    write_changes(
        &mut w.open_table(STATE_STAKES)?,
        &prev.stakes,
        &state.stakes,
    )?;
    write_changes(
        &mut w.open_table(STATE_UNBONDING)?,
        &prev.unbonding_queue,
        &state.unbonding_queue,
    )?;
    write_changes(&mut w.open_table(STATE_TASKS)?, &prev.tasks, &state.tasks)?;
    write_changes(
        &mut w.open_table(STATE_DEADLINES)?,
        &prev.task_deadlines,
        &state.task_deadlines,
    )?;
    write_changes(
        &mut w.open_table(STATE_REPUTATION)?,
        &prev.reputation,
        &state.reputation,
    )?;
    Ok(())
}

fn write_changes<K, V>(
    table: &mut Table<&[u8], &[u8]>,
    old: &MerkleMap<K, V>,
    new: &MerkleMap<K, V>,
) -> Result<(), StoreError>
where
    K: Ord + BorshSerialize,
    V: PartialEq + BorshSerialize,
{
    for change in new.changes_since(old) {
        match change {
            Change::Put(k, v) => {
                table.insert(
                    encoding::encode(k).as_slice(),
                    encoding::encode(v).as_slice(),
                )?;
            }
            Change::Delete(k) => {
                table.remove(encoding::encode(k).as_slice())?;
            }
        }
    }
    Ok(())
}

fn read_map<K, V>(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    what: &'static str,
) -> Result<MerkleMap<K, V>, StoreError>
where
    K: TrieKey + BorshDeserialize,
    V: Clone + BorshDeserialize,
{
    let mut map = MerkleMap::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let corrupt = |e: StoreError| match e {
            StoreError::Corrupt { error, .. } => StoreError::CorruptRow {
                what,
                key: hex::encode(k.value()),
                error,
            },
            other => other,
        };
        map.insert(
            decode(k.value(), what).map_err(corrupt)?,
            decode(v.value(), what).map_err(corrupt)?,
        );
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_of_another_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Hash::digest(b"a");
        drop(Store::open(dir.path(), a).unwrap());
        assert!(Store::open(dir.path(), a).is_ok());
        let err = Store::open(dir.path(), Hash::digest(b"b")).err().unwrap();
        assert!(matches!(err, StoreError::OtherChain { found, .. } if found == a));
    }

    #[test]
    fn a_database_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = Hash::digest(b"g");
        drop(Store::open(dir.path(), g).unwrap());
        {
            let db = Database::create(dir.path().join("chain.redb")).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(META).unwrap().remove(META_FORMAT).unwrap();
            w.commit().unwrap();
        }
        let err = Store::open(dir.path(), g).err().expect("refused");
        assert!(matches!(err, StoreError::OtherFormat { found: 1 }), "{err}");
    }

    /// The height-0 state of a chain with nothing in its genesis.
    fn empty_state() -> State {
        State::from_genesis(&pot_protocol::Genesis {
            chain_id: "t".into(),
            genesis_time_ms: 0,
            params: Default::default(),
            balances: vec![],
            stakes: vec![],
            coordinators: vec![],
        })
    }

    fn block_at(height: u64) -> (Block, Commit) {
        let block = Block {
            header: pot_protocol::BlockHeader {
                height,
                prev_hash: Hash::ZERO,
                time_ms: height,
                proposer: Default::default(),
                vrf_proof: Default::default(),
                beacon: Hash::ZERO,
                tx_root: Hash::ZERO,
                state_root: Hash::ZERO,
            },
            txs: vec![],
        };
        let commit = Commit {
            height,
            round: 0,
            block: block.hash(),
            signatures: vec![],
        };
        (block, commit)
    }

    #[test]
    fn every_map_of_the_state_is_stored_and_loaded_row_by_row() {
        use pot_protocol::state::{Account, Reputation, Stake};
        use pot_protocol::tx::Role;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Hash::digest(b"g")).unwrap();
        let s0 = empty_state();
        store.init_state(&s0).unwrap();
        let (a, b) = (
            pot_protocol::Address([1; 32]),
            pot_protocol::Address([2; 32]),
        );

        let mut s1 = s0.clone();
        s1.tip.height = 1;
        s1.accounts.insert(
            a,
            Account {
                balance: pot_protocol::Amount(5),
                nonce: 1,
            },
        );
        s1.accounts.insert(b, Account::default());
        s1.stakes.insert(
            (a, Role::Miner),
            Stake {
                bonded: pot_protocol::Amount(3),
                ..Default::default()
            },
        );
        s1.unbonding_queue.insert((7, a, Role::Miner), ());
        s1.task_deadlines.insert((9, Hash::digest(b"task")), ());
        s1.reputation.insert(
            b,
            Reputation {
                tasks_won: 2,
                ..Default::default()
            },
        );
        let (block, commit) = block_at(1);
        store.commit(&block, &commit, &s0, &s1).unwrap();
        assert_eq!(store.load_state().unwrap().as_ref(), Some(&s1));

        let mut s2 = s1.clone();
        s2.tip.height = 2;
        s2.accounts.remove(&a);
        s2.stakes.remove(&(a, Role::Miner));
        s2.unbonding_queue.remove(&(7, a, Role::Miner));
        s2.task_deadlines.insert((12, Hash::digest(b"task")), ());
        s2.reputation.get_mut(&b).unwrap().claims_rejected = 1;
        let (block, commit) = block_at(2);
        store.commit(&block, &commit, &s1, &s2).unwrap();
        let loaded = store.load_state().unwrap().unwrap();
        assert_eq!(loaded, s2);
        assert_eq!(loaded.state_root(), s2.state_root());
    }

    #[test]
    fn a_row_that_does_not_decode_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Hash::digest(b"g")).unwrap();
        store.init_state(&empty_state()).unwrap();
        store.put_raw_account_for_test(&[0xab; 32], b"junk");
        let err = store.load_state().expect_err("refused");
        assert!(
            matches!(&err, StoreError::CorruptRow { what: "account", key, .. } if key == &"ab".repeat(32)),
            "{err}"
        );
    }

    #[test]
    fn undecided_proposals_are_kept_per_height_until_a_block_is_decided() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Hash::digest(b"g")).unwrap();
        let (x, y, z) = (Hash::digest(b"x"), Hash::digest(b"y"), Hash::digest(b"z"));
        store.put_undecided(1, 0, &x, b"one").unwrap();
        store.put_undecided(2, 0, &y, b"two").unwrap();
        store.put_undecided(2, 3, &z, b"three").unwrap();
        assert_eq!(
            store.undecided_at(2).unwrap(),
            vec![(0, y, b"two".to_vec()), (3, z, b"three".to_vec())]
        );
        assert_eq!(
            store.undecided_at(1).unwrap(),
            vec![(0, x, b"one".to_vec())]
        );
        let state = empty_state();
        let (block, commit) = block_at(1);
        store.init_state(&state).unwrap();
        store.commit(&block, &commit, &state, &state).unwrap();
        assert!(store.undecided_at(1).unwrap().is_empty());
        assert_eq!(store.undecided_at(2).unwrap().len(), 2);
        assert_eq!(store.block(1).unwrap(), Some(block));
        assert_eq!(store.commit_at(1).unwrap(), Some(commit));
        assert_eq!(store.load_state().unwrap(), Some(state));
    }
}
