//! `pot-e2e cluster up|down|env`: the tests' control plane, for a person.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pot_e2e::spawn::{alive, signal};
use pot_e2e::{ControlPlane, Options, tools};

#[derive(Parser)]
#[command(
    name = "pot-e2e",
    about = "Embedded Kubernetes control plane for PoT development"
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Finality latency and throughput of a local coordinator network under load (JSON on
    /// standard output; `make bench` runs it).
    #[command(hide = true)]
    BenchLedger {
        /// The (release) pot-node binary.
        #[arg(long)]
        pot_node: PathBuf,
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Emulated one-way latency of every link between coordinators.
        #[arg(long, default_value_t = 0)]
        link_delay_ms: u64,
        #[arg(long, default_value_t = 1000)]
        block_time_ms: u64,
        /// Offered transactions per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Sending accounts per coordinator (each sends in nonce order, all concurrently).
        #[arg(long, default_value_t = 64)]
        accounts_per_node: usize,
        /// 0: one request per transaction; otherwise one client per coordinator sends what is
        /// due in one `POST /v1/txs` at most this often (milliseconds).
        #[arg(long, default_value_t = 0)]
        client_batch_ms: u64,
    },
    /// The operator under load: kwok nodes, development networks with real coordinators, and
    /// many TrainingTasks followed to their end (JSON on standard output; `make bench` runs it).
    #[command(hide = true)]
    BenchOperator {
        /// The (release) pot-operator binary.
        #[arg(long)]
        pot_operator: PathBuf,
        /// The (release) pot-node binary, for the coordinators.
        #[arg(long)]
        pot_node: PathBuf,
        #[arg(long, default_value_t = 10)]
        networks: usize,
        #[arg(long, default_value_t = 100)]
        tasks_per_network: usize,
        #[arg(long, default_value_t = 4)]
        kwok_nodes: usize,
        /// Queue changes timed on the first network (one more open task each).
        #[arg(long, default_value_t = 8)]
        scale_steps: usize,
    },
    /// On a running `cluster up --kubelet`: helm install the operator, apply the development
    /// network, a CPU miner fleet and the digits task, and show them until the task ends
    /// (`make demo`).
    Demo {
        #[arg(long, env = "POT_CLUSTER_DIR")]
        dir: Option<PathBuf>,
        /// The repository checkout (its helm/pot and manifests/).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long, default_value = "demo")]
        namespace: String,
        #[arg(long, default_value_t = 900)]
        timeout_seconds: u64,
    },
    /// Run a local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler).
    Cluster {
        #[command(subcommand)]
        action: Cluster,
    },
}

#[derive(Subcommand)]
enum Cluster {
    /// Start a fresh control plane and keep it running until interrupted (Ctrl-C) or `down`.
    Up {
        /// Where data, keys, kubeconfig and logs live (wiped on start).
        #[arg(long, env = "POT_CLUSTER_DIR")]
        dir: Option<PathBuf>,
        /// Also run a local kubelet (Node `local`): pods run as processes of the binaries in
        /// `--bin-dir` (needs root; see e2e/README.md).
        #[arg(long)]
        kubelet: bool,
        /// `nvidia.com/gpu` the Node reports.
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// Where `pot-node` and `pot-operator` are (default: next to this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The libtorch the binaries were built against (its `lib/` is the image's
        /// `/opt/libtorch/lib`).
        #[arg(long, env = "LIBTORCH")]
        libtorch: Option<PathBuf>,
    },
    /// Stop the control plane started by `up`.
    Down {
        #[arg(long, env = "POT_CLUSTER_DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the `export KUBECONFIG=...` line for the running control plane.
    Env {
        #[arg(long, env = "POT_CLUSTER_DIR")]
        dir: Option<PathBuf>,
    },
}

fn default_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| tools::cache_root().join("cluster"))
}

