//! `pot-e2e demo`: on a running local cluster (`cluster up --kubelet`), install the operator with
//! Helm, apply the development network, a CPU miner fleet and the digits task from `manifests/`,
//! show progress (the task's phase, each miner's training, the block height) until the task
//! ends, then print its claims, verdicts, metrics, winner and payouts. The e2e tests drive the
//! same steps through [`helm_install`] and [`wait_for_task`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use pot_operator::crd::network::PotNetwork;
use pot_operator::crd::task::{TaskPhase, TrainingTask};
use pot_protocol::api::{NodeStatus, TaskWork};

/// `helm upgrade --install pot <chart>` into `pot-system`, waiting until the operator is ready.
pub fn helm_install(
    helm: &Path,
    kubeconfig: &Path,
    chart: &Path,
    sets: &[&str],
) -> anyhow::Result<()> {
    let mut cmd = Command::new(helm);
    cmd.args(["upgrade", "--install", "pot"])
        .arg(chart)
        .args([
            "--namespace",
            "pot-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig);
    for s in sets {
        cmd.args(["--set", s]);
    }
    crate::control_plane::run_tool(cmd, None)
        .map(drop)
        .context("helm install failed")
}

fn phase_name(p: &TaskPhase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{p:?}"))
}

fn ended(p: &TaskPhase) -> bool {
    matches!(
        p,
        TaskPhase::Finalized | TaskPhase::Failed | TaskPhase::Expired
    )
}

/// Each miner pod's work, read from its node API (`GET /v1/node/status` at the pod's address).
async fn miner_work(
    client: &Client,
    ns: &str,
    http: &reqwest::Client,
) -> Vec<(String, Option<NodeStatus>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("app.kubernetes.io/component=miner");
    let Ok(list) = pods.list(&lp).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in list {
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        let status = match ip {
            Some(ip) => match http
                .get(format!("http://{ip}:26657/v1/node/status"))
                .send()
                .await
            {
                Ok(r) => r.json::<NodeStatus>().await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        out.push((p.name_any(), status));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn work_line(status: &Option<NodeStatus>) -> (String, Option<(u64, u64)>) {
    let Some(s) = status else {
        return ("starting".into(), None);
    };
    for work in s.tasks.values() {
        if let TaskWork::Training {
            step, steps, loss, ..
        } = work
        {
            let loss = loss.map(|l| format!(", loss {l:.3}")).unwrap_or_default();
            return (format!("training{loss}"), Some((*step, *steps)));
        }
    }
    let states: Vec<String> = s
        .tasks
        .values()
        .map(|w| {
            serde_json::to_value(w)
                .ok()
                .and_then(|v| v["state"].as_str().map(String::from))
                .unwrap_or_default()
        })
        .collect();
    if states.is_empty() {
        (format!("idle at block {}", s.height), None)
    } else {
        (states.join(", "), None)
    }
}

/// Wait until TrainingTask `name` ends (Finalized, Failed or Expired), showing progress bars
/// when `show` is set; fails after `timeout`.
pub async fn wait_for_task(
    client: &Client,
    ns: &str,
    name: &str,
    network: &str,
    timeout: Duration,
    show: bool,
) -> anyhow::Result<TrainingTask> {
    let tasks: Api<TrainingTask> = Api::namespaced(client.clone(), ns);
    let networks: Api<PotNetwork> = Api::namespaced(client.clone(), ns);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let bars = if show {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let task_bar = bars.add(ProgressBar::new_spinner());
    task_bar.set_style(ProgressStyle::with_template(
        "{spinner} {elapsed:>4} {msg}",
    )?);
    let mut miner_bars: Vec<(String, ProgressBar)> = Vec::new();
    let miner_style =
        ProgressStyle::with_template("  {prefix:<14} [{bar:30}] {pos:>5}/{len:5} {msg}")?
            .progress_chars("=> ");
    let began = Instant::now();
    // Progress bars need a terminal; a piped log gets a plain line every 10 s instead.
    let plain = show && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line: Option<Instant> = None;
    loop {
        let task = tasks
            .get(name)
            .await
            .with_context(|| format!("reading TrainingTask {name}"))?;
        let status = task.status.clone().unwrap_or_default();
        let net = networks.get_opt(network).await.ok().flatten();
        let height = net
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.height)
            .map(|h| h.to_string())
            .unwrap_or_else(|| "-".into());
        let headline = format!(
            "task {name}: {} | claims {} | block height {height}",
            phase_name(&status.phase),
            status.claim_count
        );
        task_bar.set_message(headline.clone());
        task_bar.tick();
        let work = miner_work(client, ns, &http).await;
        if plain && last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_line = Some(Instant::now());
            let miners: Vec<String> = work
                .iter()
                .map(|(pod, w)| {
                    let (line, progress) = work_line(w);
                    match progress {
                        Some((step, steps)) => format!("{pod} {step}/{steps} {line}"),
                        None => format!("{pod} {line}"),
                    }
                })
                .collect();
            eprintln!(
                "[{:>4}s] {headline} | {}",
                began.elapsed().as_secs(),
                miners.join(" | ")
            );
        }
        for (pod, work) in work {
            let bar = match miner_bars.iter().find(|(p, _)| *p == pod) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = bars.add(ProgressBar::new(1));
                    b.set_style(miner_style.clone());
                    b.set_prefix(pod.clone());
                    miner_bars.push((pod.clone(), b.clone()));
                    b
                }
            };
            let (line, progress) = work_line(&work);
            if let Some((step, steps)) = progress {
                bar.set_length(steps.max(1));
                bar.set_position(step);
            }
            bar.set_message(line);
        }
        if ended(&status.phase) {
            task_bar.finish();
            for (_, b) in &miner_bars {
                b.finish();
            }
            return Ok(task);
        }
        if began.elapsed() > timeout {
            bail!(
                "TrainingTask {name} is still {} after {timeout:?}: {}",
                phase_name(&status.phase),
                status.message.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The result of a finished task, for a person.
pub fn summary(task: &TrainingTask) -> String {
    let s = task.status.clone().unwrap_or_default();
    let mut out = format!(
        "TrainingTask {}: {}{}\n",
        task.name_any(),
        phase_name(&s.phase),
        s.message.map(|m| format!(" ({m})")).unwrap_or_default()
    );
    if let Some(id) = &s.task_id {
        out += &format!("  task id   {id}\n");
    }
    out += "  claims\n";
    for c in &s.claims {
        out += &format!(
            "    {}  metric {}  reports {} valid / {} invalid  verdict {}\n",
            c.miner,
            c.metric
                .map(|m| format!("{m:.4}"))
                .unwrap_or_else(|| "-".into()),
            c.valid_reports,
            c.invalid_reports,
            c.verdict.clone().unwrap_or_else(|| "-".into())
        );
    }
    out += &format!(
        "  winner    {}  held-out metric {}\n",
        s.winner.clone().unwrap_or_else(|| "-".into()),
        s.winner_metric
            .map(|m| format!("{m:.4}"))
            .unwrap_or_else(|| "-".into())
    );
    if let Some(url) = &s.model_url {
        out += &format!("  model     {url}\n");
    }
    out += "  payouts\n";
    for p in &s.payouts {
        out += &format!("    {}  {:>8}  {}\n", p.address, p.amount, p.reason);
    }
    out
}

/// What `pot-e2e demo` needs.
pub struct Config {
    /// The cluster directory (`cluster up --dir`).
    pub dir: PathBuf,
    /// The repository (helm/pot, manifests/).
    pub repo: PathBuf,
    pub namespace: String,
    pub timeout: Duration,
}

/// What the demo applies, in order: the network, who trains, who checks, and the task.
const DEMO_MANIFESTS: [&str; 4] = [
    "network-dev.yaml",
    "miners-cpu.yaml",
    "validators-cpu.yaml",
    "task-digits.yaml",
];

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let kubeconfig = cfg.dir.join("admin.kubeconfig");
    if !kubeconfig.exists() {
        bail!(
            "no cluster in {} (run `pot-e2e cluster up --kubelet` first)",
            cfg.dir.display()
        );
    }
    let bin = crate::tools::bin_dir()?;
    let kubectl = |args: &[&str]| {
        let mut cmd = Command::new(bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&kubeconfig).args(args);
        crate::control_plane::run_tool(cmd, None)
    };
    eprintln!("==> helm install pot helm/pot (namespace pot-system)");
    helm_install(
        &bin.join("helm"),
        &kubeconfig,
        &cfg.repo.join("helm/pot"),
        &[],
    )?;
    let ns = &cfg.namespace;
    let _ = kubectl(&["create", "namespace", ns]);
    eprintln!(
        "==> kubectl apply -n {ns} -f manifests/{{{}}}",
        DEMO_MANIFESTS.join(",")
    );
    let m = cfg.repo.join("manifests");
    for f in DEMO_MANIFESTS {
        kubectl(&["apply", "-n", ns, "-f", &m.join(f).display().to_string()])?;
    }
    let client = crate::control_plane::client_for(&kubeconfig).await?;
    let task = wait_for_task(&client, ns, "digits", "dev", cfg.timeout, true).await?;
    println!("\n{}", summary(&task));
    println!("The cluster keeps running. Try:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get pot -n {ns}");
    println!("  kubectl describe tt digits -n {ns}");
    println!("  kubectl logs -n {ns} cpu-miner-0 | tail");
    println!("  kubectl logs -n pot-system deploy/pot | tail");
    println!("Stop it with `make demo-down`.");
    let status = task.status.clone().unwrap_or_default();
    if status.phase != TaskPhase::Finalized {
        bail!("the task did not finalize");
    }
    if status.winner.is_none() {
        bail!("the task finalized with no valid claim: see the validators' logs");
    }
    Ok(())
}
