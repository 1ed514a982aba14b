//! `pot-node run --role miner|validator`: a node that follows the chain (checking every commit
//! certificate), serves and fetches artifacts on the swarm, and acts on what the miner's plan
//! and the validator's duties say. Decisions are the pure functions of `miner` and
//! `validator`; this module is their edge: training and replays on blocking threads,
//! transactions one at a time through a coordinator's API, records on disk before anything
//! they protect is sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use libp2p::Multiaddr;
use pot_protocol::api::TxStatus;
use pot_protocol::client::Client;
use pot_protocol::state::State;
use pot_protocol::tx::{
    Claim, Dispute, Fact, Report, Role, TaskId, TxBody, claim_commitment, report_commitment,
    vote_commitment,
};
use pot_protocol::{Address, Amount, Genesis, Hash, SecretKey};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::challenge::{self, ChallengeRef, Rechecked, Vote};
use super::journal::Journal;
use super::miner::{self, Action, Job, Limits, TaskView};
use super::retention;
use super::status::NodeStatus;
use super::validator::{self, Assigned, Duty, Filed};
use crate::artifacts::net::ArtifactNet;
use crate::artifacts::{BlobStore, RunIndex, parse_pot_locator, peer_of, pot_locator};
use crate::chain::{Chain, follow};
use crate::commands::{self, TrainEvent};
use crate::run_dir::RunDir;
use crate::train::fetch::Cache;
use crate::verify::{ClaimFacts, NetworkSource};
use crate::wallet::Wallet;
use pot_protocol::api::TaskWork;

/// How long a checkpoint or a run index may take to arrive before the claim is reported as
/// unavailable.
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a transaction's block.
const TX_WAIT: Duration = Duration::from_secs(60);
/// A verification that failed for this node's own reasons is tried again after this long.
const CHECK_RETRY: Duration = Duration::from_secs(20);
/// How often the blob store is swept for blobs no retained task names.
const GC_EVERY: Duration = Duration::from_secs(300);
/// A blob younger than this is never swept (a download or publication in progress).
const GC_GRACE: Duration = Duration::from_secs(3600);

pub struct Options {
    pub genesis: Genesis,
    pub key: SecretKey,
    pub data_dir: PathBuf,
    /// Coordinators' HTTP APIs: blocks are followed from them, transactions sent to them.
    pub coordinators: Vec<String>,
    pub api_listen: SocketAddr,
    pub artifacts_listen: Multiaddr,
    pub bootstrap: Vec<Multiaddr>,
    /// Take tasks and train them.
    pub mine: bool,
    /// Validate claims this node is assigned to (and serve on challenge committees).
    pub validate: bool,
    /// Re-check revealed reports of tasks this node has no part in, and challenge wrong ones.
    pub verify_reports: bool,
    /// Validator stake to keep bonded while validating, topped up from the balance (a pod
    /// the operator funds has none at genesis); zero: bond nothing, use what is bonded.
    pub validator_stake: Amount,
    /// Tasks trained at once.
    pub slots: usize,
    /// How claims' hyper-parameters are picked within the tasks' ranges.
    pub hyper_search: super::miner::HyperSearch,
    pub device: tch::Device,
    /// Put each training job on a GPU of its own (`--device cuda` or `auto` on a machine with
    /// several GPUs); `cuda:N` pins all work to GPU N.
    pub spread_gpus: bool,
    /// The bearer token `POST /v1/node/drain` must carry (off when unset).
    pub drain_token: Option<String>,
    /// How often to ask the coordinators for new blocks.
    pub poll: Duration,
    /// Blocks after a task ends that its artifacts are still served.
    pub retention_blocks: u64,
    /// Cheat as a miner (tests only).
    #[cfg(feature = "fault-injection")]
    pub cheat: Option<super::cheats::Cheat>,
    /// Crash once at a chosen point (tests only).
    #[cfg(feature = "fault-injection")]
    pub crashes: super::cheats::Crashes,
}

