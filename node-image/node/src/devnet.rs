//! `pot-node devnet`: a whole network as processes of this binary on loopback — coordinators,
//! miners, validators — with one task submitted by a client this command plays (it also
//! reveals the eval set when its window opens), progress shown as it goes, and the outcome as
//! a table at the end. Everything it starts is stopped when it ends or on Ctrl-C (the children
//! are killed when their handles drop).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pot_protocol::api::{AccountInfo, TaskInfo, TaskWork};
use pot_protocol::client::Client;
use pot_protocol::genesis::{GenesisBalance, GenesisStake};
use pot_protocol::state::TaskStatus;
use pot_protocol::tx::Role;
use pot_protocol::{Address, Amount, Params, Phase, SecretKey};
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::keyfile;
use crate::train::task::TaskFile;
use crate::wallet::Wallet;

pub struct Options {
    pub coordinators: usize,
    pub miners: usize,
    pub validators: usize,
    /// Nodes that re-check revealed reports and challenge wrong ones (funded, not staked, so
    /// never assigned to a claim).
    pub verifiers: usize,
    pub task: PathBuf,
    /// Copies of the task to submit (for throughput).
    pub tasks: usize,
    /// Where keys, data and logs go (kept afterwards).
    pub dir: PathBuf,
    pub block_time_ms: u64,
    /// The `pot-node` to start (this one by default).
    pub bin: PathBuf,
    /// Extra `run` arguments for miner `i` (`miner_args[i]`): a device, or a test build's
    /// fault-injection flags.
    pub miner_args: Vec<Vec<String>>,
    /// Extra `run` arguments for validator `i`.
    pub validator_args: Vec<Vec<String>>,
    /// Give up after this long.
    pub timeout: Duration,
}

/// What `devnet` prints at the end, and writes as `summary.json` in its directory.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub task: pot_protocol::Hash,
    pub phase: Phase,
    pub miners: Vec<Address>,
    pub validators: Vec<Address>,
    pub verifiers: Vec<Address>,
    pub client: Address,
    /// The (first) task as the chain records it at the end.
    pub info: TaskInfo,
    /// Every task submitted (`--tasks`), as the chain records it at the end.
    pub tasks: Vec<TaskInfo>,
    /// Seconds from each task's submission to its end.
    pub task_seconds: Vec<f64>,
    /// How often each process that exited was restarted.
    pub restarts: std::collections::BTreeMap<String, u32>,
    /// Every account the network started with, as the chain has it at the end.
    pub accounts: Vec<AccountInfo>,
    /// The winner's model, fetched by hash through a coordinator's `GET /v1/artifacts`, scored
    /// on the task's held-out split.
    pub winner_held_out_accuracy: Option<f64>,
    pub seconds: f64,
    /// Seconds the miners, validators and verifiers spent on each kind of work, summed over
    /// them (their `/v1/node/status` counters at the end: a restarted process's work before its
    /// restart is not counted).
    pub work_seconds: std::collections::BTreeMap<String, f64>,
    /// CPU seconds the coordinators used (consensus, block execution, the API) from their start
    /// to the end.
    pub coordinator_cpu_seconds: f64,
}

const FUNDS: Amount = Amount(10_000_000);
const MINER_STAKE: Amount = Amount(1_000_000);
const VALIDATOR_STAKE: Amount = Amount(1_000_000);

struct Proc {
    name: String,
    args: Vec<String>,
    child: Child,
    log: PathBuf,
    restarts: u32,
}

/// Restarts of one process before the devnet gives up (a crash loop is a bug to see).
const MAX_RESTARTS: u32 = 3;

