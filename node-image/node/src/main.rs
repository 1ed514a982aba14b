//! The `pot-node` command line.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pot_node::run_dir::RunDir;
use pot_node::train::fetch::Cache;
use pot_node::{commands, genesis_builder, keyfile};
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
    /// Train a task spec (YAML) and write checkpoints and a manifest into a run directory.
    Train {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The miner whose run this is: its address goes into the run seed.
        #[arg(long, env = "POT_MINER", default_value_t = Address::default())]
        miner: Address,
        /// The claim salt that goes into the run seed (hex).
        #[arg(long, default_value_t = Hash::ZERO)]
        salt: Hash,
        /// libtorch intra-op threads; a replay must use the same number to be bit-identical.
        #[arg(long, env = "POT_THREADS", default_value_t = 1)]
        threads: i32,
        /// libtorch's CPU kernel level (ATEN_CPU_CAPABILITY), fixed so replays match.
        #[arg(long, env = "POT_CPU_CAPABILITY", default_value = "avx2")]
        cpu_capability: String,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Verify a run: its first checkpoint, its last, sampled segments replayed, and accuracy.
    Verify {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        run: PathBuf,
        /// Segment indices to replay, comma-separated.
        #[arg(long, value_delimiter = ',')]
        segments: Vec<u32>,
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Measurements for `make bench` (JSON on standard output).
    #[command(hide = true)]
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Evaluate a run's final model on the task's held-out data.
    Eval {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        run: PathBuf,
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
        #[arg(long)]
        batch: i64,
        #[arg(long)]
        threads: i32,
        #[arg(long, default_value_t = 300)]
        steps: u64,
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
fn pin_cpu_capability(wanted: &str) -> anyhow::Result<()> {
    if std::env::var("ATEN_CPU_CAPABILITY").as_deref() == Ok(wanted) || wanted == "native" {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let err = Process::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("ATEN_CPU_CAPABILITY", wanted)
        .exec();
    Err(err).context("re-running with ATEN_CPU_CAPABILITY set")
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
                .map(|p| keyfile::read(p).map(|k| k.address()))
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
                genesis_builder::build(chain_id, time_ms, params, coordinators, balances, stakes)?;
            match out {
                Some(p) => std::fs::write(&p, g.to_yaml())
                    .with_context(|| format!("writing {}", p.display()))?,
                None => print!("{}", g.to_yaml()),
            }
        }
        Command::Train {
            spec,
            out,
            miner,
            salt,
            threads,
            cpu_capability,
            cache,
        } => {
            pin_cpu_capability(&cpu_capability)?;
            let m = commands::train(&spec, &out, miner, salt, threads, &cache.cache())?;
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
            spec,
            run,
            segments,
            cache,
        } => {
            let m = RunDir::new(&run).read_manifest()?;
            pin_cpu_capability(&m.cpu_capability)?;
            let report = commands::verify(&spec, &run, &segments, &cache.cache())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.valid {
                anyhow::bail!("the run is not valid");
            }
        }
        Command::Bench { what } => {
            pin_cpu_capability("avx2")?;
            let json = match what {
                BenchWhat::Throughput {
                    model,
                    batch,
                    threads,
                    steps,
                } => serde_json::to_string(&pot_node::bench::throughput(
                    &model, batch, threads, steps, 5,
                )?)?,
                BenchWhat::Overhead {
                    model,
                    steps,
                    k,
                    segments,
                } => {
                    serde_json::to_string(&pot_node::bench::overhead(&model, steps, k, segments)?)?
                }
            };
            println!("{json}");
        }
        Command::Eval { spec, run, cache } => {
            let acc = commands::eval(&spec, &run, &cache.cache())?;
            println!("accuracy: {acc:.4}");
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
