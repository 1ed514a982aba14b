//! A small chain driver for the ledger tests: named keys, blocks built by `build_block` and then
//! applied through `apply_block`, and a check on every rejection that it changed nothing.

#![allow(dead_code)]

use std::collections::BTreeMap;

use pot_protocol::genesis::{Coordinator, GenesisBalance, GenesisStake};
use pot_protocol::tx::{Role, TxBody};
use pot_protocol::{
    Address, Amount, Genesis, Hash, Params, ProposerKey, SecretKey, SignedTx, State, Tx, TxCtx,
    TxError, apply_tx, begin_block, build_block,
};

pub const CHAIN: &str = "pot-test";

pub struct Chain {
    pub state: State,
    keys: BTreeMap<String, SecretKey>,
    pub time_ms: u64,
    queued: Vec<SignedTx>,
    pub genesis: Genesis,
    /// Every task that has ended, as a node's store keeps them (state drops them).
    pub archive: BTreeMap<pot_protocol::tx::TaskId, pot_protocol::state::Task>,
}

/// A deterministic key per name.
pub fn key(name: &str) -> SecretKey {
    SecretKey::from_seed(Hash::digest(name.as_bytes()).0)
}

pub fn addr(name: &str) -> Address {
    key(name).address()
}

/// The test chains' one coordinator, which proposes every block.
pub fn proposer() -> ProposerKey {
    ProposerKey::new(&key("coordinator"))
}

impl Chain {
    pub fn new(params: Params, balances: &[(&str, u64)], stakes: &[(&str, Role, u64)]) -> Chain {
        let genesis = Genesis {
            chain_id: CHAIN.into(),
            genesis_time_ms: 1_000_000,
            params,
            balances: balances
                .iter()
                .map(|(n, a)| GenesisBalance {
                    address: addr(n),
                    amount: Amount(*a),
                })
                .collect(),
            stakes: stakes
                .iter()
                .map(|(n, r, a)| GenesisStake {
                    address: addr(n),
                    role: *r,
                    amount: Amount(*a),
                })
                .collect(),
            coordinators: vec![Coordinator::for_key(&key("coordinator"))],
        };
        genesis.validate().expect("test genesis is valid");
        let mut keys = BTreeMap::new();
        for n in balances
            .iter()
            .map(|b| b.0)
            .chain(stakes.iter().map(|s| s.0))
        {
            keys.insert(n.to_string(), key(n));
        }
        Chain {
            state: State::from_genesis(&genesis),
            keys,
            time_ms: 1_000_000,
            queued: Vec::new(),
            genesis,
            archive: BTreeMap::new(),
        }
    }

    pub fn height(&self) -> u64 {
        self.state.height()
    }

    /// Sign `body` as `name` with the next nonce, counting transactions already queued.
    pub fn sign(&self, name: &str, body: TxBody) -> SignedTx {
        let k = key(name);
        let pending = self
            .queued
            .iter()
            .filter(|t| t.tx.signer == k.address())
            .count() as u64;
        Tx {
            chain_id: CHAIN.into(),
            signer: k.address(),
            nonce: self.state.account(&k.address()).nonce + pending,
            fee: self.state.params.tx_fee,
            body,
        }
        .sign(&k)
    }

    /// Queue a transaction for the next block.
    pub fn queue(&mut self, name: &str, body: TxBody) {
        let stx = self.sign(name, body);
        self.queued.push(stx);
    }

    /// Build a block from the queue, apply it through `apply_block`, and return what the
    /// proposer rejected.
    pub fn block(&mut self) -> Vec<(Hash, TxError)> {
        self.time_ms += 1_000;
        let txs = std::mem::take(&mut self.queued);
        let built = build_block(&self.state, &proposer(), self.time_ms, txs);
        let next =
            pot_protocol::apply_block(&self.state, &built.block).expect("built block applies");
        assert_eq!(next, built.state, "builder and applier agree");
        self.state = next;
        for t in &self.state.ended {
            self.archive.insert(t.id, t.clone());
        }
        built.rejected
    }

    /// Produce empty blocks until the tip is `height`.
    pub fn advance_to(&mut self, height: u64) {
        assert!(self.height() <= height, "already past {height}");
        while self.height() < height {
            let rejected = self.block();
            assert!(rejected.is_empty(), "{rejected:?}");
        }
    }

    /// Submit one transaction in a block of its own. A rejection is checked to leave the state
    /// exactly as it was, and the block still advances the height.
    pub fn try_tx(&mut self, name: &str, body: TxBody) -> Result<(), TxError> {
        let stx = self.sign(name, body);
        self.try_signed(stx)
    }

