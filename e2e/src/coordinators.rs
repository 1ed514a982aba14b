//! A local network of `pot-node` coordinators as processes on loopback, each with its own key,
//! data directory, consensus port and API port: start, SIGKILL, restart, and talk to them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use pot_protocol::api::BlockInfo;
use pot_protocol::client::Client;
use pot_protocol::genesis::{Coordinator, GenesisBalance};
use pot_protocol::{Amount, Genesis, Params, SecretKey};

use crate::ports::free_port;
use crate::spawn::Process;

/// Funds of each test account in the genesis.
pub const ACCOUNT_FUNDS: Amount = Amount(1_000_000);

pub struct Coordinators {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    pub keys: Vec<SecretKey>,
    /// Funded accounts for the test to sign with (not coordinators).
    pub accounts: Vec<SecretKey>,
    pub genesis: Genesis,
    p2p_ports: Vec<u16>,
    gossip_ports: Vec<u16>,
    /// Where the others reach each node: its own ports, or relays in front of them.
    p2p_dial: Vec<u16>,
    gossip_dial: Vec<u16>,
    api_ports: Vec<u16>,
    procs: Vec<Option<Process>>,
    starts: Vec<u32>,
    extra_args: Vec<Vec<String>>,
    /// Whether `bin` is the test build (`fault-injection`): then every node logs its
    /// signatures for [`Coordinators::assert_nothing_signed_twice`].
    test_build: bool,
}