pub async fn run(opts: Options) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        opts.coordinators == 1 || opts.coordinators >= 4,
        "--coordinators is 1 (a development chain) or at least 4 (one may fail)"
    );
    anyhow::ensure!(opts.miners >= 1, "--miners must be at least 1");
    let task_file = TaskFile::read(&opts.task)?;
    task_file.submission()?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let dir = &opts.dir;
    let started = Instant::now();

    // Keys and the genesis.
    let gen_keys = |prefix: &str, n: usize| -> anyhow::Result<Vec<SecretKey>> {
        (0..n)
            .map(|i| {
                let key = SecretKey::generate();
                keyfile::write(&dir.join(format!("{prefix}{i}.key")), &key)?;
                Ok(key)
            })
            .collect()
    };
    let coord_keys = gen_keys("coordinator", opts.coordinators)?;
    let miner_keys = gen_keys("miner", opts.miners)?;
    let validator_keys = gen_keys("validator", opts.validators)?;
    let verifier_keys = gen_keys("verifier", opts.verifiers)?;
    let client_key = SecretKey::generate();
    keyfile::write(&dir.join("client.key"), &client_key)?;
    let mut balances = vec![GenesisBalance {
        address: client_key.address(),
        amount: FUNDS,
    }];
    let mut stakes = Vec::new();
    for k in &verifier_keys {
        balances.push(GenesisBalance {
            address: k.address(),
            amount: FUNDS,
        });
    }
    for (keys, role, stake) in [
        (&miner_keys, Role::Miner, MINER_STAKE),
        (&validator_keys, Role::Validator, VALIDATOR_STAKE),
    ] {
        for k in keys {
            balances.push(GenesisBalance {
                address: k.address(),
                amount: FUNDS,
            });
            stakes.push(GenesisStake {
                address: k.address(),
                role,
                amount: stake,
            });
        }
    }
    let genesis = crate::genesis_builder::build(
        "pot-devnet".into(),
        crate::chain::now_ms(),
        Params {
            block_time_ms: opts.block_time_ms,
            ..Params::default()
        },
        &coord_keys,
        balances,
        stakes,
    )?;
    let genesis_path = dir.join("genesis.yaml");
    std::fs::write(&genesis_path, genesis.to_yaml())?;

    // Coordinators.
    let n = opts.coordinators;
    let ports = |k: usize| -> anyhow::Result<Vec<u16>> { (0..k).map(|_| free_port()).collect() };
    let (p2p, gossip, api, art) = (ports(n)?, ports(n)?, ports(n)?, ports(n)?);
    let others = |ports: &[u16], i: usize| -> String {
        (0..n)
            .filter(|j| *j != i)
            .map(|j| format!("/ip4/127.0.0.1/tcp/{}", ports[j]))
            .collect::<Vec<_>>()
            .join(",")
    };
    let apis: Vec<String> = api
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let bootstrap: Vec<String> = coord_keys
        .iter()
        .zip(&art)
        .map(|(k, p)| {
            let peer = crate::artifacts::peer_of(&k.address()).expect("an ed25519 key");
            format!("/ip4/127.0.0.1/tcp/{p}/p2p/{peer}")
        })
        .collect();
    let mut procs = Vec::new();
    for i in 0..n {
        let mut args = vec![
            "run".to_string(),
            "--role=coordinator".into(),
            format!("--genesis={}", genesis_path.display()),
            format!(
                "--key={}",
                dir.join(format!("coordinator{i}.key")).display()
            ),
            format!(
                "--data-dir={}",
                dir.join(format!("coordinator{i}")).display()
            ),
            format!("--p2p-listen=/ip4/127.0.0.1/tcp/{}", p2p[i]),
            format!("--api-listen=127.0.0.1:{}", api[i]),
            format!("--artifacts-listen=/ip4/127.0.0.1/tcp/{}", art[i]),
        ];
        if n > 1 {
            args.push(format!("--peers={}", others(&p2p, i)));
            args.push(format!("--gossip-listen=/ip4/127.0.0.1/tcp/{}", gossip[i]));
            args.push(format!("--gossip-peers={}", others(&gossip, i)));
        }
        procs.push(spawn(&opts.bin, dir, &format!("coordinator{i}"), &args)?);
    }
    let client = Client::new(apis[0].clone());
    wait_until(Duration::from_secs(120), &opts.bin, &mut procs, || async {
        client.head().await.is_ok_and(|h| h.height >= 1)
    })
    .await
    .context("waiting for the coordinators' first block")?;

    // Miners and validators.
    let node_args = |role: &str, name: &str| -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "run".to_string(),
            format!("--role={role}"),
            format!("--genesis={}", genesis_path.display()),
            format!("--key={}", dir.join(format!("{name}.key")).display()),
            format!("--data-dir={}", dir.join(name).display()),
            format!("--api-listen=127.0.0.1:{}", free_port()?),
            format!("--artifacts-listen=/ip4/127.0.0.1/tcp/{}", free_port()?),
            format!("--bootstrap={}", bootstrap.join(",")),
            format!("--coordinator={}", apis.join(",")),
        ])
    };
    let mut miner_apis = Vec::new();
    for i in 0..opts.miners {
        let name = format!("miner{i}");
        let mut args = node_args("miner", &name)?;
        args.push("--no-validate".into());
        args.extend(opts.miner_args.get(i).cloned().unwrap_or_default());
        miner_apis.push(api_of(&args));
        procs.push(spawn(&opts.bin, dir, &name, &args)?);
    }
    for i in 0..opts.validators {
        let name = format!("validator{i}");
        let mut args = node_args("validator", &name)?;
        args.extend(opts.validator_args.get(i).cloned().unwrap_or_default());
        procs.push(spawn(&opts.bin, dir, &name, &args)?);
    }
    for i in 0..opts.verifiers {
        let name = format!("verifier{i}");
        let mut args = node_args("validator", &name)?;
        args.push("--verify-reports".into());
        procs.push(spawn(&opts.bin, dir, &name, &args)?);
    }

    // The client: a node of its own that serves the task's local files (published by hash) and
    // reveals the eval set when its window opens; this command submits the task for it.
    let client_dir = dir.join("client");
    let mut task_file = task_file;
    let store = crate::artifacts::BlobStore::open(&client_dir.join("artifacts"))?;
    let held = crate::roles::client::held_store(&client_dir);
    for blob in crate::roles::client::publish_local(&mut task_file, &store, &held)? {
        println!("published pot://{blob}");
    }
    let secrets = crate::roles::client::secrets_dir(&client_dir);
    std::fs::create_dir_all(&secrets)?;
    procs.push(spawn(
        &opts.bin,
        dir,
        "client",
        &node_args("client", "client")?,
    )?);
    let wallet = Wallet {
        client: client.clone(),
        key: client_key.clone(),
        fee: None,
    };
    let mut ids = Vec::new();
    let mut submitted_at = Vec::new();
    for _ in 0..opts.tasks.max(1) {
        let id = wallet
            .submit_task(&task_file, &secrets, Duration::from_secs(60))
            .await?;
        println!("task {id} submitted; network in {}", dir.display());
        ids.push(id);
        submitted_at.push(Instant::now());
    }
    let many = ids.len() > 1;

    let multi = MultiProgress::new();
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    let bars: Vec<ProgressBar> = (0..opts.miners)
        .map(|i| {
            let bar = multi.add(ProgressBar::new(task_file.spec.steps));
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "miner{i} {{bar:30}} {{pos}}/{{len}} {{msg}}"
                ))
                .expect("valid template"),
            );
            bar
        })
        .collect();
    let miner_clients: Vec<Client> = miner_apis.iter().map(Client::new).collect();
    let mut last_phase = vec![None; ids.len()];
    let mut revealed = vec![false; ids.len()];
    let mut ended_after: Vec<Option<f64>> = vec![None; ids.len()];
    let infos = loop {
        supervise(&opts.bin, &mut procs)?;
        if started.elapsed() > opts.timeout {
            bail!(
                "the tasks did not finish within {:?}; logs in {}",
                opts.timeout,
                dir.display()
            );
        }
        let Ok(head) = client.head().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut infos = Vec::new();
        for id in &ids {
            match client.task(id).await {
                Ok(info) => infos.push(info),
                Err(_) => break,
            }
        }
        if infos.len() < ids.len() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        for (k, info) in infos.iter().enumerate() {
            let which = if many {
                format!("task {k}")
            } else {
                "task".into()
            };
            if last_phase[k] != Some(info.phase) {
                say(
                    &multi,
                    format!(
                        "height {:>5}  {which} is in phase {:?}",
                        head.height, info.phase
                    ),
                )?;
                last_phase[k] = Some(info.phase);
            }
            if !revealed[k] && info.task.eval_set.is_some() {
                revealed[k] = true;
                say(
                    &multi,
                    format!("the client revealed the eval set of {which}"),
                )?;
            }
            if ended_after[k].is_none() && matches!(info.phase, Phase::Finalized | Phase::Failed) {
                ended_after[k] = Some(submitted_at[k].elapsed().as_secs_f64());
            }
        }
        let done = ended_after.iter().filter(|e| e.is_some()).count();
        let progress = if many {
            format!("  {done}/{} tasks ended", ids.len())
        } else {
            String::new()
        };
        header.set_message(format!(
            "height {}  phase {:?}{progress}",
            head.height, infos[0].phase
        ));
        header.tick();
        for (bar, mc) in bars.iter().zip(&miner_clients) {
            if let Ok(s) = mc.node_status().await {
                let work = s
                    .tasks
                    .values()
                    .find(|w| matches!(w, TaskWork::Training { .. }))
                    .or_else(|| s.tasks.values().next());
                match work {
                    Some(TaskWork::Training {
                        step,
                        loss,
                        steps_per_second,
                        ..
                    }) => {
                        bar.set_position(*step);
                        bar.set_message(format!(
                            "loss {}  {} steps/s",
                            loss.map_or("-".into(), |l| format!("{l:.3}")),
                            steps_per_second.map_or("-".into(), |r| format!("{r:.0}"))
                        ));
                    }
                    Some(other) => {
                        bar.set_position(task_file.spec.steps);
                        bar.set_message(format!("{other:?}").to_lowercase());
                    }
                    None => {}
                }
            }
        }
        if done == ids.len() {
            break infos;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    header.finish_and_clear();
    for b in &bars {
        b.finish();
    }
    let info = infos[0].clone();
    let winner_held_out_accuracy = match &info.task.status {
        TaskStatus::Finalized(o) => match o.winner {
            Some(w) => Some(
                score_winner(&client, &info.task, &w, dir)
                    .await
                    .context("scoring the winner's model")?,
            ),
            None => None,
        },
        _ => None,
    };
    let mut accounts = Vec::new();
    for a in miner_keys
        .iter()
        .chain(&validator_keys)
        .chain(&verifier_keys)
        .chain([&client_key])
        .map(SecretKey::address)
    {
        accounts.push(client.account(&a).await?);
    }
    let mut work_seconds = std::collections::BTreeMap::<String, f64>::new();
    let mut coordinator_cpu_seconds = 0.0;
    for p in &procs {
        if p.name.starts_with("coordinator") {
            coordinator_cpu_seconds += p.child.id().map_or(0.0, cpu_seconds);
        } else if p.name != "client"
            && let Ok(s) = Client::new(api_of(&p.args)).node_status().await
        {
            for (kind, seconds) in s.work_seconds {
                *work_seconds.entry(kind).or_default() += seconds;
            }
        }
    }
    let summary = Summary {
        task: ids[0],
        phase: info.phase,
        miners: miner_keys.iter().map(SecretKey::address).collect(),
        validators: validator_keys.iter().map(SecretKey::address).collect(),
        verifiers: verifier_keys.iter().map(SecretKey::address).collect(),
        client: client_key.address(),
        info,
        tasks: infos,
        task_seconds: ended_after.into_iter().map(|e| e.unwrap_or(0.0)).collect(),
        accounts,
        restarts: procs
            .iter()
            .filter(|p| p.restarts > 0)
            .map(|p| (p.name.clone(), p.restarts))
            .collect(),
        winner_held_out_accuracy,
        seconds: started.elapsed().as_secs_f64(),
        work_seconds,
        coordinator_cpu_seconds,
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    for p in &mut procs {
        let _ = p.child.start_kill();
    }
    Ok(summary)
}

/// Fetch the winner's model by its hash from the network (through a coordinator's API, which
/// fetches it from the miner's swarm) and score it on the task's held-out split.
async fn score_winner(
    client: &Client,
    task: &pot_protocol::state::Task,
    winner: &Address,
    dir: &Path,
) -> anyhow::Result<f64> {
    let entry = &task.claims[winner];
    let claim = entry
        .claim
        .clone()
        .context("the winner revealed no claim")?;
    let salt = entry.salt.context("the winner revealed no salt")?;
    let model = tokio::time::timeout(
        Duration::from_secs(300),
        client.task_artifact(&claim.model_hash, &task.id),
    )
    .await
    .context("fetching the winner's model took over 300 s")??;
    let spec = task.spec.clone();
    let cache = crate::train::fetch::Cache::new(dir.join("client-cache"));
    let winner = *winner;
    tokio::task::spawn_blocking(move || {
        crate::train::determinism::exact_cpu_kernels(spec.verification.is_exact());
        let run = crate::train::task::run_spec(
            &spec,
            &claim.hyper,
            &winner,
            &salt,
            tch::Device::Cpu,
            &cache,
        )?;
        let (train, held_out) = crate::train::task::load_data(&spec, &cache)?;
        let t = crate::train::Trainer::from_checkpoint(&run, &train, &model, spec.steps)?;
        Ok(t.accuracy(&held_out))
    })
    .await?
}

/// The final table: claims, verdicts, metrics, winner, payouts.
pub fn table(s: &Summary) -> String {
    use std::fmt::Write as _;
    let name = |a: &Address| -> String {
        if let Some(i) = s.miners.iter().position(|m| m == a) {
            format!("miner{i}")
        } else if let Some(i) = s.validators.iter().position(|m| m == a) {
            format!("validator{i}")
        } else if let Some(i) = s.verifiers.iter().position(|m| m == a) {
            format!("verifier{i}")
        } else if *a == s.client {
            "client".into()
        } else {
            a.to_string()[..12].to_string()
        }
    };
    let mut out = String::new();
    if s.tasks.len() > 1 {
        let ended = s.task_seconds.iter().cloned().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "{} tasks ended within {ended:.0} s of their submission ({:.2} a minute); the first:\n",
            s.tasks.len(),
            s.tasks.len() as f64 * 60.0 / ended.max(1e-9)
        );
    }
    let t = &s.info.task;
    let _ = writeln!(
        out,
        "task {}: {:?} after {:.0} s",
        s.task, s.phase, s.seconds
    );
    let _ = writeln!(out, "\n{:<10} {:<34} {:>8}", "claim", "verdicts", "metric");
    for (miner, c) in &t.claims {
        let verdicts: Vec<String> = c
            .reports
            .iter()
            .map(|(v, r)| {
                let verdict = r
                    .report
                    .as_ref()
                    .map_or("hidden".to_string(), |r| match r.verdict {
                        pot_protocol::tx::Verdict::Valid => "valid".into(),
                        pot_protocol::tx::Verdict::Invalid(why) => format!("{why:?}"),
                    });
                format!("{}:{verdict}", name(v))
            })
            .collect();
        let metric = c
            .reports
            .values()
            .filter_map(|r| r.report.as_ref().map(|r| r.metric.to_string()))
            .next()
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<10} {:<34} {:>8}",
            name(miner),
            verdicts.join(" "),
            metric
        );
    }
    match &t.status {
        TaskStatus::Finalized(o) => {
            let winner = o.winner.as_ref().map_or("none".into(), name);
            let metric = o.winning_metric.map_or("-".into(), |m| m.to_string());
            let _ = writeln!(
                out,
                "\nwinner: {winner} (metric {metric}), minted {}",
                o.minted
            );
            if let Some(acc) = s.winner_held_out_accuracy {
                let _ = writeln!(out, "winner's model on the task's held-out split: {acc:.4}");
            }
            let _ = writeln!(out, "\n{:<12} {:>12}  kind", "payout to", "amount");
            for p in &o.payouts {
                let _ = writeln!(out, "{:<12} {:>12}  {:?}", name(&p.to), p.amount, p.kind);
            }
            for sl in &o.slashes {
                let _ = writeln!(
                    out,
                    "slashed {:<10} {:>10}  {:?}",
                    name(&sl.who),
                    sl.amount,
                    sl.reason
                );
            }
        }
        TaskStatus::Failed { reason, .. } => {
            let _ = writeln!(out, "\nfailed: {reason:?}");
        }
        TaskStatus::Active => {}
    }
    if !s.work_seconds.is_empty() {
        let work: Vec<String> = s
            .work_seconds
            .iter()
            .map(|(k, v)| format!("{k} {v:.1} s"))
            .collect();
        let _ = writeln!(
            out,
            "\nwork: {}; coordinators' CPU {:.1} s",
            work.join(", "),
            s.coordinator_cpu_seconds
        );
    }
    out
}

