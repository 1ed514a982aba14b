//! The `pot-node` command line.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pot_node::chain::now_ms;
use pot_node::train::allocator::keep_freed_memory_for_reuse;
use pot_node::train::fetch::Cache;
use pot_node::train::task::TaskFile;
use pot_node::wallet::Wallet;
use pot_node::{commands, genesis_builder, keyfile};
use pot_protocol::client::Client;
use pot_protocol::{Address, Genesis, Hash, Params, SecretKey, State};

#[derive(Parser)]
#[command(name = "pot-node", version, about = "Proof-of-Training network node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new ed25519 account key and print its address.
    Keygen {
        /// Where to write the key file (JSON, mode 0600); never overwritten.
        #[arg(long, env = "POT_KEY")]
        out: PathBuf,
    },
    /// Print the address of a key file.
    Address {
        #[arg(long, env = "POT_KEY")]
        key: PathBuf,
    },
    /// Write a genesis file from flags, or check an existing one with --check.
    Genesis {
        #[arg(long, env = "POT_CHAIN_ID", default_value = "pot-devnet")]
        chain_id: String,
        /// Genesis time, Unix milliseconds (default: now).
        #[arg(long)]
        time_ms: Option<u64>,
        /// A coordinator's key file (repeat for each coordinator).
        #[arg(long = "coordinator-key")]
        coordinator_keys: Vec<PathBuf>,
        /// Initial balance, `ADDRESS=AMOUNT` (repeatable).
        #[arg(long = "fund")]
        balances: Vec<String>,
        /// Initial bond, `ADDRESS:miner|validator=AMOUNT` (repeatable).
        #[arg(long = "stake")]
        stakes: Vec<String>,
        /// A YAML file with chain parameters (defaults for anything it omits).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validate this genesis file and print its hash and state root instead.
        #[arg(long, conflicts_with_all = ["out", "coordinator_keys", "balances", "stakes", "params"])]
        check: Option<PathBuf>,
    },
    /// Train a task file (YAML) and write checkpoints and a manifest into a run directory.
    Train {
        /// The task file (the format `task submit` takes; its submission fields are ignored).
        #[arg(long, visible_alias = "spec")]
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// A hyper-parameter value, `NAME=VALUE` within the task's range (default: the task's
        /// default); comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        hyper: Vec<String>,
        /// The miner whose run this is: its address goes into the run seed.
        #[arg(long, env = "POT_MINER", default_value_t = Address::default())]
        miner: Address,
        /// The claim salt that goes into the run seed (hex).
        #[arg(long, default_value_t = Hash::ZERO)]
        salt: Hash,
        /// libtorch intra-op threads (default: the task's cpu_threads, which a task demanding
        /// bit-identical replays fixes; else 1).
        #[arg(long, env = "POT_THREADS")]
        threads: Option<i32>,
        /// libtorch's CPU kernel level (ATEN_CPU_CAPABILITY), fixed so replays match.
        #[arg(long, env = "POT_CPU_CAPABILITY", default_value = "avx2")]
        cpu_capability: String,
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Verify a claim as a validator does: from what the chain records (the task, the miner,
    /// its salt, the checkpoint root and model hash, the sampled segments), reading the
    /// checkpoints from a run directory. Prints the report; fails if the claim is invalid.
    Verify {
        /// The task file.
        #[arg(long, visible_alias = "spec")]
        file: PathBuf,
        /// The hyper-parameters the claim names, `NAME=VALUE` (default: the task's defaults).
        #[arg(long, value_delimiter = ',')]
        hyper: Vec<String>,
        /// Where the miner's checkpoints are (its manifest is used only to build Merkle proofs,
        /// which are checked against --checkpoint-root).
        #[arg(long)]
        run: PathBuf,
        /// The miner whose claim this is.
        #[arg(long)]
        miner: Address,
        /// The salt the miner revealed (hex).
        #[arg(long)]
        salt: Hash,
        /// The claim's Merkle root over its checkpoint hashes (hex).
        #[arg(long)]
        checkpoint_root: Hash,
        /// The claim's model hash: the last checkpoint's (hex).
        #[arg(long)]
        model_hash: Hash,
        /// The beacon-sampled segment indices to replay, comma-separated (the task's top-Q
        /// largest updates are replayed besides).
        #[arg(long, value_delimiter = ',', required = true)]
        segments: Vec<u32>,
        /// libtorch intra-op threads for the replays (default: as for train).
        #[arg(long, env = "POT_THREADS")]
        threads: Option<i32>,
        /// libtorch's CPU kernel level (ATEN_CPU_CAPABILITY) for the replays.
        #[arg(long, env = "POT_CPU_CAPABILITY", default_value = "avx2")]
        cpu_capability: String,
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Measurements for `make bench` (JSON on standard output).
    #[command(hide = true)]
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Run a node. Coordinators order transactions into blocks with BFT consensus and serve
    /// the HTTP API; miners train open tasks; validators check claims.
    Run(RunArgs),
    /// Start a whole network on loopback (coordinators, miners, validators as processes of
    /// this binary), submit a task, show its progress, and print the outcome. Ctrl-C stops
    /// everything it started.
    Devnet {
        #[arg(long, default_value_t = 4)]
        coordinators: usize,
        #[arg(long, default_value_t = 3)]
        miners: usize,
        #[arg(long, default_value_t = 3)]
        validators: usize,
        /// Nodes that re-check revealed reports and challenge wrong ones.
        #[arg(long, default_value_t = 0)]
        verifiers: usize,
        /// Copies of the task to submit at once (throughput).
        #[arg(long, default_value_t = 1)]
        tasks: usize,
        /// The task file to submit (its bounty, eval_set and windows included).
        #[arg(long)]
        task: PathBuf,
        /// Where keys, chain data and logs go (default: a new directory under /tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        block_time_ms: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// An extra `run` argument for one miner, `INDEX=ARGUMENT` (e.g. `0=--device=cuda`);
        /// repeatable.
        #[arg(long = "miner-arg")]
        miner_args: Vec<String>,
        /// An extra `run` argument for one validator, `INDEX=ARGUMENT`; repeatable.
        #[arg(long = "validator-arg")]
        validator_args: Vec<String>,
    },
    /// Sign and submit a transaction, and wait until it is in a block.
    Tx {
        #[command(flatten)]
        signer: SignerArgs,
        #[command(subcommand)]
        what: TxWhat,
    },
    /// Submit a task, or show one.
    Task {
        #[command(subcommand)]
        what: TaskWhat,
    },
    /// Show the chain.
    Chain {
        #[command(subcommand)]
        what: ChainWhat,
    },
    /// Evaluate a run's final model on the task's held-out data.
    Eval {
        /// The task file.
        #[arg(long, visible_alias = "spec")]
        file: PathBuf,
        #[arg(long)]
        run: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        cache: CacheArg,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Training steps per second on the built-in digits.
    Throughput {
        #[arg(long)]
        model: String,
        /// `digits` (the built-in UCI digits) or `cifar-shaped` (random 3×32×32 images).
        #[arg(long, default_value = "digits")]
        data: String,
        #[arg(long)]
        batch: i64,
        #[arg(long)]
        threads: i32,
        #[arg(long, default_value_t = 300)]
        steps: u64,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Checkpointing and verification cost against plain training.
    Overhead {
        #[arg(long)]
        model: String,
        #[arg(long)]
        steps: u64,
        #[arg(long)]
        k: u64,
        #[arg(long, default_value_t = 5)]
        segments: u32,
    },
    /// Verification's cost against training, and the share of one-segment splices it catches.
    Verification {
        #[arg(long)]
        model: String,
        #[arg(long)]
        steps: u64,
        #[arg(long)]
        k: u64,
        /// Sampled segments.
        #[arg(long, default_value_t = 5)]
        s: u32,
        /// Largest updates replayed besides.
        #[arg(long, default_value_t = 3)]
        q: u32,
        /// Spliced runs to judge.
        #[arg(long, default_value_t = 40)]
        trials: u32,
    },
    /// A coordinator's cost per block against the size of the state.
    BlockCost {
        #[arg(long)]
        accounts: usize,
        #[arg(long, default_value_t = 1000)]
        txs: usize,
        #[arg(long, default_value_t = 5)]
        blocks: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NodeRole {
    /// Agree on blocks (consensus) and serve the API.
    Coordinator,
    /// Take open tasks, train them, commit and reveal claims; validates too unless
    /// `--no-validate`.
    Miner,
    /// Verify the claims this node is assigned to, and commit and reveal reports.
    Validator,
    /// Serve a client's published datasets and reveal its eval sets when their windows open
    /// (`task submit --publish-to` this node's data directory).
    Client,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, env = "POT_ROLE", value_enum, default_value = "coordinator")]
    role: NodeRole,
    /// The genesis file (YAML). With --dev it is created in the data directory if missing.
    #[arg(long, env = "POT_GENESIS", required_unless_present = "dev")]
    genesis: Option<PathBuf>,
    /// This node's key file. With --dev it is created in the data directory if missing.
    #[arg(long, env = "POT_KEY", required_unless_present = "dev")]
    key: Option<PathBuf>,
    /// Where blocks, state and the consensus WAL are kept.
    #[arg(long, env = "POT_DATA_DIR", default_value = "pot-data")]
    data_dir: PathBuf,
    /// libp2p listen address for consensus.
    #[arg(long, env = "POT_P2P_LISTEN", default_value = "/ip4/0.0.0.0/tcp/26656")]
    p2p_listen: multiaddr::Multiaddr,
    /// HTTP API listen address.
    #[arg(long, env = "POT_API_LISTEN", default_value = "127.0.0.1:26657")]
    api_listen: std::net::SocketAddr,
    /// Other coordinators' libp2p addresses (comma-separated or repeated).
    #[arg(long, env = "POT_PEERS", value_delimiter = ',')]
    peers: Vec<multiaddr::Multiaddr>,
    /// libp2p listen address for transaction gossip between coordinators (off when unset).
    #[arg(long, env = "POT_GOSSIP_LISTEN")]
    gossip_listen: Option<multiaddr::Multiaddr>,
    /// Other coordinators' gossip addresses (comma-separated or repeated).
    #[arg(
        long,
        env = "POT_GOSSIP_PEERS",
        value_delimiter = ',',
        requires = "gossip_listen"
    )]
    gossip_peers: Vec<multiaddr::Multiaddr>,
    /// libp2p listen address of the artifact swarm (checkpoints, models, datasets; off when
    /// unset).
    #[arg(long, env = "POT_ARTIFACTS_LISTEN")]
    artifacts_listen: Option<multiaddr::Multiaddr>,
    /// Artifact swarm peers to join the network through (comma-separated or repeated; with or
    /// without `/p2p/<peer id>`).
    #[arg(
        long,
        env = "POT_BOOTSTRAP",
        value_delimiter = ',',
        requires = "artifacts_listen"
    )]
    bootstrap: Vec<multiaddr::Multiaddr>,
    /// One coordinator on this machine: a genesis with this node's key as the only
    /// coordinator and a funded account, through the same consensus and block path.
    #[arg(long)]
    dev: bool,
    /// The record of what this node's key signed, consulted before every consensus signature
    /// (default: `<data-dir>/sign-state.json`). Keep it with the key: never restore it from a
    /// backup or delete it while the key is in use.
    #[arg(long, env = "POT_SIGN_STATE")]
    sign_state: Option<PathBuf>,
    /// Start a new signing record although the chain database is not empty (the node refuses
    /// to otherwise). Only when this key has never signed on this chain, or its last signature
    /// is long decided.
    #[arg(long)]
    new_sign_state: bool,
    /// Deliberate misbehaviour, for tests (only in builds with `fault-injection`).
    #[cfg(feature = "fault-injection")]
    #[command(flatten)]
    faults: pot_node::consensus::faults::Faults,
    /// Log as JSON lines (for pods) instead of text.
    #[arg(long, env = "POT_LOG_JSON")]
    log_json: bool,
    /// Miners and validators: the coordinators' HTTP APIs, whose blocks it follows (checking
    /// each commit certificate) and to which it sends transactions (comma-separated or
    /// repeated).
    #[arg(long = "coordinator", env = "POT_COORDINATORS", value_delimiter = ',')]
    coordinators: Vec<String>,
    /// Miners: tasks trained at once (default: one per GPU, else 1).
    #[arg(long, env = "POT_SLOTS")]
    slots: Option<usize>,
    /// Miners: how to pick each claim's hyper-parameters within the task's ranges: the task's
    /// defaults, or one random draw per claim (seeded by its secret salt).
    #[arg(long, env = "POT_HYPER_SEARCH", value_enum, default_value = "defaults")]
    hyper_search: pot_node::roles::miner::HyperSearch,
    /// Miners: do not validate (miners validate the claims they are assigned to by default).
    #[arg(long, env = "POT_NO_VALIDATE")]
    no_validate: bool,
    /// Validators, and miners that validate: validator stake to keep bonded, topped up from
    /// the balance whenever less is bonded (at first start, after a slash). Unset: bond
    /// nothing; only stake bonded otherwise (at genesis, `bond`) counts.
    #[arg(long, env = "POT_VALIDATOR_STAKE", default_value_t = 0)]
    validator_stake: u64,
    /// Miners and validators: re-check the revealed reports of tasks this node has no part
    /// in, and challenge a report that states what a replay contradicts (a verifier).
    #[arg(long, env = "POT_VERIFY_REPORTS")]
    verify_reports: bool,
    /// Miners and validators: a file holding the token `POST /v1/node/drain` must present
    /// (a mounted Secret); draining is off without it.
    #[arg(long, env = "POT_DRAIN_TOKEN_FILE")]
    drain_token_file: Option<PathBuf>,
    /// Miners and validators: libtorch's CPU kernel level (ATEN_CPU_CAPABILITY), fixed so
    /// replays match across nodes.
    #[arg(long, env = "POT_CPU_CAPABILITY", default_value = "avx2")]
    cpu_capability: String,
    /// Miners and validators: blocks after a task ends that its artifacts are still served.
    #[arg(long, env = "POT_RETENTION_BLOCKS", default_value_t = 1000)]
    retention_blocks: u64,
    #[command(flatten)]
    device: DeviceArg,
    /// Cheat as a miner (only in builds with `fault-injection`).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_enum)]
    cheat: Option<pot_node::roles::cheats::Cheat>,
    #[cfg(feature = "fault-injection")]
    #[command(flatten)]
    crashes: pot_node::roles::cheats::Crashes,
}