/// Write a key file in `pot-node`'s format.
fn write_key(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "address": key.address(),
        "secret_key": hex::encode(key.seed()),
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

impl Coordinators {
    /// Start `n` coordinators with `block_time_ms` and `accounts` funded accounts.
    pub fn start(n: usize, block_time_ms: u64, accounts: usize) -> anyhow::Result<Coordinators> {
        Self::start_with(n, block_time_ms, accounts, vec![Vec::new(); n])
    }

    /// As `start`, with extra `pot-node run` arguments per coordinator.
    pub fn start_with(
        n: usize,
        block_time_ms: u64,
        accounts: usize,
        extra_args: Vec<Vec<String>>,
    ) -> anyhow::Result<Coordinators> {
        let bin = crate::pot_node_binary();
        let mut net = Self::prepare(bin, n, block_time_ms, accounts, extra_args)?;
        net.test_build = true;
        for i in 0..n {
            net.restart(i)?;
        }
        Ok(net)
    }

    /// Start `n` coordinators of the `pot-node` at `bin` whose consensus and gossip links each
    /// pass through a relay that delays every byte by `link_delay` (for benchmarks). With no
    /// delay they connect directly: a relay would only add a hop, and its copying would take
    /// the CPU the coordinators share with it.
    pub async fn start_delayed(
        bin: PathBuf,
        n: usize,
        block_time_ms: u64,
        accounts: usize,
        link_delay: Duration,
    ) -> anyhow::Result<Coordinators> {
        let mut net = Self::prepare(bin, n, block_time_ms, accounts, vec![Vec::new(); n])?;
        for i in (0..n).filter(|_| !link_delay.is_zero()) {
            net.p2p_dial[i] = crate::link_delay::relay(net.p2p_ports[i], link_delay).await?;
            net.gossip_dial[i] = crate::link_delay::relay(net.gossip_ports[i], link_delay).await?;
        }
        for i in 0..n {
            net.restart(i)?;
        }
        Ok(net)
    }

    /// Keys, genesis and ports for a network; nothing started.
    fn prepare(
        bin: PathBuf,
        n: usize,
        block_time_ms: u64,
        accounts: usize,
        extra_args: Vec<Vec<String>>,
    ) -> anyhow::Result<Coordinators> {
        let dir = tempfile::tempdir()?;
        let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect();
        let accounts: Vec<SecretKey> = (0..accounts).map(|_| SecretKey::generate()).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let genesis = Genesis {
            chain_id: "pot-e2e".into(),
            genesis_time_ms: now,
            params: Params {
                block_time_ms,
                ..Params::default()
            },
            balances: accounts
                .iter()
                .map(|k| GenesisBalance {
                    address: k.address(),
                    amount: ACCOUNT_FUNDS,
                })
                .collect(),
            stakes: vec![],
            coordinators: keys.iter().map(Coordinator::for_key).collect(),
        };
        genesis.validate()?;
        std::fs::write(dir.path().join("genesis.yaml"), genesis.to_yaml())?;
        for (i, k) in keys.iter().enumerate() {
            write_key(&dir.path().join(format!("node{i}.key")), k)?;
        }
        let p2p_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let gossip_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Ok(Coordinators {
            dir,
            bin,
            keys,
            accounts,
            genesis,
            p2p_dial: p2p_ports.clone(),
            gossip_dial: gossip_ports.clone(),
            p2p_ports,
            gossip_ports,
            api_ports: (0..n).map(|_| free_port()).collect(),
            procs: (0..n).map(|_| None).collect(),
            starts: vec![0; n],
            extra_args,
            test_build: false,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn api_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.api_ports[i])
    }

    pub fn client(&self, i: usize) -> Client {
        Client::new(self.api_url(i))
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("node{i}.{}.log", self.starts[i]))
    }

    /// (Re)start coordinator `i` from its data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let others = |ports: &[u16]| -> String {
            (0..self.len())
                .filter(|j| *j != i)
                .map(|j| format!("/ip4/127.0.0.1/tcp/{}", ports[j]))
                .collect::<Vec<_>>()
                .join(",")
        };
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--genesis")
            .arg(d.join("genesis.yaml"))
            .arg("--key")
            .arg(d.join(format!("node{i}.key")))
            .arg("--data-dir")
            .arg(d.join(format!("node{i}")))
            .arg("--p2p-listen")
            .arg(format!("/ip4/127.0.0.1/tcp/{}", self.p2p_ports[i]))
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{}", self.api_ports[i]))
            .arg("--peers")
            .arg(others(&self.p2p_dial))
            .arg("--gossip-listen")
            .arg(format!("/ip4/127.0.0.1/tcp/{}", self.gossip_ports[i]))
            .arg("--gossip-peers")
            .arg(others(&self.gossip_dial))
            .args(&self.extra_args[i]);
        if self.test_build {
            cmd.arg("--signature-log").arg(self.signature_log(i));
            cmd.arg("--received-vote-log")
                .arg(self.received_vote_log(i));
        }
        // A new log per start; the earlier ones stay for reading.
        self.starts[i] += 1;
        let p = Process::start(&format!("coordinator {i}"), cmd, &self.log_path(i))
            .with_context(|| format!("starting coordinator {i}"))?;
        self.procs[i] = Some(p);
        Ok(())
    }

    /// Replace the extra `pot-node run` arguments coordinator `i` gets at its next start.
    pub fn set_args(&mut self, i: usize, args: Vec<String>) {
        self.extra_args[i] = args;
    }

    fn signature_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.signatures"))
    }

    fn received_vote_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.received-votes"))
    }

    /// The places (height, round, kind) where coordinator `i` verified two different votes
    /// from `voter`: the equivocations that reached it. Ascending.
    pub fn equivocations_received(
        &self,
        i: usize,
        voter: &pot_protocol::Address,
    ) -> Vec<(u64, u32, String)> {
        use std::collections::{BTreeMap, HashSet};
        let text = std::fs::read_to_string(self.received_vote_log(i)).unwrap_or_default();
        let voter = voter.to_string();
        let mut values: BTreeMap<(u64, u32, String), HashSet<String>> = BTreeMap::new();
        // The node is still writing: a last line without its newline is not complete yet.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [who, h, r, kind, value] = f[..] else {
                panic!("coordinator {i}: malformed vote log line {line:?}");
            };
            if who == voter {
                let place = (
                    h.parse().expect("a height"),
                    r.parse().expect("a round"),
                    kind.to_string(),
                );
                values.entry(place).or_default().insert(value.to_string());
            }
        }
        values
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(place, _)| place)
            .collect()
    }

    /// Check every signature each coordinator's key made, across all its starts: never two
    /// different values for one (height, round, step). Returns how many were checked.
    pub fn assert_nothing_signed_twice(&self, nodes: &[usize]) -> usize {
        use std::collections::HashMap;
        let mut checked = 0;
        for &i in nodes {
            let text = std::fs::read_to_string(self.signature_log(i)).unwrap_or_default();
            let mut seen: HashMap<(String, String, String), String> = HashMap::new();
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let [h, r, step, value] = f[..] else {
                    panic!("coordinator {i}: malformed signature log line {line:?}");
                };
                checked += 1;
                let place = (h.to_string(), r.to_string(), step.to_string());
                if let Some(earlier) = seen.insert(place, value.to_string()) {
                    assert_eq!(
                        earlier, value,
                        "coordinator {i} signed two different {step}s at height {h} round {r}"
                    );
                }
            }
        }
        checked
    }

    /// Wait until every listed coordinator has decided `height`; panics with their logs if one
    /// does not within `wait`.
    pub async fn wait_height(&self, nodes: &[usize], height: u64, wait: Duration) {
        for &i in nodes {
            if let Err(e) = self.client(i).wait_height(height, wait).await {
                panic!(
                    "coordinator {i} did not reach height {height}: {e}\n{}",
                    self.log_tails(30)
                );
            }
        }
    }

    /// Every listed coordinator has the same blocks (hashes and state roots) up to `upto`;
    /// returns them as the first one serves them.
    pub async fn assert_same_chain(&self, nodes: &[usize], upto: u64) -> Vec<BlockInfo> {
        let reference = self.blocks(nodes[0], upto).await;
        for &i in &nodes[1..] {
            let other = self.blocks(i, upto).await;
            for (a, b) in reference.iter().zip(&other) {
                assert_eq!(
                    (a.hash, a.state_root),
                    (b.hash, b.state_root),
                    "coordinators {} and {i} differ at height {}",
                    nodes[0],
                    a.height
                );
            }
        }
        reference
    }

    /// Blocks 1..=upto as coordinator `i` serves them.
    pub async fn blocks(&self, i: usize, upto: u64) -> Vec<BlockInfo> {
        let client = self.client(i);
        let mut out = Vec::new();
        for h in 1..=upto {
            out.push(client.block(h).await.expect("block"));
        }
        out
    }

    /// The data directory of coordinator `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// The exit status of coordinator `i` if its process has exited.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.procs[i].as_mut().and_then(|p| p.exited())
    }

    /// The log of coordinator `i`'s current (or last) start.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// SIGKILL coordinator `i`: no chance to flush or say goodbye.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            crate::spawn::signal(p.pid(), libc::SIGKILL);
            p.stop(Duration::from_secs(5));
        }
    }

    /// The last lines of every coordinator's log, for a failing test's message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- coordinator {i} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Start `pot-node run --dev` with its data in `data` and `extra` flags; returns the process
/// and its API URL once it has decided a block.
pub async fn dev_node(
    bin: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
) -> (Process, String) {
    let api = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{api}");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--dev", "--data-dir"])
        .arg(data)
        .args([
            "--p2p-listen",
            &format!("/ip4/127.0.0.1/tcp/{}", free_port()),
        ])
        .args(["--api-listen", &api])
        .args(extra);
    let log = data.with_extension("log");
    let node = Process::start("dev node", cmd, &log).unwrap();
    Client::new(url.clone())
        .wait_height(1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    (node, url)
}