/// A line above the progress bars, or on its own when they are hidden (not a terminal).
fn say(multi: &MultiProgress, line: impl AsRef<str>) -> std::io::Result<()> {
    if multi.is_hidden() {
        println!("{}", line.as_ref());
        Ok(())
    } else {
        multi.println(line)
    }
}

/// Group `I=ARG` pairs into each node's extra arguments.
pub fn per_node_args(pairs: &[String], nodes: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); nodes];
    for p in pairs {
        let (i, arg) = p
            .split_once('=')
            .with_context(|| format!("{p:?}: expected INDEX=ARGUMENT"))?;
        let i: usize = i
            .parse()
            .with_context(|| format!("{p:?}: {i:?} is not a node index"))?;
        anyhow::ensure!(i < nodes, "{p:?}: there are only {nodes} such nodes");
        out[i].push(arg.to_string());
    }
    Ok(out)
}

/// A loopback port for a node to listen on, not handed out before by this process. Ports come
/// from below the kernel's ephemeral range: one taken with `bind(0)` and released would be fair
/// game for the next outgoing connection of any process (and a node restarted with it would
/// find it taken).
fn free_port() -> anyhow::Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (start, end) = (low.saturating_sub(12_000).max(1024), low);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let seed = std::process::id() as u64 ^ crate::chain::now_ms();
    let span = u64::from(end - start);
    for i in 0..span {
        let port = start + (seed.wrapping_mul(7919).wrapping_add(i) % span) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {start}..{end}")
}

