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
use pot_protocol::tx::{Claim, Report, Role, TaskId, TxBody, claim_commitment, report_commitment};
use pot_protocol::{Address, Amount, Genesis, Hash, SecretKey};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::journal::Journal;
use super::miner::{self, Action, Job, Limits, TaskView};
use super::status::{NodeStatus, Work};
use super::validator::{self, Assigned, Duty, Filed};
use crate::artifacts::net::ArtifactNet;
use crate::artifacts::{BlobStore, RunIndex, parse_pot_locator, peer_of, pot_locator};
use crate::chain::{Chain, follow};
use crate::commands::{self, TrainEvent};
use crate::run_dir::RunDir;
use crate::train::fetch::Cache;
use crate::verify::{ClaimFacts, NetworkSource};
use crate::wallet::Wallet;

/// How long a checkpoint or a run index may take to arrive before the claim is reported as
/// unavailable.
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a transaction's block.
const TX_WAIT: Duration = Duration::from_secs(60);
/// A verification that failed for this node's own reasons is tried again after this long.
const CHECK_RETRY: Duration = Duration::from_secs(20);

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
    /// Validate claims this node is assigned to.
    pub validate: bool,
    /// Tasks trained at once.
    pub slots: usize,
    pub device: tch::Device,
    /// The bearer token `POST /v1/node/drain` must carry (off when unset).
    pub drain_token: Option<String>,
    /// How often to ask the coordinators for new blocks.
    pub poll: Duration,
    /// Blocks after a task ends that its artifacts are still served.
    pub retention_blocks: u64,
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
        _ => "validator",
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
        status,
        training: HashMap::new(),
        checking: HashMap::new(),
        check_failed: HashMap::new(),
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
    checking: HashMap<Assigned, JoinHandle<anyhow::Result<Report>>>,
    check_failed: HashMap<Assigned, Instant>,
    tip: watch::Receiver<u64>,
}

