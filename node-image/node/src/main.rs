//! The `pot-node` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pot_node::{genesis_builder, keyfile};
use pot_protocol::{Genesis, Params, SecretKey, State};

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
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