/// CPU seconds (user and system) process `pid` has used, from `/proc/<pid>/stat`; 0 when it
/// cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name (which may hold spaces, in parentheses): state is the first field,
    // utime the 12th and stime the 13th, in clock ticks.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // In USER_HZ, which Linux fixes at 100 for user space on every architecture it runs on.
    ticks as f64 / 100.0
}

fn api_of(args: &[String]) -> String {
    let addr = args
        .iter()
        .find_map(|a| a.strip_prefix("--api-listen="))
        .expect("every node has an API");
    format!("http://{addr}")
}

fn spawn(bin: &Path, dir: &Path, name: &str, args: &[String]) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    Ok(Proc {
        name: name.into(),
        args: args.to_vec(),
        child: start(bin, name, args, &log)?,
        log,
        restarts: 0,
    })
}

/// Start a process, its output appended to `log`.
fn start(bin: &Path, name: &str, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name} ({})", bin.display()))
}

/// Restart a process that exited, as a pod's `restartPolicy: Always` would (it resumes from
/// its data directory); fail after `MAX_RESTARTS` of one process.
fn supervise(bin: &Path, procs: &mut [Proc]) -> anyhow::Result<()> {
    for p in procs {
        if let Some(status) = p.child.try_wait()? {
            if p.restarts >= MAX_RESTARTS {
                bail!(
                    "{} exited ({status}) after {} restarts; its log: {}",
                    p.name,
                    p.restarts,
                    p.log.display()
                );
            }
            p.restarts += 1;
            println!("{} exited ({status}); restarting it", p.name);
            p.child = start(bin, &p.name, &p.args, &p.log)?;
        }
    }
    Ok(())
}

async fn wait_until<F, Fut>(
    limit: Duration,
    bin: &Path,
    procs: &mut [Proc],
    mut ok: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        supervise(bin, procs)?;
        if start.elapsed() > limit {
            bail!("not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_counts_this_process_work() {
        let before = cpu_seconds(std::process::id());
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = cpu_seconds(std::process::id());
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