    /// What applying `body` signed by `name` in the next block would give, without making a
    /// block (the state is left as it is).
    pub fn probe(&self, name: &str, body: TxBody) -> Result<(), TxError> {
        let stx = self.sign(name, body);
        let height = self.height() + 1;
        let mut probe = self.state.clone();
        let beacon =
            pot_protocol::beacon::prove(&proposer().vrf, CHAIN, height, &self.state.tip.beacon).1;
        begin_block(&mut probe, height, self.time_ms + 1_000, beacon);
        let ctx = TxCtx {
            height,
            time_ms: self.time_ms + 1_000,
            index: 0,
        };
        apply_tx(&mut probe, &ctx, &stx)
    }

    pub fn try_signed(&mut self, stx: SignedTx) -> Result<(), TxError> {
        assert!(self.queued.is_empty());
        let height = self.height() + 1;
        let mut probe = self.state.clone();
        let beacon =
            pot_protocol::beacon::prove(&proposer().vrf, CHAIN, height, &self.state.tip.beacon).1;
        begin_block(&mut probe, height, self.time_ms + 1_000, beacon);
        let before = probe.clone();
        let ctx = TxCtx {
            height,
            time_ms: self.time_ms + 1_000,
            index: 0,
        };
        let direct = apply_tx(&mut probe, &ctx, &stx);
        if direct.is_err() {
            assert_eq!(probe, before, "a rejected transaction changed the state");
        }
        self.queued.push(stx);
        let rejected = self.block();
        match (&direct, rejected.first()) {
            (Ok(()), None) => {}
            (Err(e), Some((_, e2))) => assert_eq!(e, e2),
            other => panic!("apply_tx and build_block disagree: {other:?}"),
        }
        direct
    }

    /// Like `try_tx`, expecting success.
    pub fn ok(&mut self, name: &str, body: TxBody) {
        if let Err(e) = self.try_tx(name, body.clone()) {
            panic!("{name}: {} rejected: {e}", body.kind());
        }
    }

