//! The miner's decisions, as a pure function of what the chain says and what this miner keeps
//! on disk: which open tasks to take, when to commit and reveal, when to let a task go. Level
//! triggered: whether a commitment or a reveal landed is read from the chain every time, never
//! remembered, so a restarted miner decides from where things really are. The loop that acts on
//! the decisions (training, transactions, serving artifacts) is I/O at the edge.

use std::collections::BTreeMap;

use pot_protocol::api::TaskInfo;
use pot_protocol::state::{Task, TaskStatus};
use pot_protocol::task::{HyperValue, TaskSpec};
use pot_protocol::tx::{Claim, TaskId};
use pot_protocol::units::Fixed;
use pot_protocol::{Address, Amount, Hash, Height, Phase};

/// What the chain says about one task, as far as a miner cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub id: TaskId,
    pub client: Address,
    pub bounty: Amount,
    /// The phase a transaction sent now would meet.
    pub phase: Phase,
    /// The last height of the commit window.
    pub commit_end: Height,
    /// When the task was finalized or failed.
    pub ended_at: Option<Height>,
    /// This miner's claim on it, as the chain has it.
    pub mine: OnChain,
}

/// This miner's claim on a task, as the chain has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnChain {
    Nothing,
    Committed,
    Revealed,
}

impl TaskView {
    pub fn of(info: &TaskInfo, me: &Address) -> TaskView {
        TaskView::of_task(&info.task, info.phase, me)
    }

    /// The view of `t`, in `phase`, for miner `me`.
    pub fn of_task(t: &Task, phase: Phase, me: &Address) -> TaskView {
        let mine = match t.claims.get(me) {
            None => OnChain::Nothing,
            Some(c) if c.claim.is_some() => OnChain::Revealed,
            Some(_) => OnChain::Committed,
        };
        let ended_at = match &t.status {
            TaskStatus::Active => None,
            TaskStatus::Finalized(o) => Some(o.finalized_at),
            TaskStatus::Failed { at, .. } => Some(*at),
        };
        TaskView {
            id: t.id,
            client: t.client,
            bounty: t.bounty,
            phase,
            commit_end: t.schedule.commit_end,
            ended_at,
            mine,
        }
    }
}

/// How a miner picks the hyper-parameters of a claim within the task's ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HyperSearch {
    /// The task's defaults: what its client expects to work.
    #[default]
    Defaults,
    /// One draw from each range (random search, one trial per claim), seeded by the claim's
    /// secret salt so that rivals cannot predict it: log-uniform for a learning rate or weight
    /// decay whose range is positive (their useful values span decades), uniform otherwise.
    Random,
}

/// The hyper-parameters of a claim with `salt`, as `search` picks them; always inside the
/// task's ranges.
pub fn search_hyper(spec: &TaskSpec, search: HyperSearch, salt: &Hash) -> Vec<HyperValue> {
    match search {
        HyperSearch::Defaults => spec.default_hyper(),
        HyperSearch::Random => spec
            .hyper
            .iter()
            .map(|r| {
                let u = Hash::tagged("pot/hyper-draw", &[salt.as_bytes(), r.name.as_bytes()])
                    .low_u64() as f64
                    / (u64::MAX as f64 + 1.0);
                let (lo, hi) = (r.min.to_f64(), r.max.to_f64());
                let log_scale = matches!(r.name.as_str(), "lr" | "weight_decay") && lo > 0.0;
                let x = if log_scale {
                    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
                } else {
                    lo + u * (hi - lo)
                };
                let value = Fixed((x * Fixed::SCALE as f64).round() as i64).clamp(r.min, r.max);
                HyperValue {
                    name: r.name.clone(),
                    value,
                }
            })
            .collect(),
    }
}

/// A task this miner took (kept by task id), as it keeps it on disk: the chain cannot know
/// the salt or, before the reveal, the claim.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub salt: Hash,
    /// The hyper-parameters chosen within the task's ranges.
    #[serde(default)]
    pub hyper: Vec<pot_protocol::task::HyperValue>,
    /// The claim, once training has finished.
    pub claim: Option<Claim>,
    /// Why training could not be done (a dataset that does not match its hash, a model this
    /// node cannot build): the task is not taken again.
    #[serde(default)]
    pub failed: Option<String>,
}