fn main() -> anyhow::Result<()> {
    let action = match Cli::parse().command {
        Top::Cluster { action } => action,
        Top::Demo {
            dir,
            repo,
            namespace,
            timeout_seconds,
        } => {
            return tokio::runtime::Runtime::new()?.block_on(pot_e2e::demo::run(
                pot_e2e::demo::Config {
                    dir: default_dir(dir),
                    repo,
                    namespace,
                    timeout: Duration::from_secs(timeout_seconds),
                },
            ));
        }
        Top::BenchOperator {
            pot_operator,
            pot_node,
            networks,
            tasks_per_network,
            kwok_nodes,
            scale_steps,
        } => {
            // The fixture's helpers find the binaries through these.
            #[allow(unsafe_code)]
            // SAFETY: no other thread exists yet, so nothing reads the environment meanwhile.
            unsafe {
                std::env::set_var("POT_E2E_POT_OPERATOR", &pot_operator);
                std::env::set_var("POT_E2E_POT_NODE", &pot_node);
            }
            let report = tokio::runtime::Runtime::new()?.block_on(pot_e2e::operator_bench::run(
                pot_e2e::operator_bench::Config {
                    networks,
                    tasks_per_network,
                    kwok_nodes,
                    scale_steps,
                },
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        Top::BenchLedger {
            pot_node,
            nodes,
            link_delay_ms,
            block_time_ms,
            rate,
            seconds,
            accounts_per_node,
            client_batch_ms,
        } => {
            let report = tokio::runtime::Runtime::new()?.block_on(pot_e2e::ledger_bench::run(
                pot_e2e::ledger_bench::Config {
                    pot_node,
                    nodes,
                    link_delay: Duration::from_millis(link_delay_ms),
                    block_time_ms,
                    rate,
                    seconds,
                    accounts_per_node,
                    client_batch_ms,
                },
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
    };
    match action {
        Cluster::Up {
            dir,
            kubelet,
            gpus,
            bin_dir,
            libtorch,
        } => {
            let kubelet = kubelet.then_some(KubeletArgs {
                gpus,
                bin_dir,
                libtorch,
            });
            up(&default_dir(dir), kubelet)
        }
        Cluster::Down { dir } => down(&default_dir(dir)),
        Cluster::Env { dir } => {
            let dir = default_dir(dir);
            running_pid(&dir)?;
            println!(
                "export KUBECONFIG={}",
                dir.join("admin.kubeconfig").display()
            );
            Ok(())
        }
    }
}

struct KubeletArgs {
    gpus: u32,
    bin_dir: Option<PathBuf>,
    libtorch: Option<PathBuf>,
}

/// The local kubelet of `cluster up --kubelet`, logging to `<dir>/logs/kubelet.log`.
fn start_kubelet(
    cp: &ControlPlane,
    args: &KubeletArgs,
) -> anyhow::Result<pot_e2e::kubelet::Running> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("pot-e2e has no directory")?
            .to_path_buf(),
    };
    let mut binaries = Vec::new();
    for name in ["pot-node", "pot-operator"] {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: build it first (cargo build -p {name}) or name --bin-dir",
                path.display()
            );
        }
        binaries.push((name, path));
    }
    let log = std::fs::File::create(cp.dir.join("logs").join("kubelet.log"))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .init();
    let images = pot_e2e::kubelet::project_images(
        &cp.dir.join("kubelet").join("local"),
        &binaries,
        args.libtorch.as_ref().map(|l| l.join("lib")),
    )?;
    cp.start_kubelet("local", args.gpus, images)
}

fn up(dir: &Path, kubelet: Option<KubeletArgs>) -> anyhow::Result<()> {
    if let Ok(pid) = running_pid(dir) {
        bail!(
            "a control plane is already running from {} (pid {pid}); `pot-e2e cluster down` first",
            dir.display()
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let cp = ControlPlane::start_with(Options {
        controller_manager: true,
        scheduler: true,
        data_dir: Some(dir.to_path_buf()),
    })?;
    let kubelet = kubelet.map(|k| start_kubelet(&cp, &k)).transpose()?;
    let pids: String = cp
        .pids()
        .iter()
        .map(|(n, p)| format!("{n} {p}\n"))
        .collect();
    std::fs::write(dir.join("pids"), pids)?;
    std::fs::write(dir.join("pid"), std::process::id().to_string())?;
    eprintln!(
        "control plane ready in {:.1} s at {} (logs in {})",
        cp.startup.as_secs_f64(),
        cp.server,
        dir.join("logs").display()
    );
    eprintln!("stop it with Ctrl-C or `pot-e2e cluster down`");
    println!("export KUBECONFIG={}", cp.kubeconfig.display());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        anyhow::Ok(())
    })?;
    eprintln!("stopping the control plane");
    drop(kubelet);
    drop(cp);
    let _ = std::fs::remove_file(dir.join("pid"));
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let pid = running_pid(dir)?;
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("pot-e2e (pid {pid}) did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopped");
    Ok(())
}

fn running_pid(dir: &Path) -> anyhow::Result<u32> {
    let path = dir.join("pid");
    let pid: u32 = std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "no control plane running from {} (no pid file)",
                dir.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} is not a pid", path.display()))?;
    if !alive(pid) {
        bail!(
            "no control plane running from {} (pid {pid} is gone)",
            dir.display()
        );
    }
    Ok(pid)
}