    /// Queue several transactions into one block and expect all of them to be included.
    pub fn all_ok(&mut self, txs: Vec<(&str, TxBody)>) {
        for (name, body) in txs {
            self.queue(name, body);
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
    }

    pub fn balance(&self, name: &str) -> u64 {
        self.state.balance(&addr(name)).0
    }

    pub fn bonded(&self, name: &str, role: Role) -> u64 {
        self.state
            .stakes
            .get(&(addr(name), role))
            .map(|s| s.total().0)
            .unwrap_or(0)
    }

    pub fn assert_supply_conserved(&self) {
        assert_eq!(
            self.state.held_supply(),
            self.state.expected_supply(),
            "supply: held != genesis + minted - burned ({:?})",
            self.state.supply
        );
    }
}

// ---- Task fixtures ----

use pot_protocol::Fixed;
use pot_protocol::state::Task;
use pot_protocol::tx::{
    Claim, DatasetRef, HyperRange, HyperValue, InvalidReason, LossKind, MetricKind, Optimizer,
    Report, SegmentResult, TaskId, TaskSpec, Verdict, Verification, Windows, claim_commitment,
    eval_commitment, report_commitment, task_id,
};

pub fn spec() -> TaskSpec {
    TaskSpec {
        model: "mlp:64,32".into(),
        dataset: DatasetRef::new("builtin:digits", Hash::digest(b"digits train split")),
        optimizer: Optimizer::Sgd,
        loss: LossKind::CrossEntropy,
        hyper: vec![
            HyperRange {
                name: "lr".into(),
                min: Fixed(1_000),
                max: Fixed(500_000),
                default: Fixed(50_000),
            },
            HyperRange {
                name: "momentum".into(),
                min: Fixed(0),
                max: Fixed(990_000),
                default: Fixed(900_000),
            },
        ],
        batch_size: 32,
        steps: 100,
        checkpoint_interval: 10,
        seed: 7,
        holdout_per_mille: 200,
        metric: MetricKind::Accuracy,
        verification: Verification {
            replay_tolerance: Fixed(0),
            optimizer_tolerance: Fixed(0),
            top_q: 3,
            samples: 0,
            cpu_threads: 1,
        },
    }
}

pub fn windows(w: u32) -> Windows {
    Windows {
        commit: w,
        reveal: w,
        eval_reveal: w,
        report_commit: w,
        report_reveal: w,
        challenge: w,
        challenge_reveal: w,
        vote: w,
        vote_reveal: w,
    }
}

pub fn eval_set() -> DatasetRef {
    DatasetRef::new(
        "https://example.invalid/eval.safetensors",
        Hash::digest(b"hidden eval set"),
    )
}

pub fn eval_salt() -> Hash {
    Hash::digest(b"client salt")
}

/// A claim whose model and checkpoint root derive from `run` (two miners with the same `run`
/// reveal the same artifacts: a copy).
pub fn claim(run: &str) -> Claim {
    Claim {
        model_hash: Hash::digest(format!("{run} model").as_bytes()),
        checkpoint_root: Hash::digest(format!("{run} checkpoints").as_bytes()),
        steps: 100,
        hyper: vec![
            HyperValue {
                name: "lr".into(),
                value: Fixed(50_000),
            },
            HyperValue {
                name: "momentum".into(),
                value: Fixed(900_000),
            },
        ],
        artifacts: format!("http://{run}.miners.invalid/artifacts"),
    }
}

pub fn salt(who: &str) -> Hash {
    Hash::digest(format!("salt of {who}").as_bytes())
}

pub fn valid_report(segments: &[u32], metric: i64) -> Report {
    Report {
        verdict: Verdict::Valid,
        metric: Fixed(metric),
        init_ok: true,
        final_ok: true,
        segments: segments
            .iter()
            .map(|&index| SegmentResult { index, ok: true })
            .collect(),
    }
}

pub fn invalid_report(segments: &[u32], reason: InvalidReason) -> Report {
    let failing = segments.first().copied();
    Report {
        verdict: Verdict::Invalid(reason),
        metric: Fixed(0),
        init_ok: reason != InvalidReason::InitMismatch,
        final_ok: reason != InvalidReason::FinalMismatch,
        segments: segments
            .iter()
            .map(|&index| SegmentResult {
                index,
                ok: !(reason == InvalidReason::SegmentMismatch && Some(index) == failing),
            })
            .collect(),
    }
}

/// Drives one task through its phases.
impl Chain {
    /// Submit the standard task as `client`; returns its id.
    pub fn submit_task(&mut self, client: &str, bounty: u64, w: u32) -> TaskId {
        let nonce = self.state.account(&addr(client)).nonce;
        self.ok(
            client,
            TxBody::SubmitTask {
                spec: spec(),
                bounty: Amount(bounty),
                eval_commit: eval_commitment(&eval_set(), &eval_salt()),
                windows: windows(w),
            },
        );
        task_id(&addr(client), nonce)
    }

    /// Task `id`, active or ended.
    pub fn task(&self, id: &TaskId) -> &Task {
        self.state
            .tasks
            .get(id)
            .or_else(|| self.archive.get(id))
            .unwrap_or_else(|| panic!("no task {id}"))
    }

    pub fn commit_body(&self, id: &TaskId, miner: &str, c: &Claim) -> TxBody {
        TxBody::CommitClaim {
            task: *id,
            commitment: claim_commitment(id, &addr(miner), c, &salt(miner)),
        }
    }

    pub fn reveal_body(id: &TaskId, miner: &str, c: &Claim) -> TxBody {
        TxBody::RevealClaim {
            task: *id,
            claim: c.clone(),
            salt: salt(miner),
        }
    }

    pub fn eval_body(id: &TaskId) -> TxBody {
        TxBody::RevealEvalSet {
            task: *id,
            eval_set: eval_set(),
            salt: eval_salt(),
        }
    }

    pub fn report_commit_body(id: &TaskId, validator: &str, miner: &str, r: &Report) -> TxBody {
        let s = salt(&format!("{validator} on {miner}"));
        TxBody::CommitReport {
            task: *id,
            miner: addr(miner),
            commitment: report_commitment(id, &addr(miner), &addr(validator), r, &s),
        }
    }

    pub fn report_reveal_body(id: &TaskId, validator: &str, miner: &str, r: &Report) -> TxBody {
        TxBody::RevealReport {
            task: *id,
            miner: addr(miner),
            report: r.clone(),
            salt: salt(&format!("{validator} on {miner}")),
        }
    }