impl Node {
    /// One pass: collect finished work, then act on what the chain says now. A failure to
    /// write this node's own records is fatal (acting on without them could lose a salt or
    /// a report); anything else is logged and tried again at the next pass.
    async fn tick(&mut self) -> anyhow::Result<()> {
        self.collect_training().await?;
        self.collect_checks().await?;
        let state = self.chain.state();
        self.status.set_height(state.tip.height);
        if self.opts.mine {
            self.mine(&state).await?;
        }
        if self.opts.validate {
            self.validate(&state).await?;
        }
        Ok(())
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
                    if self.send(body, "claim commitment").await {
                        self.status.set_work(id, Work::Committed);
                    }
                }
                Action::Reveal(id) => {
                    let job = &self.jobs.entries[&id];
                    let body = TxBody::RevealClaim {
                        task: id,
                        claim: job.claim.clone().expect("the plan reveals trained jobs"),
                        salt: job.salt,
                    };
                    if self.send(body, "claim reveal").await {
                        self.status.set_work(id, Work::Revealed);
                        self.status.metrics.claims_revealed.inc();
                    }
                }
                Action::Drop(id, why) => {
                    info!(task = %id, ?why, "letting the task go");
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
        let free = state.free_stake(&self.me, Role::Miner);
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
            if !self.send(body, "miner bond").await {
                return Ok(());
            }
        }
        let hyper = match crate::train::task::choose_hyper(&task.spec, &[]) {
            Ok(h) => h,
            Err(e) => {
                warn!(task = %id, "cannot choose hyper-parameters: {e:#}");
                return Ok(());
            }
        };
        let job = Job {
            salt: Hash(SecretKey::generate().seed()),
            hyper,
            claim: None,
            failed: None,
        };
        // The salt is on disk before anything depends on it.
        self.jobs.put(id, job)?;
        info!(task = %id, bounty = %task.bounty, "took the task");
        self.start_training(task, id).await;
        Ok(())
    }

    async fn start_training(&mut self, task: &pot_protocol::state::Task, id: TaskId) {
        let job = self.jobs.entries[&id].clone();
        // A dataset named by hash is fetched from the swarm first (the client holds it).
        if let Some(blob) = parse_pot_locator(&task.spec.dataset.locator) {
            let known: Vec<_> = peer_of(&task.client).into_iter().collect();
            if let Err(e) = self
                .net
                .fetch(blob, crate::artifacts::wire::MAX_BLOB, &known)
                .await
            {
                warn!(task = %id, "fetching the dataset: {e:#}; trying again later");
                return;
            }
        }
        self.status.set_work(
            id,
            Work::Training {
                step: 0,
                steps: task.spec.steps,
                loss: None,
                steps_per_second: None,
            },
        );
        let spec = task.spec.clone();
        let run = RunDir::new(self.runs.join(id.to_string()));
        let (me, cache, device) = (self.me, self.cache.clone(), self.opts.device);
        let store = self.net.store.clone();
        let status = self.status.clone();
        self.training.insert(
            id,
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let mut from = 0;
                let mut on_event = |e: TrainEvent| match e {
                    TrainEvent::Resumed { step } => {
                        info!(task = %id, step, "resuming training from its last checkpoint");
                        from = step;
                    }
                    TrainEvent::Checkpoint { step, loss } => {
                        let rate = (step - from) as f64 / started.elapsed().as_secs_f64();
                        info!(task = %id, step, steps = spec.steps, loss, steps_per_second = format!("{rate:.1}"), "training");
                        status.set_work(
                            id,
                            Work::Training {
                                step,
                                steps: spec.steps,
                                loss: Some(loss),
                                steps_per_second: Some(rate),
                            },
                        );
                    }
                };
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
                publish_run(&store, &run, &m)
            }),
        );
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
            let outcome = match handle.await {
                Ok(r) => r,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => Err(anyhow::anyhow!("training panicked: {e}")),
            };
            let Some(job) = self.jobs.entries.get(&id).cloned() else {
                continue;
            };
            match outcome {
                Ok((claim, blobs)) => {
                    for blob in blobs {
                        self.net.provide(blob).await;
                    }
                    info!(task = %id, model = %claim.model_hash, root = %claim.checkpoint_root, "training finished");
                    self.status.set_work(id, Work::Trained);
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
                        Work::Failed {
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
                    self.send(body, "report commitment").await;
                }
                Duty::Reveal((task, miner)) => {
                    let f = &self.filed.entries[&(task, miner)];
                    let body = TxBody::RevealReport {
                        task,
                        miner,
                        report: f.report.clone(),
                        salt: f.salt,
                    };
                    if self.send(body, "report reveal").await {
                        self.status.metrics.reports_revealed.inc();
                    }
                }
                Duty::Forget(key) => {
                    self.filed.remove(&key)?;
                }
            }
        }
        Ok(())
    }

    /// Start verifying the claim `key` on a blocking thread, unless it is already running or
    /// failed moments ago.
    fn start_check(&mut self, state: &State, key: Assigned) {
        if self.checking.contains_key(&key)
            || self
                .check_failed
                .get(&key)
                .is_some_and(|at| at.elapsed() < CHECK_RETRY)
        {
            return;
        }
        let (id, miner) = key;
        let task = state.tasks[&id].clone();
        let entry = task.claims[&miner].clone();
        let segments = entry
            .assignment(&self.me)
            .expect("duties name assigned claims")
            .segments
            .clone();
        let (Some(claim), Some(salt), Some(eval_set)) =
            (entry.claim, entry.salt, task.eval_set.clone())
        else {
            return;
        };
        info!(task = %id, %miner, ?segments, "verifying a claim");
        let net = self.net.clone();
        let cache = self.cache.clone();
        let device = self.opts.device;
        let runtime = tokio::runtime::Handle::current();
        self.checking.insert(
            key,
            tokio::task::spawn_blocking(move || {
                let n = task.spec.segments();
                let holders: Vec<_> = peer_of(&miner).into_iter().collect();
                let Some(index) = parse_pot_locator(&claim.artifacts) else {
                    warn!(task = %id, %miner, locator = claim.artifacts, "the claim's artifacts are not a pot:// run index");
                    return Ok(validator::unavailable(&segments));
                };
                let fetched = runtime.block_on(async {
                    tokio::time::timeout(
                        ARTIFACT_TIMEOUT,
                        net.fetch(index, RunIndex::bytes_for(n), &holders),
                    )
                    .await
                });
                let leaves = match fetched
                    .map_err(|_| anyhow::anyhow!("timed out"))
                    .and_then(|r| r)
                    .and_then(|()| net.store.read(&index))
                    .and_then(|bytes| RunIndex::decode(&bytes, n, &claim.checkpoint_root))
                {
                    Ok(i) => i.checkpoints,
                    Err(e) => {
                        warn!(task = %id, %miner, "the claim's run index: {e:#}");
                        return Ok(validator::unavailable(&segments));
                    }
                };
                let source = NetworkSource {
                    net,
                    runtime,
                    leaves,
                    holders,
                    timeout: ARTIFACT_TIMEOUT,
                };
                let facts = ClaimFacts {
                    miner,
                    salt,
                    checkpoint_root: claim.checkpoint_root,
                    model_hash: claim.model_hash,
                    steps: claim.steps,
                    hyper: claim.hyper.clone(),
                };
                let found = commands::verify_claim(
                    &task.spec,
                    &facts,
                    &source,
                    &segments,
                    Some(&eval_set),
                    None,
                    device,
                    &cache,
                )?;
                for f in &found.findings {
                    warn!(task = %id, %miner, "finding: {f}");
                }
                Ok(validator::report(&found, &segments, task.spec.metric))
            }),
        );
    }

    async fn collect_checks(&mut self) -> anyhow::Result<()> {
        let done: Vec<Assigned> = self
            .checking
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            let handle = self.checking.remove(&key).expect("listed above");
            let outcome = match handle.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("verification panicked: {e}")),
            };
            match outcome {
                Ok(report) => {
                    info!(task = %key.0, miner = %key.1, verdict = ?report.verdict, metric = %report.metric, "claim verified");
                    let salt = Hash(SecretKey::generate().seed());
                    // On disk before its commitment is sent: a restart can still reveal it.
                    self.filed.put(key, Filed { report, salt })?;
                }
                Err(e) => {
                    error!(task = %key.0, miner = %key.1, "verification could not be done: {e:#}");
                    self.check_failed.insert(key, Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Sign and send `body`, wait for its block and for this node to have followed it. A
    /// failure is logged (and the next coordinator used next time); the caller's plan sees
    /// on the next pass whether it landed.
    async fn send(&mut self, body: TxBody, what: &str) -> bool {
        let client = self.clients[self.next_client % self.clients.len()].clone();
        let wallet = Wallet {
            client,
            key: self.wallet_key.clone(),
            fee: None,
        };
        match wallet.send(body, TX_WAIT).await {
            Ok((hash, TxStatus::Included { height, .. })) => {
                info!(tx = %hash, height, "{what} included");
                let mut tip = self.tip.clone();
                let _ = tokio::time::timeout(TX_WAIT, tip.wait_for(|h| *h >= height)).await;
                true
            }
            Ok((hash, status)) => {
                warn!(tx = %hash, ?status, "{what} not included");
                false
            }
            Err(e) => {
                warn!("{what}: {e:#}");
                self.next_client += 1;
                false
            }
        }
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