#[derive(clap::Args)]
struct ApiArg {
    /// A node's HTTP API.
    #[arg(long, env = "POT_NODE", default_value = "http://127.0.0.1:26657")]
    node: String,
}

#[derive(clap::Args)]
struct SignerArgs {
    #[command(flatten)]
    api: ApiArg,
    /// The key file that signs.
    #[arg(long, env = "POT_KEY")]
    key: PathBuf,
    /// How long to wait for the transaction's block, in seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// The fee to offer (burned); default: the chain's minimum `tx_fee`. A full mempool keeps
    /// the transactions that offer more.
    #[arg(long)]
    fee: Option<u64>,
}

#[derive(Subcommand)]
enum TxWhat {
    /// Move tokens to another account.
    Transfer {
        #[arg(long)]
        to: Address,
        #[arg(long)]
        amount: u64,
    },
    /// Bond stake as a miner or a validator.
    Bond {
        #[arg(long, value_parser = parse_role)]
        role: pot_protocol::tx::Role,
        #[arg(long)]
        amount: u64,
    },
    /// Submit a training task: the same as `pot-node task submit`.
    SubmitTask {
        #[arg(long, visible_alias = "file")]
        task: PathBuf,
        /// Where to write the eval-set secret needed to reveal it later (written before the
        /// transaction is sent; must not exist).
        #[arg(long)]
        secret_out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TaskWhat {
    /// Submit a task file (the task, plus bounty, eval_set and windows): checks it, commits to
    /// the eval set, escrows the bounty, and prints the task id.
    Submit {
        #[command(flatten)]
        signer: SignerArgs,
        #[arg(long)]
        file: PathBuf,
        /// Where to write the eval-set secret needed to reveal it later (written before the
        /// transaction is sent; a file must not exist, a directory gets `<task id>.json`).
        #[arg(long, required_unless_present = "publish_to")]
        secret_out: Option<PathBuf>,
        /// A client node's data directory: local dataset and eval set files are put into its
        /// artifact store and named `pot://<sha256>`, and the eval secret goes into its
        /// `eval-secrets/`; `pot-node run --role client --data-dir DIR` then serves them and
        /// reveals the eval set when its window opens.
        #[arg(long)]
        publish_to: Option<PathBuf>,
    },
    /// Show a task: spec, phase, claims, reports, result and payouts (JSON).
    Get {
        id: Hash,
        #[command(flatten)]
        api: ApiArg,
    },
}

#[derive(Subcommand)]
enum ChainWhat {
    /// The last decided block (JSON).
    Head {
        #[command(flatten)]
        api: ApiArg,
    },
}

fn parse_role(s: &str) -> Result<pot_protocol::tx::Role, String> {
    match s {
        "miner" => Ok(pot_protocol::tx::Role::Miner),
        "validator" => Ok(pot_protocol::tx::Role::Validator),
        other => Err(format!("role is miner or validator, not {other:?}")),
    }
}

#[derive(clap::Args)]
struct DeviceArg {
    /// Where to train: `cpu` (bit-identical replays), `cuda`, `cuda:N` (needs a build with the
    /// `cuda` feature; replays need the task's replay_tolerance), or `auto`.
    #[arg(long, env = "POT_DEVICE", default_value = "cpu")]
    device: String,
}

impl DeviceArg {
    fn device(&self) -> anyhow::Result<tch::Device> {
        commands::parse_device(&self.device)
    }
}

#[derive(clap::Args)]
struct CacheArg {
    /// Content-addressed cache of fetched datasets (default ~/.cache/pot-k8s/data).
    #[arg(long = "data-cache", env = "POT_DATA_CACHE")]
    dir: Option<PathBuf>,
}

impl CacheArg {
    fn cache(&self) -> Cache {
        Cache::new(self.dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            Path::new(&home).join(".cache/pot-k8s/data")
        }))
    }
}