/// Run until SIGTERM/Ctrl-C or a fatal error.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.coordinators.is_empty(),
        "a miner or validator needs at least one coordinator API (--coordinator)"
    );
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let chain = Arc::new(Chain::open(
        opts.genesis.clone(),
        &opts.data_dir.join("chain"),
        Default::default(),
    )?);
    let clients: Vec<Client> = opts.coordinators.iter().map(Client::new).collect();
    let (tip_tx, tip) = watch::channel(chain.height());
    let mut following = tokio::spawn(follow::follow(
        chain.clone(),
        clients.clone(),
        tip_tx,
        opts.poll,
    ));
    let store = BlobStore::open(&opts.data_dir.join("artifacts"))?;
    let net = ArtifactNet::start(
        &opts.key,
        opts.artifacts_listen.clone(),
        opts.bootstrap.clone(),
        store.clone(),
    )
    .await?;
    let role = match (opts.mine, opts.validate) {
        (true, true) => "miner+validator",
        (true, false) => "miner",
        (false, true) => "validator",
        (false, false) => "client",
    };
    let status = Arc::new(NodeStatus::new(role, opts.key.address()));
    let api = super::status::serve(
        opts.api_listen,
        status.clone(),
        opts.drain_token.clone(),
        tip.clone(),
    )
    .await?;
    info!(
        address = %opts.key.address(),
        peer_id = %net.peer_id,
        artifacts = %net.address(),
        api = %api,
        role,
        device = ?opts.device,
        "node started"
    );
    let mut node = Node {
        me: opts.key.address(),
        wallet_key: opts.key.clone(),
        cache: Cache::new(store.root()),
        runs: opts.data_dir.join("runs"),
        jobs: Journal::open(&opts.data_dir.join("miner-jobs.json"))?,
        filed: Journal::open(&opts.data_dir.join("validator-reports.json"))?,
        chain,
        net,
        clients,
        next_client: 0,
        outbox: Vec::new(),
        validator_bond_short: false,
        status,
        training: HashMap::new(),
        rechecked: Journal::open(&opts.data_dir.join("verifier-rechecks.json"))?,
        votes: Journal::open(&opts.data_dir.join("committee-votes.json"))?,
        replays: HashMap::new(),
        replay_failed: HashMap::new(),
        fetch_retry: HashMap::new(),
        // The first sweep a minute after start (a node restarted for a full disk frees it).
        last_gc: Instant::now()
            .checked_sub(GC_EVERY - Duration::from_secs(60))
            .unwrap_or_else(Instant::now),
        gc: None,
        training_gpu: HashMap::new(),
        tip: tip.clone(),
        opts,
    };
    let mut tip_changes = tip;
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        node.tick().await?;
        tokio::select! {
            _ = tip_changes.changed() => {}
            _ = tokio::time::sleep(node.opts.poll) => {}
            followed = &mut following => {
                return match followed {
                    Ok(Err(e)) => Err(e.context("following the chain")),
                    Ok(Ok(())) => Err(anyhow::anyhow!("the follower stopped")),
                    Err(e) => Err(anyhow::anyhow!("the follower panicked: {e}")),
                };
            }
            () = &mut stop => {
                info!("stopping: training in progress resumes from its last checkpoint at the next start");
                return Ok(());
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Work done on a blocking thread: replays for a report, a re-check, a committee vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Replay {
    Check(Assigned),
    Recheck(TaskId, Address),
    Judge(ChallengeRef),
}

enum Done {
    Report(Report),
    Rechecked(Vec<Dispute>),
    Vote(bool),
}

/// What a replay needs: the swarm to fetch checkpoints from, the dataset cache, the device
/// (and the status its time is counted in).
struct Replayer {
    net: ArtifactNet,
    status: Arc<NodeStatus>,
    cache: Cache,
    device: tch::Device,
    runtime: tokio::runtime::Handle,
    /// Abort half-way through the checkpoints (once; tests only).
    #[cfg(feature = "fault-injection")]
    crash_mid_download: Option<PathBuf>,
}

impl Replayer {
    /// Replay `segments` of `miner`'s claim on `task` (and the task's largest-update segments
    /// when `top_q`), fetching its checkpoints over the swarm; `None` when they cannot be had
    /// (no pot:// run index, a run index that is not the committed one, a holder that never
    /// answers). Blocking.
    fn replay(
        &self,
        task: &pot_protocol::state::Task,
        miner: Address,
        segments: &[u32],
        top_q: bool,
    ) -> anyhow::Result<Option<crate::verify::Report>> {
        let entry = &task.claims[&miner];
        let (Some(claim), Some(salt)) = (&entry.claim, entry.salt) else {
            anyhow::bail!("the claim is not revealed");
        };
        let n = task.spec.segments();
        let holders: Vec<_> = peer_of(&miner).into_iter().collect();
        let Some(index) = parse_pot_locator(&claim.artifacts) else {
            warn!(task = %task.id, %miner, locator = claim.artifacts, "the claim's artifacts are not a pot:// run index");
            return Ok(None);
        };
        let started = Instant::now();
        let fetched = self.runtime.block_on(async {
            tokio::time::timeout(
                ARTIFACT_TIMEOUT,
                self.net.fetch(index, RunIndex::bytes_for(n), &holders),
            )
            .await
        });
        let leaves = match fetched
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r)
            .and_then(|()| self.net.store.read(&index))
            .and_then(|bytes| RunIndex::decode(&bytes, n, &claim.checkpoint_root))
        {
            Ok(i) => i.checkpoints,
            Err(e) => {
                warn!(task = %task.id, %miner, "the claim's run index: {e:#}");
                return Ok(None);
            }
        };
        let source = NetworkSource {
            net: self.net.clone(),
            runtime: self.runtime.clone(),
            leaves,
            holders,
            timeout: ARTIFACT_TIMEOUT,
            started: Default::default(),
        };
        let facts = ClaimFacts {
            miner,
            salt,
            checkpoint_root: claim.checkpoint_root,
            model_hash: claim.model_hash,
            steps: claim.steps,
            hyper: claim.hyper.clone(),
        };
        self.runtime
            .block_on(fetch_published(&self.net, task, true))
            .context("fetching the task's published datasets")?;
        self.status
            .add_work_seconds("transfer", started.elapsed().as_secs_f64());
        let mut spec = task.spec.clone();
        if !top_q {
            spec.verification.top_q = 0;
        }
        #[cfg(feature = "fault-injection")]
        let crashing =
            self.crash_mid_download
                .clone()
                .map(|data_dir| super::cheats::CrashMidDownload {
                    inner: &source,
                    at: (n / 2) as usize,
                    data_dir,
                });
        #[cfg(feature = "fault-injection")]
        let source: &dyn crate::verify::CheckpointSource = match &crashing {
            Some(c) => c,
            None => &source,
        };
        #[cfg(not(feature = "fault-injection"))]
        let source = &source;
        let found = commands::verify_claim(
            &spec,
            &facts,
            source,
            segments,
            task.eval_set.as_ref(),
            None,
            self.device,
            &self.cache,
        )?;
        self.status.add_verification(&found.timings);
        for f in &found.findings {
            warn!(task = %task.id, %miner, "finding: {f}");
        }
        // Checkpoints that could not be fetched are the miner's failure, not a finding
        // about the training.
        if found
            .findings
            .iter()
            .any(|f| matches!(f, crate::verify::Finding::Unavailable { .. }))
        {
            return Ok(None);
        }
        Ok(Some(found))
    }
}

/// Fetch the task's dataset files named `pot://<sha256>` (and its eval set's, with `eval`) from
/// the swarm, the client first; each is checked against its hash as it arrives.
async fn fetch_published(
    net: &ArtifactNet,
    task: &pot_protocol::state::Task,
    eval: bool,
) -> anyhow::Result<()> {
    let client: Vec<_> = peer_of(&task.client).into_iter().collect();
    let eval_blobs = task
        .eval_set
        .iter()
        .filter(|_| eval)
        .flat_map(pot_protocol::task::DatasetRef::blobs);
    for b in task.spec.dataset.blobs().into_iter().chain(eval_blobs) {
        if let Some(blob) = parse_pot_locator(&b.locator) {
            anyhow::ensure!(
                blob == b.sha256,
                "{} names another blob than its sha256 {}",
                b.locator,
                b.sha256
            );
            tokio::time::timeout(
                ARTIFACT_TIMEOUT,
                net.fetch(blob, crate::artifacts::wire::MAX_BLOB, &client),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{} took over {ARTIFACT_TIMEOUT:?}", b.locator))??;
        }
    }
    Ok(())
}

/// A dataset could not be fetched yet: training is tried again later, the job kept.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FetchLater(String);

/// A trained run's claim and every blob it put in the store (to announce).
type Published = (Claim, Vec<Hash>);

struct Node {
    opts: Options,
    me: Address,
    wallet_key: SecretKey,
    chain: Arc<Chain>,
    net: ArtifactNet,
    cache: Cache,
    runs: PathBuf,
    jobs: Journal<TaskId, Job>,
    filed: Journal<Assigned, Filed>,
    clients: Vec<Client>,
    next_client: usize,
    status: Arc<NodeStatus>,
    training: HashMap<TaskId, JoinHandle<anyhow::Result<Published>>>,
    rechecked: Journal<(TaskId, Address), Rechecked>,
    votes: Journal<ChallengeRef, Vote>,
    replays: HashMap<Replay, JoinHandle<anyhow::Result<Done>>>,
    replay_failed: HashMap<Replay, Instant>,
    /// When a job's dataset could last not be fetched.
    fetch_retry: HashMap<TaskId, Instant>,
    /// The GPU each training job in progress holds (when spreading over GPUs).
    training_gpu: HashMap<TaskId, usize>,
    /// When the blob store was last swept, and the sweep in progress.
    last_gc: Instant,
    gc: Option<JoinHandle<()>>,
    tip: watch::Receiver<u64>,
    /// Transactions the duties of this pass call for (sent together by `flush`).
    outbox: Vec<Outgoing>,
    /// The balance could not pay the validator stake (warned once until it can).
    validator_bond_short: bool,
}

/// A transaction a duty calls for.
struct Outgoing {
    body: TxBody,
    what: &'static str,
    then: Then,
}

/// What a transaction settles once it is in a block.
enum Then {
    Nothing,
    ClaimCommitted(TaskId),
    ClaimRevealed(TaskId),
    ReportRevealed,
}

impl Node {
    /// One pass: collect finished work, then act on what the chain says now. A failure to
    /// write this node's own records is fatal (acting on without them could lose a salt or
    /// a report); anything else is logged and tried again at the next pass.
    async fn tick(&mut self) -> anyhow::Result<()> {
        self.collect_training().await?;
        self.collect_replays().await?;
        let state = self.chain.state();
        self.status.set_height(state.tip.height);
        if self.opts.mine {
            self.mine(&state).await?;
        }
        if self.opts.validate {
            // Read again: a miner bond `mine` just waited for has spent part of the balance.
            self.keep_validator_bond(&self.chain.state()).await;
            self.validate(&state).await?;
        }
        // Committee seats come with validator stake; a verifier challenges.
        self.disputes(&state).await?;
        self.reveal_eval_sets(&state).await;
        let _ = self.flush().await;
        if self.last_gc.elapsed() >= GC_EVERY {
            self.last_gc = Instant::now();
            self.collect_garbage(&state);
        }
        Ok(())
    }

    /// Delete, off the loop, the blobs no retained task and no unrevealed run of this node
    /// names (see `retention`). One sweep at a time.
    fn collect_garbage(&mut self, state: &State) {
        if self.gc.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let mut named: Vec<retention::Named> =
            state.tasks.values().map(retention::Named::of).collect();
        // This node's own runs, committed or not yet revealed: kept as if a task named them.
        for (id, job) in &self.jobs.entries {
            if let (Some(claim), Some(task)) = (&job.claim, state.tasks.get(id))
                && let Some(index) = parse_pot_locator(&claim.artifacts)
            {
                named.push(retention::Named {
                    ended_at: None,
                    files: Vec::new(),
                    run_indexes: vec![(index, claim.checkpoint_root)],
                    segments: task.spec.segments(),
                });
            }
        }
        let (store, height, retention_blocks) = (
            self.net.store.clone(),
            state.tip.height,
            self.opts.retention_blocks,
        );
        self.gc = Some(tokio::task::spawn_blocking(move || {
            sweep(&store, &named, height, retention_blocks)
        }));
    }

    async fn mine(&mut self, state: &State) -> anyhow::Result<()> {
        let height = state.tip.height;
        let views: Vec<TaskView> = state
            .tasks
            .values()
            .map(|t| TaskView::of_task(t, t.phase(height + 1), &self.me))
            .collect();
        let limits = Limits {
            slots: self.opts.slots,
            min_commit_blocks: 2,
            retention_blocks: self.opts.retention_blocks,
            draining: self.status.draining(),
        };
        for action in miner::plan(&self.me, height, &views, &self.jobs.entries, &limits) {
            match action {
                Action::Take(id) => self.take(state, id).await?,
                Action::Commit(id) => {
                    let job = &self.jobs.entries[&id];
                    let claim = job.claim.as_ref().expect("the plan commits trained jobs");
                    let commitment = claim_commitment(&id, &self.me, claim, &job.salt);
                    let body = TxBody::CommitClaim {
                        task: id,
                        commitment,
                    };
                    self.queue(body, "claim commitment", Then::ClaimCommitted(id));
                }
                Action::Reveal(id) => {
                    let job = &self.jobs.entries[&id];
                    let body = TxBody::RevealClaim {
                        task: id,
                        claim: job.claim.clone().expect("the plan reveals trained jobs"),
                        salt: job.salt,
                    };
                    self.queue(body, "claim reveal", Then::ClaimRevealed(id));
                }
                Action::Drop(id, why) => {
                    info!(task = %id, ?why, "letting the task go");
                    self.training_gpu.remove(&id);
                    if let Some(h) = self.training.remove(&id) {
                        h.abort();
                    }
                    self.jobs.remove(&id)?;
                    self.status.remove_work(&id);
                    let run = self.runs.join(id.to_string());
                    if let Err(e) = std::fs::remove_dir_all(&run)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        warn!(dir = %run.display(), "removing a finished run: {e}");
                    }
                }
            }
        }
        // After a restart: jobs still training have no thread; resume them.
        let pending: Vec<TaskId> = self
            .jobs
            .entries
            .iter()
            .filter(|(id, j)| {
                j.claim.is_none() && j.failed.is_none() && !self.training.contains_key(*id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            if let Some(task) = state.tasks.get(&id) {
                self.start_training(task, id).await;
            }
        }
        Ok(())
    }

    /// Take task `id`: bond what its collateral needs, choose a salt and hyper-parameters,
    /// record them, and start training.
    async fn take(&mut self, state: &State, id: TaskId) -> anyhow::Result<()> {
        let task = &state.tasks[&id];
        let collateral = pot_protocol::ledger::miner_collateral(&state.params, task.bounty);
        // Jobs taken but not yet committed will reserve theirs first (several slots).
        let promised = miner::unreserved_collateral(&self.jobs.entries, |id| {
            let t = state.tasks.get(id)?;
            Some((
                pot_protocol::ledger::miner_collateral(&state.params, t.bounty),
                t.claims.contains_key(&self.me),
            ))
        });
        let free = Amount(
            state
                .free_stake(&self.me, Role::Miner)
                .0
                .saturating_sub(promised.0),
        );
        if free < collateral {
            let missing = Amount(collateral.0 - free.0);
            let spendable = state
                .balance(&self.me)
                .0
                .saturating_sub(state.params.claim_deposit.0 + 2 * state.params.tx_fee.0);
            if spendable < missing.0 {
                warn!(task = %id, %collateral, %free, "not enough stake or balance to take the task");
                return Ok(());
            }
            let body = TxBody::Bond {
                role: Role::Miner,
                amount: missing,
            };
            // Duties queued earlier in this pass go first; then the bond, alone, and its block.
            let _ = self.flush().await;
            self.queue(body, "miner bond", Then::Nothing);
            if !self.flush().await {
                return Ok(());
            }
        }
        let salt = Hash(SecretKey::generate().seed());
        let hyper = super::miner::search_hyper(&task.spec, self.opts.hyper_search, &salt);
        let job = Job {
            salt,
            hyper,
            claim: None,
            failed: None,
        };
        // The salt is on disk before anything depends on it.
        self.jobs.put(id, job)?;
        info!(task = %id, bounty = %task.bounty, hyper = ?self.jobs.entries[&id].hyper, "took the task");
        self.start_training(task, id).await;
        Ok(())
    }

    async fn start_training(&mut self, task: &pot_protocol::state::Task, id: TaskId) {
        if self
            .fetch_retry
            .get(&id)
            .is_some_and(|at| at.elapsed() < CHECK_RETRY)
        {
            return;
        }
        let job = self.jobs.entries[&id].clone();
        self.status.set_work(
            id,
            TaskWork::Training {
                step: 0,
                steps: task.spec.steps,
                loss: None,
                steps_per_second: None,
            },
        );
        let spec = task.spec.clone();
        let run = RunDir::new(self.runs.join(id.to_string()));
        let device = match self.opts.device {
            tch::Device::Cuda(_) if self.opts.spread_gpus => {
                let held: Vec<usize> = self.training_gpu.values().copied().collect();
                let gpu = miner::pick_gpu(tch::Cuda::device_count().max(0) as usize, &held);
                self.training_gpu.insert(id, gpu);
                tch::Device::Cuda(gpu)
            }
            other => other,
        };
        let (me, cache) = (self.me, self.cache.clone());
        let store = self.net.store.clone();
        let status = self.status.clone();
        let (net, runtime, task) = (
            self.net.clone(),
            tokio::runtime::Handle::current(),
            task.clone(),
        );
        #[cfg(feature = "fault-injection")]
        let (cheat, crash_at, data_dir) = (
            self.opts.cheat,
            self.opts.crashes.crash_at_step,
            self.opts.data_dir.clone(),
        );
        self.training.insert(
            id,
            tokio::task::spawn_blocking(move || {
                // A run that finished before a restart is published as it is.
                if let Ok(m) = run.read_manifest()
                    && (m.miner, m.salt, &m.hyper) == (me, job.salt, &job.hyper)
                {
                    info!(task = %id, "the run finished before a restart; publishing it");
                    return publish_run(&store, &run, &m);
                }
                // A dataset named by hash is fetched from the swarm first (the client holds
                // it), here, off the node's loop.
                let fetching = Instant::now();
                runtime
                    .block_on(fetch_published(&net, &task, false))
                    .map_err(|e| anyhow::Error::new(FetchLater(format!("{e:#}"))))?;
                status.add_work_seconds("transfer", fetching.elapsed().as_secs_f64());
                let started = Instant::now();
                let mut from = 0;
                let mut on_event = |e: TrainEvent| match e {
                    TrainEvent::Resumed { step } => {
                        info!(task = %id, step, "resuming training from its last checkpoint");
                        from = step;
                    }
                    TrainEvent::Checkpoint { step, loss } => {
                        #[cfg(feature = "fault-injection")]
                        if crash_at.is_some_and(|s| step >= s) {
                            super::cheats::crash_once(&data_dir, "training");
                        }
                        let rate = (step - from) as f64 / started.elapsed().as_secs_f64();
                        info!(task = %id, step, steps = spec.steps, loss, steps_per_second = format!("{rate:.1}"), "training");
                        status.set_work(
                            id,
                            TaskWork::Training {
                                step,
                                steps: spec.steps,
                                loss: Some(loss),
                                steps_per_second: Some(rate),
                            },
                        );
                    }
                };
                #[cfg(feature = "fault-injection")]
                if let Some(cheat) = cheat
                    && let Some(m) = super::cheats::trajectory(
                        cheat,
                        &spec,
                        &job.hyper,
                        &run,
                        (me, job.salt),
                        &cache,
                    )?
                {
                    warn!(task = %id, ?cheat, "cheating");
                    return publish_run(&store, &run, &m);
                }
                let m = commands::train_spec(
                    &spec,
                    job.hyper.clone(),
                    &run,
                    (me, job.salt),
                    None,
                    device,
                    &cache,
                    &mut on_event,
                )?;
                // A run that diverged is not claimed: a replay elsewhere cannot match a NaN
                // unless bit-identical, so an honest claim could be judged invalid.
                anyhow::ensure!(
                    m.final_loss.is_finite(),
                    "training diverged (final loss {}); not claiming",
                    m.final_loss
                );
                let publishing = Instant::now();
                let published = publish_run(&store, &run, &m);
                status.add_work_seconds("training", m.train_seconds - m.checkpoint_seconds);
                status.add_work_seconds(
                    "checkpointing",
                    m.checkpoint_seconds + publishing.elapsed().as_secs_f64(),
                );
                published
            }),
        );
    }

    /// Delete a revealed claim's checkpoints and index from the store: nobody can fetch them.
    #[cfg(feature = "fault-injection")]
    fn withhold(&self, id: &TaskId) {
        let Some(claim) = self.jobs.entries.get(id).and_then(|j| j.claim.as_ref()) else {
            return;
        };
        let Some(index) = parse_pot_locator(&claim.artifacts) else {
            return;
        };
        let store = &self.net.store;
        let leaves = store
            .read(&index)
            .ok()
            .and_then(|b| pot_protocol::encoding::decode::<RunIndex>(&b).ok())
            .map(|i| i.checkpoints)
            .unwrap_or_default();
        for blob in leaves.iter().chain([&index]) {
            let _ = store.remove(blob);
        }
        warn!(task = %id, "withholding the claim's artifacts");
    }

    /// Collect finished training: record the claim (or why it failed) and announce the
    /// artifacts.
    async fn collect_training(&mut self) -> anyhow::Result<()> {
        let done: Vec<TaskId> = self
            .training
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let handle = self.training.remove(&id).expect("listed above");
            self.training_gpu.remove(&id);
            let outcome = match handle.await {
                Ok(r) => r,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => Err(anyhow::anyhow!("training panicked: {e}")),
            };
            let Some(job) = self.jobs.entries.get(&id).cloned() else {
                continue;
            };
            if let Err(e) = &outcome
                && let Some(FetchLater(why)) = e.downcast_ref::<FetchLater>()
            {
                warn!(task = %id, "fetching the dataset: {why}; trying again later");
                self.fetch_retry.insert(id, Instant::now());
                continue;
            }
            match outcome {
                Ok((claim, blobs)) => {
                    for blob in blobs {
                        self.net.provide(blob).await;
                    }
                    info!(task = %id, model = %claim.model_hash, root = %claim.checkpoint_root, "training finished");
                    self.status.set_work(id, TaskWork::Trained);
                    self.jobs.put(
                        id,
                        Job {
                            claim: Some(claim),
                            ..job
                        },
                    )?;
                }
                Err(e) => {
                    error!(task = %id, "training failed: {e:#}");
                    self.status.set_work(
                        id,
                        TaskWork::Failed {
                            error: format!("{e:#}"),
                        },
                    );
                    self.jobs.put(
                        id,
                        Job {
                            failed: Some(format!("{e:#}")),
                            ..job
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Keep `validator_stake` bonded while validating, and unbond the free part while
    /// draining (the chain draws validators by free stake, so a draining node would otherwise
    /// be assigned claims it leaves before reporting, and be slashed). Planned from the chain
    /// as followed, then confirmed against the coordinator the transaction goes to — the one
    /// whose account nonce numbers it — so a bond that landed after a timeout, which this
    /// node's follower has not seen yet, is not sent again with the next nonce.
    async fn keep_validator_bond(&mut self, state: &State) {
        if self.opts.validator_stake == Amount::ZERO {
            return;
        }
        let keep = validator::balance_to_keep(&state.params, self.opts.mine);
        let draining = self.status.draining();
        let plan = |stake: validator::ValidatorStake| {
            validator::plan_validator_stake(&stake, self.opts.validator_stake, keep, draining)
        };
        let local = validator::ValidatorStake {
            bonded: state.bonded(&self.me, Role::Validator),
            free: state.free_stake(&self.me, Role::Validator),
            balance: state.balance(&self.me),
        };
        let Some(_) = plan(local) else {
            if !draining && local.bonded < self.opts.validator_stake && !self.validator_bond_short {
                // Once until it is bonded: a fleet waiting for its funding logs no stream.
                self.validator_bond_short = true;
                warn!(
                    bonded = %local.bonded,
                    target = %self.opts.validator_stake,
                    balance = %local.balance,
                    "not enough balance to bond the validator stake; no claim is assigned to this node until it is funded"
                );
            }
            return;
        };
        let wallet = self.wallet();
        let account = match wallet.client.account(&self.me).await {
            Ok(a) => a,
            Err(e) => {
                warn!("reading this node's account before a validator bond: {e}");
                return;
            }
        };
        let confirmed = validator::ValidatorStake {
            bonded: account.validator_bond,
            free: account
                .validator_bond
                .saturating_sub(account.validator_reserved),
            balance: account.balance,
        };
        match plan(confirmed) {
            Some(body @ TxBody::Bond { amount, .. }) => {
                self.validator_bond_short = false;
                info!(%amount, bonded = %confirmed.bonded, "bonding validator stake");
                self.queue(body, "validator bond", Then::Nothing);
            }
            Some(body @ TxBody::Unbond { amount, .. }) => {
                info!(%amount, "draining: unbonding the free validator stake");
                self.queue(body, "validator unbond", Then::Nothing);
            }
            _ => {}
        }
    }

    async fn validate(&mut self, state: &State) -> anyhow::Result<()> {
        let height = state.tip.height;
        let tasks: Vec<&pot_protocol::state::Task> = state.tasks.values().collect();
        for duty in validator::duties(&self.me, height, &tasks, &self.filed.entries) {
            match duty {
                Duty::Check(key) => self.start_check(state, key),
                Duty::Commit((task, miner)) => {
                    let f = &self.filed.entries[&(task, miner)];
                    let commitment = report_commitment(&task, &miner, &self.me, &f.report, &f.salt);
                    let body = TxBody::CommitReport {
                        task,
                        miner,
                        commitment,
                    };
                    self.queue(body, "report commitment", Then::Nothing);
                }
                Duty::Reveal((task, miner)) => {
                    let f = &self.filed.entries[&(task, miner)];
                    let body = TxBody::RevealReport {
                        task,
                        miner,
                        report: f.report.clone(),
                        salt: f.salt,
                    };
                    self.queue(body, "report reveal", Then::ReportRevealed);
                }
                Duty::Forget(key) => {
                    self.filed.remove(&key)?;
                }
            }
        }
        Ok(())
    }

    /// Reveal the eval set of every task whose secret this node keeps (`task submit
    /// --publish-to`) once its window opens. Level triggered: the chain says whether it is done.
    async fn reveal_eval_sets(&mut self, state: &State) {
        let height = state.tip.height;
        for secret in super::client::read_secrets(&super::client::secrets_dir(&self.opts.data_dir))
        {
            let Some(task) = state.tasks.get(&secret.task) else {
                continue;
            };
            if !super::client::due(task, &self.me, height) {
                continue;
            }
            // Served from now on (validators fetch it), not before: miners must not see it.
            let held = super::client::held_store(&self.opts.data_dir);
            match super::client::release_eval_set(&secret.eval_set, &held, &self.net.store) {
                Ok(blobs) => {
                    for blob in blobs {
                        self.net.provide(blob).await;
                    }
                }
                Err(e) => {
                    error!(task = %secret.task, "the eval set to reveal is not at hand: {e:#}");
                    continue;
                }
            }
            let body = TxBody::RevealEvalSet {
                task: secret.task,
                eval_set: secret.eval_set.clone(),
                salt: secret.salt,
            };
            self.queue(body, "eval set reveal", Then::Nothing);
        }
    }

    /// Challenge committee seats (any node with validator stake may be drawn) and, with
    /// `--verify-reports`, re-checks and challenges.
    async fn disputes(&mut self, state: &State) -> anyhow::Result<()> {
        use challenge::Duty as D;
        let height = state.tip.height;
        let tasks: Vec<&pot_protocol::state::Task> = state.tasks.values().collect();
        let mut duties = challenge::committee_duties(&self.me, height, &tasks, &self.votes.entries);
        if self.opts.verify_reports {
            duties.extend(challenge::verifier_duties(
                &self.me,
                height,
                &tasks,
                &self.rechecked.entries,
            ));
        }
        for duty in duties {
            match duty {
                D::Recheck(id, miner) => self.start_recheck(state, id, miner),
                D::Challenge(task, dispute, salt) => {
                    let commitment =
                        pot_protocol::tx::challenge_commitment(&task, &self.me, &dispute, &salt);
                    self.queue(
                        TxBody::Challenge { task, commitment },
                        "challenge",
                        Then::Nothing,
                    );
                }
                D::RevealChallenge((task, challenge), dispute, salt) => {
                    let body = TxBody::RevealChallenge {
                        task,
                        challenge,
                        dispute,
                        salt,
                    };
                    self.queue(body, "challenge reveal", Then::Nothing);
                }
                D::Judge(key) => self.start_judging(state, key),
                D::CommitVote((task, challenge)) => {
                    let v = &self.votes.entries[&(task, challenge)];
                    let commitment = vote_commitment(&task, challenge, &self.me, v.upheld, &v.salt);
                    let body = TxBody::CommitVote {
                        task,
                        challenge,
                        commitment,
                    };
                    self.queue(body, "vote commitment", Then::Nothing);
                }
                D::RevealVote((task, challenge)) => {
                    let v = &self.votes.entries[&(task, challenge)];
                    let body = TxBody::RevealVote {
                        task,
                        challenge,
                        upheld: v.upheld,
                        salt: v.salt,
                    };
                    self.queue(body, "vote reveal", Then::Nothing);
                }
                D::Forget(task) => {
                    self.votes.retain(|k| k.0 != task)?;
                    self.rechecked.retain(|k| k.0 != task)?;
                }
            }
        }
        Ok(())
    }

    /// Start `job` on a blocking thread, unless it is already running or failed moments ago.
    fn start_replay(
        &mut self,
        job: Replay,
        work: impl FnOnce(Replayer) -> anyhow::Result<Done> + Send + 'static,
    ) {
        if self.replays.contains_key(&job)
            || self
                .replay_failed
                .get(&job)
                .is_some_and(|at| at.elapsed() < CHECK_RETRY)
        {
            return;
        }
        let replayer = Replayer {
            net: self.net.clone(),
            status: self.status.clone(),
            cache: self.cache.clone(),
            device: self.opts.device,
            runtime: tokio::runtime::Handle::current(),
            #[cfg(feature = "fault-injection")]
            crash_mid_download: self
                .opts
                .crashes
                .crash_mid_download
                .then(|| self.opts.data_dir.clone()),
        };
        self.replays
            .insert(job, tokio::task::spawn_blocking(move || work(replayer)));
    }

    /// Verify the claim `key` this validator is assigned to.
    fn start_check(&mut self, state: &State, key: Assigned) {
        let (id, miner) = key;
        let task = state.tasks[&id].clone();
        let segments = task.claims[&miner]
            .assignment(&self.me)
            .expect("duties name assigned claims")
            .segments
            .clone();
        #[cfg(feature = "fault-injection")]
        if self.opts.cheat == Some(super::cheats::Cheat::RubberStamp) {
            warn!(task = %id, %miner, "reporting valid without replaying");
            let report = super::cheats::rubber_stamp(&segments);
            self.start_replay(Replay::Check(key), move |_| Ok(Done::Report(report)));
            return;
        }
        info!(task = %id, %miner, ?segments, "verifying a claim");
        self.start_replay(Replay::Check(key), move |r| {
            let report = match r.replay(&task, miner, &segments, true)? {
                Some(found) => validator::report(&found, &segments, task.spec.metric),
                None => validator::unavailable(&segments),
            };
            Ok(Done::Report(report))
        });
    }

    /// Re-check every segment the reports on `(task, miner)` state (a verifier).
    fn start_recheck(&mut self, state: &State, id: TaskId, miner: Address) {
        let task = state.tasks[&id].clone();
        let mut segments = challenge::stated_segments(&task, &miner);
        if segments.is_empty() {
            segments.push(0);
        }
        info!(task = %id, %miner, ?segments, "re-checking the reports on a claim");
        self.start_replay(Replay::Recheck(id, miner), move |r| {
            let disputes = match r.replay(&task, miner, &segments, false)? {
                Some(found) => challenge::disputes(&task, &miner, &found),
                // Availability cannot be disputed.
                None => Vec::new(),
            };
            Ok(Done::Rechecked(disputes))
        });
    }

    /// Replay the fact challenge `key` disputes (a committee member), and decide the vote.
    fn start_judging(&mut self, state: &State, key: ChallengeRef) {
        let task = state.tasks[&key.0].clone();
        let dispute = task.challenges[key.1 as usize]
            .dispute
            .expect("duties name revealed challenges");
        let Some(report) = task.claims[&dispute.miner]
            .reports
            .get(&dispute.validator)
            .and_then(|r| r.report.clone())
        else {
            return;
        };
        let segments = match dispute.fact {
            Fact::Segment(i) => vec![i],
            _ => vec![0],
        };
        info!(task = %key.0, challenge = key.1, ?dispute, "judging a challenge");
        self.start_replay(Replay::Judge(key), move |r| {
            let upheld = match r.replay(&task, dispute.miner, &segments, false)? {
                Some(found) => {
                    let exact = task.spec.verification.is_exact();
                    challenge::vote(dispute.fact, &report, &found, task.spec.metric, exact)
                }
                // The artifacts are gone: nothing contradicts the report.
                None => false,
            };
            Ok(Done::Vote(upheld))
        });
    }

    /// Collect finished replays and record what they found, before anything is sent.
    async fn collect_replays(&mut self) -> anyhow::Result<()> {
        let done: Vec<Replay> = self
            .replays
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for job in done {
            let handle = self.replays.remove(&job).expect("listed above");
            let outcome = match handle.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("the replay panicked: {e}")),
            };
            let salt = Hash(SecretKey::generate().seed());
            match (job, outcome) {
                (Replay::Check(key), Ok(Done::Report(report))) => {
                    info!(task = %key.0, miner = %key.1, verdict = ?report.verdict, metric = %report.metric, "claim verified");
                    // On disk before its commitment is sent: a restart can still reveal it.
                    self.filed.put(key, Filed { report, salt })?;
                }
                (Replay::Recheck(id, miner), Ok(Done::Rechecked(disputes))) => {
                    for d in &disputes {
                        warn!(task = %id, %miner, validator = %d.validator, fact = ?d.fact, "a report states what the replay contradicts");
                    }
                    let disputes = disputes
                        .into_iter()
                        .map(|d| (d, Hash(SecretKey::generate().seed())))
                        .collect();
                    self.rechecked.put((id, miner), Rechecked { disputes })?;
                }
                (Replay::Judge(key), Ok(Done::Vote(upheld))) => {
                    info!(task = %key.0, challenge = key.1, upheld, "challenge judged");
                    self.votes.put(key, Vote { upheld, salt })?;
                }
                (job, Ok(_)) => unreachable!("{job:?} gave another kind of result"),
                (job, Err(e)) => {
                    error!(?job, "replay could not be done: {e:#}");
                    self.replay_failed.insert(job, Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Sign and send `body`, wait for its block and for this node to have followed it. A
    /// failure is logged (and the next coordinator used next time); the caller's plan sees
    /// on the next pass whether it landed.
    /// This node's wallet, through the coordinator in turn.
    fn wallet(&self) -> Wallet {
        Wallet {
            client: self.clients[self.next_client % self.clients.len()].clone(),
            key: self.wallet_key.clone(),
            // The fee the chain asks, as this node followed it: a coordinator's API could name
            // any.
            fee: Some(self.chain.state().params.tx_fee),
        }
    }

    /// Queue a duty's transaction for the end of this pass (`flush`).
    fn queue(&mut self, body: TxBody, what: &'static str, then: Then) {
        self.outbox.push(Outgoing { body, what, then });
    }

    /// Send every queued transaction at once (consecutive nonces, see `Wallet::send_all`), and
    /// record what each one that landed settles. One not sent or not included is due again at
    /// the next pass: the duties are read from the chain. True when every one landed.
    async fn flush(&mut self) -> bool {
        if self.outbox.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.outbox);
        let (bodies, rest): (Vec<TxBody>, Vec<(&'static str, Then)>) = batch
            .into_iter()
            .map(|o| (o.body, (o.what, o.then)))
            .unzip();
        let results = self.wallet().send_all(bodies, TX_WAIT).await;
        let (mut last_height, mut failed, mut all_landed) = (None, false, true);
        for ((what, then), result) in rest.into_iter().zip(results) {
            match result {
                Ok((hash, TxStatus::Included { height, .. })) => {
                    info!(tx = %hash, height, "{what} included");
                    last_height = last_height.max(Some(height));
                    self.settle(then);
                    continue;
                }
                Ok((hash, status)) => warn!(tx = %hash, ?status, "{what} not included"),
                Err(e) => {
                    warn!("{what}: {e:#}");
                    failed = true;
                }
            }
            all_landed = false;
        }
        if failed {
            self.next_client += 1;
        }
        if let Some(height) = last_height {
            let mut tip = self.tip.clone();
            let _ = tokio::time::timeout(TX_WAIT, tip.wait_for(|h| *h >= height)).await;
        }
        all_landed
    }

    /// Record what a transaction that landed settles.
    fn settle(&mut self, then: Then) {
        match then {
            Then::Nothing => {}
            Then::ClaimCommitted(id) => self.status.set_work(id, TaskWork::Committed),
            Then::ClaimRevealed(id) => {
                self.status.set_work(id, TaskWork::Revealed);
                self.status.metrics.claims_revealed.inc();
                #[cfg(feature = "fault-injection")]
                if self.opts.cheat == Some(super::cheats::Cheat::Withhold) {
                    self.withhold(&id);
                }
            }
            Then::ReportRevealed => {
                self.status.metrics.reports_revealed.inc();
            }
        }
    }
}

/// Delete the blobs of `store` that none of `named` keeps at `height` and that are older than
/// the grace period. A run index is read only if it is no larger than its task allows and
/// proves under the claim's root: a claim cannot make a sweep read a dataset-sized blob.
fn sweep(store: &BlobStore, named: &[retention::Named], height: u64, retention_blocks: u64) {
    let run_index = |h: &Hash, segments: u64, root: &Hash| {
        if store.size(h)? > RunIndex::bytes_for(segments) {
            return None;
        }
        let bytes = store.read(h).ok()?;
        RunIndex::decode(&bytes, segments, root)
            .ok()
            .map(|i| i.checkpoints)
    };
    let keep = retention::kept_by_chain(named, height, retention_blocks, run_index);
    let stored = match store.list_with_age() {
        Ok(s) => s,
        Err(e) => {
            warn!("listing the blob store: {e:#}");
            return;
        }
    };
    let gone = retention::collectable(stored, &keep, GC_GRACE.as_secs_f64());
    let mut bytes = 0;
    for blob in &gone {
        bytes += store.size(blob).unwrap_or(0);
        if let Err(e) = store.remove(blob) {
            warn!(%blob, "removing a blob no task names: {e:#}");
        }
    }
    if !gone.is_empty() {
        info!(
            blobs = gone.len(),
            bytes, "removed blobs no retained task names"
        );
    }
}

/// Put a finished run's checkpoints and its index into the blob store; the claim names the
/// index. Also returns every blob put, to announce.
fn publish_run(
    store: &BlobStore,
    run: &RunDir,
    m: &crate::run_dir::Manifest,
) -> anyhow::Result<Published> {
    for (i, expected) in m.checkpoints.iter().enumerate() {
        let stored = store.put_file(&run.checkpoint_path(i))?;
        anyhow::ensure!(
            stored == *expected,
            "checkpoint {i} on disk hashes to {stored}, the run recorded {expected}"
        );
    }
    let index = store.put(
        &RunIndex {
            checkpoints: m.checkpoints.clone(),
        }
        .encode(),
    )?;
    let claim = Claim {
        model_hash: m.model_hash,
        checkpoint_root: m.merkle_root,
        steps: m.steps,
        hyper: m.hyper.clone(),
        artifacts: pot_locator(&index),
    };
    let mut blobs = m.checkpoints.clone();
    blobs.push(index);
    Ok((claim, blobs))
}
