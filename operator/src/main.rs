//! `pot-operator`: `run` runs the controllers (in a cluster, or with a kubeconfig); `crdgen`
//! writes the CustomResourceDefinitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pot_operator::crd;

#[derive(Parser)]
#[command(version, about = "The Kubernetes operator of PoT networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile PotNetwork, Miner and TrainingTask resources. The cluster is the in-cluster
    /// service account's, else `$KUBECONFIG`'s or `~/.kube/config`'s.
    Run(RunArgs),
    /// Write the CustomResourceDefinitions as YAML, one file per resource
    /// (`<plural>.pot.dev.yaml`), into each `--out` directory (by default `crds/` and the Helm
    /// chart's `helm/pot/crds/`), or all to standard output with `--out -`.
    Crdgen {
        #[arg(long, default_values = ["crds", "helm/pot/crds"])]
        out: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "POT_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "POT_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own; `POD_NAMESPACE` in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "POT_OPERATOR_LEASE", default_value = "pot-operator")]
    lease_name: String,
    /// This replica's name in the Lease (`POD_NAME` in a pod).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's Lease lasts without renewal before a standby takes over.
    #[arg(long, env = "POT_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between reconciles of an unchanged object (its chain moves meanwhile).
    #[arg(long, env = "POT_OPERATOR_RESYNC_SECONDS", default_value_t = 10)]
    resync_seconds: u64,
    /// Read a network's API at the URL in its `pot.dev/api-url` annotation (for an operator
    /// outside the cluster; off by default, since it lets whoever may annotate a network
    /// choose where the operator sends requests).
    #[arg(long, env = "POT_OPERATOR_ALLOW_API_URL_ANNOTATION")]
    allow_api_url_annotation: bool,
    /// Which `http(s)://` dataset URLs are downloaded to check a TrainingTask's hashes before
    /// it is submitted: `public` (hosts with public addresses only), `any` (also loopback,
    /// private and cluster addresses: datasets inside the cluster), or `off`.
    #[arg(long, env = "POT_OPERATOR_DATA_CHECK", value_enum, default_value_t)]
    data_check: pot_operator::task::data_check::Fetch,
    /// One JSON object per log line (the default in pods).
    #[arg(long, env = "POT_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crdgen { out } => out.iter().try_for_each(|dir| crdgen(dir)),
        Command::Run(args) => {
            init_logs(args.log_json);
            let identity = args.identity.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "pot-operator".into()),
                    std::process::id()
                )
            });
            let opts = pot_operator::run::Options {
                namespace: args.namespace,
                listen: args.listen,
                lease_namespace: args.lease_namespace,
                lease_name: args.lease_name,
                identity,
                lease_duration: Duration::from_secs(args.lease_seconds),
                resync: Duration::from_secs(args.resync_seconds.max(1)),
                allow_api_url_annotation: args.allow_api_url_annotation,
                data_check: args.data_check,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let outcome = rt.block_on(pot_operator::run::run(opts));
            // A dataset check still downloading on the blocking pool must not hold the process
            // (and so a new leader's start) for its whole timeout.
            rt.shutdown_timeout(Duration::from_secs(1));
            outcome
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn crdgen(out: &std::path::Path) -> anyhow::Result<()> {
    if out.as_os_str() == "-" {
        for c in crd::all() {
            print!("---\n{}", crd::to_yaml(&c));
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for c in crd::all() {
        let path = out.join(crd::file_name(&c));
        std::fs::write(&path, crd::to_yaml(&c))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