/// libtorch reads `ATEN_CPU_CAPABILITY` once, when it loads; to fix it, run this program again
/// with the variable set (setting it in-process would be too late and is not thread-safe).
/// Re-run this process with the environment a replayable CPU run needs (libtorch reads it when
/// it loads), unless it already has it. See `train::determinism`.
fn pin_replay_environment(wanted: &str) -> anyhow::Result<()> {
    use pot_node::train::determinism;
    if determinism::environment_is_pinned(wanted) {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let err = Process::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .envs(determinism::pinned_environment(wanted))
        .exec();
    Err(err).context("re-running with ATEN_CPU_CAPABILITY and MKL_CBWR set")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Keygen { out } => {
            let key = SecretKey::generate();
            keyfile::write(&out, &key)?;
            println!("{}", key.address());
        }
        Command::Address { key } => println!("{}", keyfile::read(&key)?.address()),
        Command::Genesis {
            chain_id,
            time_ms,
            coordinator_keys,
            balances,
            stakes,
            params,
            out,
            check,
        } => {
            if let Some(path) = check {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let g = Genesis::from_yaml(&text)
                    .with_context(|| format!("genesis file {}", path.display()))?;
                let state = State::from_genesis(&g);
                println!("chain_id:   {}", g.chain_id);
                println!("hash:       {}", g.hash());
                println!("state_root: {}", state.state_root());
                println!("supply:     {}", g.total_supply()?);
                return Ok(());
            }
            let params: Params = match params {
                Some(p) => {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    pot_protocol::genesis::params_from_yaml(&text)
                        .with_context(|| format!("params file {}", p.display()))?
                }
                None => Params::default(),
            };
            let coordinators = coordinator_keys
                .iter()
                .map(|p| keyfile::read(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let balances = balances
                .iter()
                .map(|s| genesis_builder::parse_balance(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let stakes = stakes
                .iter()
                .map(|s| genesis_builder::parse_stake(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let time_ms = time_ms.unwrap_or_else(now_ms);
            let g =
                genesis_builder::build(chain_id, time_ms, params, &coordinators, balances, stakes)?;
            match out {
                Some(p) => std::fs::write(&p, g.to_yaml())
                    .with_context(|| format!("writing {}", p.display()))?,
                None => print!("{}", g.to_yaml()),
            }
        }
        Command::Train {
            file,
            out,
            hyper,
            miner,
            salt,
            threads,
            cpu_capability,
            device,
            cache,
        } => {
            pin_replay_environment(&cpu_capability)?;
            keep_freed_memory_for_reuse();
            let device = device.device()?;
            let who = commands::RunChoice { miner, salt, hyper };
            let m = commands::train(&file, &out, &who, threads, device, &cache.cache())?;
            println!("device:       {}", m.device);
            println!("checkpoints:  {}", m.checkpoints.len());
            println!("merkle_root:  {}", m.merkle_root);
            println!("model_hash:   {}", m.model_hash);
            println!("final_loss:   {:.4}", m.final_loss);
            println!("held-out acc: {:.4}", m.held_out_accuracy);
            println!(
                "time:         {:.1} s ({:.0} steps/s)",
                m.train_seconds,
                m.steps as f64 / m.train_seconds
            );
        }
        Command::Verify {
            file,
            hyper,
            run,
            miner,
            salt,
            checkpoint_root,
            model_hash,
            segments,
            threads,
            cpu_capability,
            device,
            cache,
        } => {
            pin_replay_environment(&cpu_capability)?;
            keep_freed_memory_for_reuse();
            let task = TaskFile::read(&file)?.spec;
            let claim = pot_node::verify::ClaimFacts {
                miner,
                salt,
                checkpoint_root,
                model_hash,
                steps: task.steps,
                hyper: pot_node::train::task::choose_hyper(&task, &hyper)?,
            };
            let report = commands::verify(
                &file,
                &claim,
                &run,
                &segments,
                threads,
                device.device()?,
                &cache.cache(),
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.valid {
                let why: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
                anyhow::bail!("the claim is not valid: {}", why.join("; "));
            }
        }
        Command::Bench { what } => {
            pin_replay_environment("avx2")?;
            keep_freed_memory_for_reuse();
            let json = match what {
                BenchWhat::Throughput {
                    model,
                    data,
                    batch,
                    threads,
                    steps,
                    device,
                } => serde_json::to_string(&pot_node::bench::throughput(
                    &model,
                    &data,
                    batch,
                    threads,
                    steps,
                    5,
                    device.device()?,
                )?)?,
                BenchWhat::Overhead {
                    model,
                    steps,
                    k,
                    segments,
                } => {
                    serde_json::to_string(&pot_node::bench::overhead(&model, steps, k, segments)?)?
                }
                BenchWhat::Verification {
                    model,
                    steps,
                    k,
                    s,
                    q,
                    trials,
                } => serde_json::to_string(&pot_node::bench::verification::verification(
                    &model, steps, k, s, q, trials,
                )?)?,
                BenchWhat::BlockCost {
                    accounts,
                    txs,
                    blocks,
                } => serde_json::to_string(&pot_node::bench::block_cost::block_cost(
                    accounts, txs, blocks,
                )?)?,
            };
            println!("{json}");
        }
        Command::Run(args) => run_node(args)?,
        Command::Devnet {
            coordinators,
            miners,
            validators,
            verifiers,
            task,
            tasks,
            dir,
            block_time_ms,
            timeout,
            miner_args,
            validator_args,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => tempfile::Builder::new()
                    .prefix("pot-devnet-")
                    .tempdir()?
                    .keep(),
            };
            let opts = pot_node::devnet::Options {
                coordinators,
                miners,
                validators,
                verifiers,
                task,
                tasks,
                dir,
                block_time_ms,
                bin: std::env::current_exe()?,
                miner_args: pot_node::devnet::per_node_args(&miner_args, miners)?,
                validator_args: pot_node::devnet::per_node_args(&validator_args, validators)?,
                timeout: std::time::Duration::from_secs(timeout),
            };
            let summary = runtime()?.block_on(async {
                tokio::select! {
                    s = pot_node::devnet::run(opts) => s.map(Some),
                    _ = tokio::signal::ctrl_c() => Ok(None),
                }
            })?;
            match summary {
                Some(s) => print!("{}", pot_node::devnet::table(&s)),
                None => eprintln!("interrupted: every process it started is stopped"),
            }
        }
        Command::Tx { signer, what } => runtime()?.block_on(send_tx(signer, what))?,
        Command::Task {
            what:
                TaskWhat::Submit {
                    signer,
                    file,
                    secret_out,
                    publish_to,
                },
        } => {
            let mut task = TaskFile::read(&file)?;
            let secret_out = match (&publish_to, secret_out) {
                (_, Some(s)) => s,
                (Some(dir), None) => {
                    let d = pot_node::roles::client::secrets_dir(dir);
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    d
                }
                (None, None) => unreachable!("clap requires one"),
            };
            if let Some(dir) = &publish_to {
                let store = pot_node::artifacts::BlobStore::open(&dir.join("artifacts"))?;
                let held = pot_node::roles::client::held_store(dir);
                for blob in pot_node::roles::client::publish_local(&mut task, &store, &held)? {
                    eprintln!("published pot://{blob} into {}", dir.display());
                }
            }
            let (wallet, wait) = wallet(signer)?;
            runtime()?.block_on(submit_task_with(&wallet, wait, &task, &secret_out))?;
        }
        Command::Task {
            what: TaskWhat::Get { id, api },
        } => {
            let task = runtime()?.block_on(Client::new(api.node).task(&id))?;
            println!("{}", serde_json::to_string_pretty(&task)?);
        }
        Command::Chain {
            what: ChainWhat::Head { api },
        } => {
            let head = runtime()?.block_on(Client::new(api.node).head())?;
            println!("{}", serde_json::to_string_pretty(&head)?);
        }
        Command::Eval {
            file,
            run,
            device,
            cache,
        } => {
            keep_freed_memory_for_reuse();
            let acc = commands::eval(&file, &run, device.device()?, &cache.cache())?;
            println!("accuracy: {acc:.4}");
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(
            "info,informalsystems_malachitebft_core_consensus=warn,informalsystems_malachitebft_engine=warn,informalsystems_malachitebft_network=warn,informalsystems_malachitebft_sync=warn,libp2p=warn,ractor=warn",
        ));
    // Colours only on a terminal: a log file or `kubectl logs` gets plain, greppable text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Read a key file, or with `--dev` create one in the data directory on first start.
fn dev_or_read_key(path: Option<&Path>, dev_path: &Path) -> anyhow::Result<SecretKey> {
    match path {
        Some(p) => keyfile::read(p),
        None if dev_path.exists() => keyfile::read(dev_path),
        None => {
            let key = SecretKey::generate();
            keyfile::write(dev_path, &key)?;
            Ok(key)
        }
    }
}

fn run_node(args: RunArgs) -> anyhow::Result<()> {
    if args.role != NodeRole::Coordinator {
        // Replays are compared bit for bit: every node trains with the same kernels.
        pin_replay_environment(&args.cpu_capability)?;
        anyhow::ensure!(
            !args.dev,
            "--dev starts a one-coordinator chain; a miner or validator joins one with --genesis, \
             --key and --coordinator"
        );
    }
    init_logs(args.log_json);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let key = dev_or_read_key(args.key.as_deref(), &args.data_dir.join("coordinator.key"))?;
    let genesis = match (&args.genesis, args.dev) {
        (Some(p), _) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Genesis::from_yaml(&text).with_context(|| format!("genesis file {}", p.display()))?
        }
        (None, _) => {
            let path = args.data_dir.join("genesis.yaml");
            if path.exists() {
                Genesis::from_yaml(&std::fs::read_to_string(&path)?)
                    .with_context(|| format!("genesis file {}", path.display()))?
            } else {
                let g = genesis_builder::dev(&key, now_ms())?;
                std::fs::write(&path, g.to_yaml())?;
                eprintln!(
                    "dev chain: genesis {} with coordinator {} funded with {}",
                    path.display(),
                    key.address(),
                    genesis_builder::DEV_FUNDS
                );
                g
            }
        }
    };
    if args.dev && genesis.coordinators.len() != 1 {
        anyhow::bail!(
            "--dev runs one coordinator, but the genesis file names {}",
            genesis.coordinators.len()
        );
    }
    if args.role != NodeRole::Coordinator {
        return run_role(args, key, genesis);
    }
    // In a pod, the host name is the pod's name: the peer list may name this pod too.
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    runtime()?.block_on(pot_node::coordinator::run(pot_node::coordinator::Options {
        genesis,
        key,
        data_dir: args.data_dir.clone(),
        p2p_listen: args.p2p_listen,
        api_listen: args.api_listen,
        peers: pot_node::coordinator::peers_other_than(&host, args.peers),
        gossip: args.gossip_listen.map(|l| {
            (
                l,
                pot_node::coordinator::peers_other_than(&host, args.gossip_peers),
            )
        }),
        artifacts: args.artifacts_listen.map(|l| (l, args.bootstrap)),
        sign_state: args
            .sign_state
            .unwrap_or_else(|| args.data_dir.join("sign-state.json")),
        new_sign_state: args.new_sign_state,
        #[cfg(feature = "fault-injection")]
        faults: args.faults,
    }))
}

/// `run --role miner|validator`.
fn run_role(args: RunArgs, key: SecretKey, genesis: Genesis) -> anyhow::Result<()> {
    use pot_node::roles::node;
    let artifacts_listen = args.artifacts_listen.clone().context(
        "a miner or validator serves and fetches artifacts: give --artifacts-listen (and \
         --bootstrap with the coordinators' artifact addresses)",
    )?;
    let device = args.device.device()?;
    let gpus = match device {
        tch::Device::Cuda(_) => tch::Cuda::device_count().max(1) as usize,
        _ => 1,
    };
    let drain_token = match &args.drain_token_file {
        Some(p) => {
            let token = std::fs::read_to_string(p)
                .with_context(|| format!("reading the drain token {}", p.display()))?;
            let token = token.trim().to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "the drain token file {} is empty",
                p.display()
            );
            Some(token)
        }
        None => None,
    };
    keep_freed_memory_for_reuse();
    // Training and replay threads are not waited for on the way out: a run resumes from its
    // last checkpoint (written atomically), and a pod's grace period is not spent on a segment.
    let runtime = runtime()?;
    let outcome = runtime.block_on(node::run(node::Options {
        genesis,
        key,
        data_dir: args.data_dir,
        coordinators: args.coordinators,
        api_listen: args.api_listen,
        artifacts_listen,
        bootstrap: args.bootstrap,
        mine: args.role == NodeRole::Miner,
        validate: args.role == NodeRole::Validator
            || (args.role == NodeRole::Miner && !args.no_validate),
        verify_reports: args.verify_reports,
        validator_stake: pot_protocol::Amount(args.validator_stake),
        slots: args.slots.unwrap_or(gpus),
        hyper_search: args.hyper_search,
        device,
        spread_gpus: matches!(args.device.device.as_str(), "cuda" | "auto"),
        drain_token,
        poll: std::time::Duration::from_millis(500),
        retention_blocks: args.retention_blocks,
        #[cfg(feature = "fault-injection")]
        cheat: args.cheat,
        #[cfg(feature = "fault-injection")]
        crashes: args.crashes,
    }));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    leave_now(outcome)
}

/// End the process without running atexit handlers: libtorch's static destructors would run
/// while a training or replay thread still uses libtorch, and crash. Every durable write of a
/// node (journals, checkpoints, blobs) is complete, written and renamed, before it is relied
/// on, so nothing is lost; log lines are written whole.
fn leave_now(outcome: anyhow::Result<()>) -> ! {
    use std::io::Write as _;
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[allow(unsafe_code)]
    // SAFETY: _exit(2) takes a plain status and never returns; it touches no Rust state.
    unsafe {
        libc::_exit(code)
    }
}

fn wallet(signer: SignerArgs) -> anyhow::Result<(Wallet, std::time::Duration)> {
    let wallet = Wallet {
        client: Client::new(signer.api.node),
        key: keyfile::read(&signer.key)?,
        fee: signer.fee.map(pot_protocol::Amount),
    };
    Ok((wallet, std::time::Duration::from_secs(signer.wait)))
}

/// Submit `task` and print its id (`task submit` and `tx submit-task`).
async fn submit_task_with(
    wallet: &Wallet,
    wait: std::time::Duration,
    task: &TaskFile,
    secret_out: &Path,
) -> anyhow::Result<()> {
    let id = wallet.submit_task(task, secret_out, wait).await?;
    println!("task: {id}");
    Ok(())
}

async fn send_tx(signer: SignerArgs, what: TxWhat) -> anyhow::Result<()> {
    use pot_protocol::tx::TxBody;
    let (wallet, wait) = wallet(signer)?;
    let body = match what {
        TxWhat::Transfer { to, amount } => TxBody::Transfer {
            to,
            amount: pot_protocol::Amount(amount),
        },
        TxWhat::Bond { role, amount } => TxBody::Bond {
            role,
            amount: pot_protocol::Amount(amount),
        },
        TxWhat::SubmitTask { task, secret_out } => {
            return submit_task_with(&wallet, wait, &TaskFile::read(&task)?, &secret_out).await;
        }
    };
    let (hash, status) = wallet.send(body, wait).await?;
    println!("tx: {hash}");
    println!("{}", serde_json::to_string(&status)?);
    Ok(())
}