/// The GPU for a new training job on a machine with `count` GPUs, given those the jobs in
/// progress hold: the lowest-numbered free one, else the least busy (more slots than GPUs).
pub fn pick_gpu(count: usize, held: &[usize]) -> usize {
    (0..count.max(1))
        .min_by_key(|g| (held.iter().filter(|h| *h == g).count(), *g))
        .unwrap_or(0)
}

/// Collateral this miner has promised that the chain has not reserved yet: the ledger reserves
/// a claim's collateral at its commitment, so every job taken, not failed and not yet committed
/// still needs its share of the free stake. `task` gives a job's collateral and whether this
/// miner's commitment is on chain (`None`: the task is gone).
pub fn unreserved_collateral(
    jobs: &BTreeMap<TaskId, Job>,
    task: impl Fn(&TaskId) -> Option<(Amount, bool)>,
) -> Amount {
    Amount(
        jobs.iter()
            .filter(|(_, j)| j.failed.is_none())
            .filter_map(|(id, _)| task(id))
            .filter(|(_, committed)| !committed)
            .map(|(collateral, _)| collateral.0)
            .sum(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take this task: choose a salt and hyper-parameters, and start training.
    Take(TaskId),
    /// Send the commitment to the finished claim.
    Commit(TaskId),
    /// Reveal the committed claim.
    Reveal(TaskId),
    /// Let the job go (and its artifacts, once the retention window has passed).
    Drop(TaskId, Why),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its window closed before this miner got there.
    TooLate,
    /// The task ended and the retention window has passed.
    Ended,
    /// The chain no longer shows it.
    Gone,
    /// Training failed and the commit window is over.
    Failed,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Tasks trained at once (one per GPU, or per CPU slot).
    pub slots: usize,
    /// A task is taken only with at least this many blocks of its commit window left.
    pub min_commit_blocks: u64,
    /// Artifacts are kept this many blocks after the task ends (validators and challengers
    /// may still fetch them).
    pub retention_blocks: u64,
    /// Take no new task (the operator is scaling this miner down).
    pub draining: bool,
}

/// What to do now, at `height`, given the tasks on chain and this miner's jobs.
pub fn plan(
    me: &Address,
    height: Height,
    tasks: &[TaskView],
    jobs: &BTreeMap<TaskId, Job>,
    limits: &Limits,
) -> Vec<Action> {
    let by_id: BTreeMap<TaskId, &TaskView> = tasks.iter().map(|t| (t.id, t)).collect();
    let mut actions = Vec::new();
    for (id, job) in jobs {
        let Some(t) = by_id.get(id) else {
            actions.push(Action::Drop(*id, Why::Gone));
            continue;
        };
        if job.failed.is_some() {
            if t.ended_at.is_some() || t.phase > Phase::Commit {
                actions.push(Action::Drop(*id, Why::Failed));
            }
            continue;
        }
        let action = match (t.mine, &job.claim, t.phase) {
            // Training: nothing to do until it ends, unless the window closed meanwhile.
            (OnChain::Nothing, None, Phase::Commit) => None,
            (OnChain::Nothing, Some(_), Phase::Commit) => Some(Action::Commit(*id)),
            (OnChain::Nothing, _, _) => Some(Action::Drop(*id, Why::TooLate)),
            (OnChain::Committed, _, Phase::Commit) => None,
            (OnChain::Committed, Some(_), Phase::Reveal) => Some(Action::Reveal(*id)),
            // Committed but the claim is lost, or the reveal window passed: the deposit is.
            (OnChain::Committed, _, _) => Some(Action::Drop(*id, Why::TooLate)),
            (OnChain::Revealed, _, _) => t
                .ended_at
                .filter(|&end| height >= end + limits.retention_blocks)
                .map(|_| Action::Drop(*id, Why::Ended)),
        };
        actions.extend(action);
    }
    if limits.draining {
        return actions;
    }
    let training = jobs
        .values()
        .filter(|j| j.claim.is_none() && j.failed.is_none())
        .count();
    let free = limits.slots.saturating_sub(training);
    let mut open: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| t.phase == Phase::Commit && t.mine == OnChain::Nothing)
        .filter(|t| t.client != *me && !jobs.contains_key(&t.id))
        .filter(|t| t.commit_end.saturating_sub(height) >= limits.min_commit_blocks)
        .collect();
    // The best-paid first; ties in an order of this miner's own (a hash of its address and the
    // task), so that miners deciding at the same height spread over equal tasks instead of all
    // piling onto one; reproducible for each miner.
    let rank = |t: &TaskView| Hash::of_value("pot/miner-order", &(me, &t.id));
    open.sort_by(|a, b| b.bounty.cmp(&a.bounty).then(rank(a).cmp(&rank(b))));
    actions.extend(open.into_iter().take(free).map(|t| Action::Take(t.id)));
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        slots: 2,
        min_commit_blocks: 10,
        retention_blocks: 100,
        draining: false,
    };

    fn me() -> Address {
        pot_protocol::SecretKey::from_seed([1; 32]).address()
    }

    fn task(n: u8, bounty: u64) -> TaskView {
        TaskView {
            id: Hash::digest(&[n]),
            client: pot_protocol::SecretKey::from_seed([9; 32]).address(),
            bounty: Amount(bounty),
            phase: Phase::Commit,
            commit_end: 50,
            ended_at: None,
            mine: OnChain::Nothing,
        }
    }

    fn job(t: &TaskView, trained: bool) -> (TaskId, Job) {
        let claim = trained.then(|| Claim {
            model_hash: Hash::ZERO,
            checkpoint_root: Hash::ZERO,
            steps: 100,
            hyper: Vec::new(),
            artifacts: String::new(),
        });
        (
            t.id,
            Job {
                salt: Hash::ZERO,
                hyper: Vec::new(),
                claim,
                failed: None,
            },
        )
    }

    #[test]
    fn each_training_job_gets_a_gpu_of_its_own_while_there_are_free_ones() {
        assert_eq!(pick_gpu(4, &[]), 0);
        assert_eq!(pick_gpu(4, &[0, 2]), 1);
        assert_eq!(pick_gpu(4, &[0, 1, 2]), 3);
        // All taken: the least busy, lowest first.
        assert_eq!(pick_gpu(2, &[0, 1, 0]), 1);
        assert_eq!(pick_gpu(1, &[0]), 0);
        assert_eq!(pick_gpu(0, &[]), 0);
    }

    #[test]
    fn collateral_promised_to_uncommitted_jobs_is_not_free() {
        let t = |n: u8| task(n, 100);
        let mut jobs: BTreeMap<TaskId, Job> =
            [job(&t(1), true), job(&t(2), false), job(&t(3), false)]
                .into_iter()
                .collect();
        jobs.get_mut(&t(3).id).unwrap().failed = Some("no".into());
        // Task 1 is committed (reserved on chain), task 2 not yet, task 3 failed.
        let promised = unreserved_collateral(&jobs, |id| Some((Amount(500), *id == t(1).id)));
        assert_eq!(promised, Amount(500));
        // A task the chain no longer has promises nothing.
        assert_eq!(unreserved_collateral(&jobs, |_| None), Amount(0));
    }

    /// The digits example's spec with a learning-rate range two decades wide.
    fn searchable_spec() -> TaskSpec {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/digits-mlp.yaml"),
        )
        .unwrap()
        .replace(
            "min: 0.01, max: 0.1, default: 0.05",
            "min: 0.001, max: 0.1, default: 0.05",
        );
        crate::train::task::TaskFile::parse(&text).unwrap().spec
    }

    #[test]
    fn random_search_draws_inside_the_ranges_from_the_salt_and_lr_on_a_log_scale() {
        let spec = searchable_spec();
        assert_eq!(
            search_hyper(&spec, HyperSearch::Defaults, &Hash([1; 32])),
            spec.default_hyper()
        );
        let draws: Vec<Vec<HyperValue>> = (0..400u32)
            .map(|i| {
                let salt = Hash::tagged("test", &[&i.to_le_bytes()]);
                let h = search_hyper(&spec, HyperSearch::Random, &salt);
                assert_eq!(
                    h,
                    search_hyper(&spec, HyperSearch::Random, &salt),
                    "deterministic"
                );
                spec.check_hyper(&h).unwrap();
                h
            })
            .collect();
        let lr: Vec<f64> = draws.iter().map(|h| h[0].value.to_f64()).collect();
        let distinct: std::collections::BTreeSet<i64> =
            draws.iter().map(|h| h[0].value.0).collect();
        assert!(distinct.len() > 390, "salts give different draws");
        // Log-uniform on [0.001, 0.1]: half the draws below 0.01 (uniform would give 9 %).
        let below = lr.iter().filter(|&&x| x < 0.01).count() as f64 / lr.len() as f64;
        assert!((0.4..0.6).contains(&below), "{below}");
        // Momentum is uniform on [0, 0.95]: about half below 0.475.
        let m: Vec<f64> = draws.iter().map(|h| h[1].value.to_f64()).collect();
        let below = m.iter().filter(|&&x| x < 0.475).count() as f64 / m.len() as f64;
        assert!((0.4..0.6).contains(&below), "{below}");
    }

    #[test]
    fn the_best_paid_open_tasks_are_taken_up_to_the_free_slots() {
        let tasks = [task(1, 10), task(2, 30), task(3, 20)];
        let actions = plan(&me(), 10, &tasks, &BTreeMap::new(), &LIMITS);
        assert_eq!(
            actions,
            vec![Action::Take(tasks[1].id), Action::Take(tasks[2].id)]
        );
        // One slot busy training: one more.
        let jobs = BTreeMap::from([job(&tasks[1], false)]);
        let actions = plan(&me(), 10, &tasks, &jobs, &LIMITS);
        assert_eq!(actions, vec![Action::Take(tasks[2].id)]);
        // Equal bounties: another miner's order differs, so they do not all take one task.
        let equal: Vec<TaskView> = (0..8).map(|n| task(n, 10)).collect();
        let one = |who: u8| {
            let m = pot_protocol::SecretKey::from_seed([who; 32]).address();
            plan(
                &m,
                10,
                &equal,
                &BTreeMap::new(),
                &Limits { slots: 1, ..LIMITS },
            )
        };
        assert!(
            (2..6).any(|who| one(who) != one(1)),
            "every miner takes the same task"
        );
        assert_eq!(one(3), one(3));
        // Draining: none.
        let draining = Limits {
            draining: true,
            ..LIMITS
        };
        assert!(plan(&me(), 10, &tasks, &BTreeMap::new(), &draining).is_empty());
    }

    #[test]
    fn tasks_too_close_to_their_deadline_or_its_own_are_not_taken() {
        let mut own = task(1, 100);
        own.client = me();
        let late = task(2, 50);
        let tasks = [own, late, task(3, 1)];
        // At 45 the late one has 5 blocks left, fewer than the 10 asked for; all do.
        assert!(plan(&me(), 45, &tasks, &BTreeMap::new(), &LIMITS).is_empty());
        assert_eq!(
            plan(&me(), 10, &tasks, &BTreeMap::new(), &LIMITS),
            vec![Action::Take(tasks[1].id), Action::Take(tasks[2].id)]
        );
    }

    #[test]
    fn a_claim_is_committed_then_revealed_as_the_chain_moves() {
        let mut t = task(1, 10);
        let jobs = BTreeMap::from([job(&t, true)]);
        let single = [t.clone()];
        assert_eq!(
            plan(&me(), 20, &single, &jobs, &LIMITS)[0],
            Action::Commit(t.id)
        );
        t.mine = OnChain::Committed;
        assert!(!plan(&me(), 20, &[t.clone()], &jobs, &LIMITS).contains(&Action::Commit(t.id)));
        t.phase = Phase::Reveal;
        assert_eq!(
            plan(&me(), 55, &[t.clone()], &jobs, &LIMITS),
            vec![Action::Reveal(t.id)]
        );
        // Revealed: kept (served) until the task ended and the retention window passed.
        t.mine = OnChain::Revealed;
        t.phase = Phase::Finalized;
        t.ended_at = Some(200);
        assert!(plan(&me(), 299, &[t.clone()], &jobs, &LIMITS).is_empty());
        assert_eq!(
            plan(&me(), 300, &[t.clone()], &jobs, &LIMITS),
            vec![Action::Drop(t.id, Why::Ended)]
        );
    }

    #[test]
    fn a_missed_window_lets_the_job_go() {
        let mut t = task(1, 10);
        t.phase = Phase::Reveal;
        // Still training when the commit window closed.
        let training = BTreeMap::from([job(&t, false)]);
        assert_eq!(
            plan(&me(), 60, &[t.clone()], &training, &LIMITS),
            vec![Action::Drop(t.id, Why::TooLate)]
        );
        // Committed, but the reveal window closed.
        t.mine = OnChain::Committed;
        t.phase = Phase::EvalReveal;
        let trained = BTreeMap::from([job(&t, true)]);
        assert_eq!(
            plan(&me(), 70, &[t.clone()], &trained, &LIMITS),
            vec![Action::Drop(t.id, Why::TooLate)]
        );
        // Gone from the chain's view.
        assert_eq!(
            plan(&me(), 70, &[], &trained, &LIMITS),
            vec![Action::Drop(t.id, Why::Gone)]
        );
    }
}