    /// One round of reports: every `(validator, miner, report)` committed in one block, then,
    /// once the commit window has closed, revealed in one block except those of `withheld`.
    pub fn report_round(
        &mut self,
        id: &TaskId,
        reports: &[(&str, &str, Report)],
        withheld: &[&str],
    ) {
        for (v, m, r) in reports {
            self.queue(v, Self::report_commit_body(id, v, m, r));
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
        self.advance_to(self.task(id).schedule.report_commit_end);
        for (v, m, r) in reports.iter().filter(|(v, ..)| !withheld.contains(v)) {
            self.queue(v, Self::report_reveal_body(id, v, m, r));
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
    }

    /// Challenges by `challenger`, one per dispute: committed in one block now (the task must be
    /// in its challenge window), then revealed in one block once that window has closed.
    /// Returns their indices.
    pub fn challenge_round(
        &mut self,
        id: &TaskId,
        challenger: &str,
        disputes: &[pot_protocol::tx::Dispute],
    ) -> Vec<u32> {
        let first = self.task(id).challenges.len() as u32;
        for (k, d) in disputes.iter().enumerate() {
            let s = salt(&format!("{challenger} challenge {}", first + k as u32));
            let commitment = pot_protocol::tx::challenge_commitment(id, &addr(challenger), d, &s);
            self.queue(
                challenger,
                TxBody::Challenge {
                    task: *id,
                    commitment,
                },
            );
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
        self.advance_to(self.task(id).schedule.challenge_end);
        let indices: Vec<u32> = (first..first + disputes.len() as u32).collect();
        for (i, d) in indices.iter().zip(disputes) {
            self.queue(
                challenger,
                TxBody::RevealChallenge {
                    task: *id,
                    challenge: *i,
                    dispute: *d,
                    salt: salt(&format!("{challenger} challenge {i}")),
                },
            );
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
        indices
    }

    /// The committee of challenge `index`, by test name from `names`.
    pub fn committee<'a>(&self, id: &TaskId, index: u32, names: &[&'a str]) -> Vec<&'a str> {
        self.task(id).challenges[index as usize]
            .committee
            .iter()
            .map(|seat| {
                *names
                    .iter()
                    .find(|n| addr(n) == seat.member)
                    .expect("a committee member among the names given")
            })
            .collect()
    }

    /// Committee votes on challenge `index`: committed in one block once the challenge-reveal
    /// window has closed, revealed in one block once the vote window has, except `withheld`.
    pub fn vote_round(
        &mut self,
        id: &TaskId,
        index: u32,
        votes: &[(&str, bool)],
        withheld: &[&str],
    ) {
        let s = self.task(id).schedule.clone();
        if self.height() < s.challenge_reveal_end {
            self.advance_to(s.challenge_reveal_end);
        }
        let vs = |m: &str| salt(&format!("{m} votes on {index}"));
        for (m, upheld) in votes {
            let commitment =
                pot_protocol::tx::vote_commitment(id, index, &addr(m), *upheld, &vs(m));
            self.queue(
                m,
                TxBody::CommitVote {
                    task: *id,
                    challenge: index,
                    commitment,
                },
            );
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
        self.advance_to(s.vote_end);
        for (m, upheld) in votes.iter().filter(|(m, _)| !withheld.contains(m)) {
            self.queue(
                m,
                TxBody::RevealVote {
                    task: *id,
                    challenge: index,
                    upheld: *upheld,
                    salt: vs(m),
                },
            );
        }
        let rejected = self.block();
        assert!(rejected.is_empty(), "{rejected:?}");
    }

    /// The segments sampled for `validator` on `miner`'s claim.
    pub fn segments(&self, id: &TaskId, validator: &str, miner: &str) -> Vec<u32> {
        self.task(id).claims[&addr(miner)]
            .assignment(&addr(validator))
            .unwrap_or_else(|| panic!("{validator} is not assigned to {miner}"))
            .segments
            .clone()
    }

    /// The validators assigned to `miner`'s claim, ascending.
    pub fn assigned(&self, id: &TaskId, miner: &str) -> Vec<Address> {
        self.task(id).claims[&addr(miner)]
            .assigned
            .iter()
            .map(|a| a.validator)
            .collect()
    }

    /// The outcome of finalized task `id`.
    pub fn outcome(&self, id: &TaskId) -> &pot_protocol::state::Outcome {
        match &self.ended_task(id).status {
            pot_protocol::state::TaskStatus::Finalized(o) => o,
            other => panic!("task not finalized: {other:?}"),
        }
    }

    /// A task that has ended (it left the state in the block that ended it).
    pub fn ended_task(&self, id: &TaskId) -> &Task {
        assert!(
            !self.state.tasks.contains_key(id),
            "task {id} is still active"
        );
        self.archive
            .get(id)
            .unwrap_or_else(|| panic!("task {id} never ended"))
    }
}
