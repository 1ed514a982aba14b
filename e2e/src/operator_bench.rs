//! The operator under load (`pot-e2e bench-operator`, run by `make bench`): a real control
//! plane with kwok nodes (fake Nodes whose pods kwok marks Running, so StatefulSets get real
//! pods), ten development networks each with a real `pot-node` coordinator, and a thousand
//! `TrainingTask`s — each from its own funded publisher — followed from creation to their end
//! on chain. Reports reconcile latency per controller (from the operator's own histogram),
//! Kubernetes API requests per reconcile, the operator's memory, and how long a change of a
//! chain's queue takes to reach a fleet's StatefulSet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PersistentVolume, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use pot_operator::crd::task::{TaskPhase, TrainingTask};
use pot_protocol::client::Client;
use pot_protocol::tx::{Tx, TxBody};
use pot_protocol::{Amount, SecretKey, keyfile};
use serde::Serialize;
use serde_json::json;

use crate::fixture::{TestEnv, eventually};
use crate::operator::{
    Operator, apply, coordinator_for, digits_training_task, install_crds, statefulset_replicas,
    submit_digits_task, windows,
};
use crate::spawn::Process;

pub struct Config {
    pub networks: usize,
    pub tasks_per_network: usize,
    pub kwok_nodes: usize,
    /// Queue changes to time (each adds one task open for claims).
    pub scale_steps: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub networks: usize,
    pub tasks: usize,
    pub kwok_nodes: usize,
    /// From the first `TrainingTask` created to the last one on chain (its task id known).
    pub submit_all_s: f64,
    /// From the first created to the last ended (finalized with a refund: no miner runs).
    pub end_all_s: f64,
    /// Per controller: reconciles, p50 and p99 in milliseconds.
    pub reconciles: BTreeMap<String, Latency>,
    pub api_requests: f64,
    pub api_writes: f64,
    pub requests_per_reconcile: f64,
    pub writes_per_reconcile: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Milliseconds from a chain's queue showing one more open task to the fleet's
    /// StatefulSet asking for one more replica, one sample per step.
    pub queue_to_replicas_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: f64,
    /// `None` when beyond the histogram's largest bucket.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub async fn run(cfg: Config) -> anyhow::Result<Report> {
    let env = TestEnv::new("bench-operator").await;
    let _kwok = kwok(&env, cfg.kwok_nodes).await?;
    install_crds(&env).await;
    let op = Operator::start(&env, "bench", &["--resync-seconds", "10"]).await;

    let nets: Vec<String> = (0..cfg.networks).map(|i| format!("net-{i}")).collect();
    for n in &nets {
        apply::<pot_operator::crd::network::PotNetwork>(
            &env.api(),
            json!({
                "apiVersion": "pot.dev/v1alpha1", "kind": "PotNetwork",
                "metadata": {"name": n, "annotations": {"pot.dev/api-url": "http://127.0.0.1:9"}},
                "spec": {"coordinators": 1, "storage": {"size": "1Gi"},
                         "genesis": {"blockTimeMs": 500, "faucet": {"balance": 1_000_000_000_000u64}}}
            }),
        )
        .await;
    }
    let dir = tempfile::tempdir()?;
    let mut coordinators: Vec<(Process, Client)> = Vec::new();
    for n in &nets {
        let d = dir.path().join(n);
        std::fs::create_dir_all(&d)?;
        let (p, url) = coordinator_for(&env, n, &d).await;
        annotate(&env, n, &url).await?;
        coordinators.push((p, Client::new(url)));
    }
    eprintln!("bench-operator: {} networks running", nets.len());

    let queue_to_replicas_ms = queue_to_replicas(&env, &coordinators[0].1, cfg.scale_steps).await?;
    eprintln!("bench-operator: queue to replicas {queue_to_replicas_ms:?} ms");

    // One funded publisher per task, its key in a Secret.
    let mut publishers = Vec::new();
    for (n, (_, node)) in nets.iter().zip(&coordinators) {
        let faucet = faucet_key(&env, n).await?;
        let keys: Vec<SecretKey> = (0..cfg.tasks_per_network)
            .map(|_| SecretKey::generate())
            .collect();
        fund(node, &faucet, &keys).await?;
        for (i, k) in keys.iter().enumerate() {
            publishers.push((n.clone(), format!("{n}-publisher-{i}"), k.clone()));
        }
    }
    let secrets: Api<Secret> = env.api();
    futures::stream::iter(publishers.iter())
        .map(|(_, name, key)| {
            let secrets = secrets.clone();
            async move {
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        annotations: Some(BTreeMap::from([(
                            pot_operator::key_secret::SIGNER_FOR_ANNOTATION.to_string(),
                            "TrainingTask".to_string(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "key".to_string(),
                        ByteString(keyfile::encode(key).into_bytes()),
                    )])),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &s).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("creating the publishers' Secrets")?;
    // Every publisher's transfer is in a block before its task is created.
    for (_, (_, node)) in nets.iter().zip(&coordinators) {
        let h = node.head().await?.height;
        node.wait_height(h + 2, Duration::from_secs(60)).await?;
    }

    let began = Instant::now();
    let tasks: Api<TrainingTask> = env.api();
    futures::stream::iter(publishers.iter())
        .map(|(net, secret, _)| {
            let tasks = tasks.clone();
            async move { create_task(&tasks, net, secret).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total = publishers.len();
    eprintln!("bench-operator: {total} TrainingTasks created");
    let submitted = wait_tasks(&tasks, "on chain", |s| s.task_id.is_some(), total, began).await?;
    eprintln!("bench-operator: all on chain after {submitted:?}");
    let ended = wait_tasks(
        &tasks,
        "ended",
        |s| matches!(s.phase, TaskPhase::Finalized | TaskPhase::Failed),
        total,
        began,
    )
    .await?;
    eprintln!("bench-operator: all ended after {ended:?}");

    let text = op.metrics_text().await?;
    let mut reconciles = BTreeMap::new();
    for c in ["potnetwork", "miner", "trainingtask"] {
        reconciles.insert(c.to_string(), latency(&text, c));
    }
    let count: f64 = reconciles.values().map(|l| l.count).sum();
    let (api_requests, api_writes) = requests(&text);
    let (rss_mib, peak_rss_mib) = rss(op.process.pid())?;
    drop(coordinators);
    Ok(Report {
        networks: cfg.networks,
        tasks: total,
        kwok_nodes: cfg.kwok_nodes,
        submit_all_s: submitted.as_secs_f64(),
        end_all_s: ended.as_secs_f64(),
        reconciles,
        api_requests,
        api_writes,
        requests_per_reconcile: api_requests / count.max(1.0),
        writes_per_reconcile: api_writes / count.max(1.0),
        rss_mib,
        peak_rss_mib,
        queue_to_replicas_ms,
    })
}

/// The time from `began` until all `total` tasks' statuses satisfy `done`, listed once a
/// second (more often would load the API server being measured).
async fn wait_tasks(
    tasks: &Api<TrainingTask>,
    what: &str,
    done: impl Fn(&pot_operator::crd::task::TrainingTaskStatus) -> bool,
    total: usize,
    began: Instant,
) -> anyhow::Result<Duration> {
    const LIMIT: Duration = Duration::from_secs(1800);
    loop {
        let list = tasks.list(&Default::default()).await?;
        let n = list
            .items
            .iter()
            .filter(|t| t.status.as_ref().is_some_and(&done))
            .count();
        if n == total {
            return Ok(began.elapsed());
        }
        anyhow::ensure!(
            began.elapsed() < LIMIT,
            "only {n} of {total} tasks {what} after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn create_task(tasks: &Api<TrainingTask>, net: &str, secret: &str) -> anyhow::Result<()> {
    let name = secret.replace("-publisher-", "-task-");
    let mut doc = digits_training_task(&name, net, secret);
    doc["spec"]["windows"] = windows(3, 20);
    let tt: TrainingTask = serde_json::from_value(doc)?;
    tasks
        .create(&PostParams::default(), &tt)
        .await
        .with_context(|| format!("creating TrainingTask {name}"))?;
    Ok(())
}

/// A fleet that scales with network 0's queue: submit tasks straight to the chain one at a
/// time and time each step from the queue showing it to the StatefulSet asking for it.
async fn queue_to_replicas(env: &TestEnv, node: &Client, steps: usize) -> anyhow::Result<Vec<f64>> {
    apply::<pot_operator::crd::miner::Miner>(
        &env.api(),
        json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
            "metadata": {"name": "gpu"},
            "spec": {
                "networkRef": {"name": "net-0"},
                "gpusPerPod": 1,
                "storage": {"size": "1Gi"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "autoscaling": {"minReplicas": 0, "maxReplicas": 32, "targetOpenTasksPerMiner": 1,
                                "scaleDownStabilizationSeconds": 600},
            }
        }),
    )
    .await;
    let replicas = || statefulset_replicas(env, "gpu-miner");
    eventually("the fleet at 0", Duration::from_secs(60), || async {
        (replicas().await == Some(0)).then_some(())
    })
    .await;
    let key = faucet_key(env, "net-0").await?;
    let mut nonce = node.account(&key.address()).await?.nonce;
    let mut samples = Vec::new();
    for step in 1..=steps {
        submit_digits_task(node, &key, nonce, 1000, windows(2000, 20)).await?;
        nonce += 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        let shown = loop {
            let q = node.queue().await?;
            if pot_operator::context::takeable(&q) >= step as u64 {
                break Instant::now();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "task {step} never reached the queue"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        loop {
            if replicas().await.is_some_and(|r| r >= step as i32) {
                break;
            }
            anyhow::ensure!(
                shown.elapsed() < Duration::from_secs(60),
                "the fleet never asked for {step} replicas"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.push(shown.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

async fn faucet_key(env: &TestEnv, net: &str) -> anyhow::Result<SecretKey> {
    let s: Secret = env.api().get(&format!("{net}-faucet")).await?;
    let data = s.data.context("faucet Secret without data")?;
    Ok(keyfile::decode(std::str::from_utf8(&data["key"].0)?)?)
}

/// Give each key enough for a task's bounty and fees, from the faucet, with consecutive nonces.
async fn fund(node: &Client, faucet: &SecretKey, keys: &[SecretKey]) -> anyhow::Result<()> {
    let head = node.head().await?;
    let first = node.account(&faucet.address()).await?.nonce;
    for (i, k) in keys.iter().enumerate() {
        let tx = Tx {
            chain_id: head.chain_id.clone(),
            signer: faucet.address(),
            nonce: first + i as u64,
            fee: head.tx_fee,
            body: TxBody::Transfer {
                to: k.address(),
                amount: Amount(1_000_000),
            },
        };
        node.submit(&tx.sign(faucet)).await?;
    }
    Ok(())
}

async fn annotate(env: &TestEnv, net: &str, url: &str) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let nets: Api<pot_operator::crd::network::PotNetwork> = env.api();
    let patch = json!({"metadata": {"annotations": {"pot.dev/api-url": url}}});
    nets.patch(net, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// kwok managing `nodes` fake Nodes (32 CPUs, 8 GPUs each) whose pods it marks Running with
/// addresses in 127.1.0.0/16 (nothing listens there: a miner's node API is refused at once),
/// and enough local PersistentVolumes for the StatefulSets' claims.
async fn kwok(env: &TestEnv, nodes: usize) -> anyhow::Result<Process> {
    let stages = crate::operator::repo().join("e2e/kwok/stages.yaml");
    let mut cmd = env.cp.command("kwok");
    cmd.args([
        "--kubeconfig",
        &env.cp.kubeconfig.display().to_string(),
        "--config",
        &stages.display().to_string(),
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--cidr=127.1.0.0/16",
        "--node-ip=127.0.0.1",
    ]);
    let kwok = Process::start("kwok", cmd, &env.cp.log_path("kwok"))?;
    for i in 0..nodes {
        let name = format!("kwok-{i}");
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok"}},
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"},
            }
        });
        env.cp
            .kubectl_input(&["apply", "-f", "-"], &node.to_string())?;
    }
    // The API server taints a new Node not-ready; the node lifecycle controller that would
    // lift it once kwok reports Ready does not run here.
    for i in 0..nodes {
        let name = format!("kwok-{i}");
        eventually("a kwok node Ready", Duration::from_secs(60), || {
            let ready = env
                .cp
                .kubectl(&[
                    "get",
                    "node",
                    &name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .is_ok_and(|s| s.trim() == "True");
            async move { ready.then_some(()) }
        })
        .await;
        let _ = env.cp.kubectl(&[
            "taint",
            "node",
            &name,
            "node.kubernetes.io/not-ready:NoSchedule-",
        ]);
    }
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    for i in 0..64 {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("{}-pv-{i}", env.namespace)},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": format!("/tmp/{}-pv-{i}", env.namespace)}}
        }))?;
        pvs.create(&PostParams::default(), &pv).await?;
    }
    Ok(kwok)
}

/// p50 and p99 of controller `c` from the histogram, interpolating inside a bucket as
/// Prometheus's `histogram_quantile` does.
fn latency(text: &str, c: &str) -> Latency {
    let prefix = "pot_operator_reconcile_duration_seconds_bucket{";
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&format!("controller=\"{c}\"")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last().map(|b| b.1).unwrap_or(0.0);
    // `None`: beyond the largest finite bucket (or no reconcile at all).
    let q = |p: f64| -> Option<f64> {
        let rank = p * count;
        let mut prev = (0.0, 0.0);
        for &(le, v) in &buckets {
            if v >= rank && count > 0.0 {
                if le.is_infinite() {
                    return None;
                }
                let frac = if v > prev.1 {
                    (rank - prev.1) / (v - prev.1)
                } else {
                    1.0
                };
                return Some((prev.0 + (le - prev.0) * frac) * 1000.0);
            }
            prev = (le, v);
        }
        None
    };
    Latency {
        count,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    }
}

/// All requests to the Kubernetes API, and the writes among them.
fn requests(text: &str) -> (f64, f64) {
    let mut all = 0.0;
    let mut writes = 0.0;
    for l in text
        .lines()
        .filter(|l| l.starts_with("pot_operator_kube_api_requests_total{"))
    {
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        all += v;
        if !l.contains("verb=\"GET\"") {
            writes += v;
        }
    }
    (all, writes)
}

/// Resident memory now and at its peak, in MiB.
fn rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let text = "\
pot_operator_reconcile_duration_seconds_bucket{controller=\"miner\",le=\"0.001\"} 0
pot_operator_reconcile_duration_seconds_bucket{controller=\"miner\",le=\"0.002\"} 50
pot_operator_reconcile_duration_seconds_bucket{controller=\"miner\",le=\"0.004\"} 100
pot_operator_reconcile_duration_seconds_bucket{controller=\"miner\",le=\"+Inf\"} 100
pot_operator_reconcile_duration_seconds_bucket{controller=\"other\",le=\"+Inf\"} 7
";
        let l = latency(text, "miner");
        assert_eq!(l.count, 100.0);
        assert!((l.p50_ms.unwrap() - 2.0).abs() < 1e-9, "{l:?}");
        assert!((l.p99_ms.unwrap() - 3.96).abs() < 1e-9, "{l:?}");
        // Ranks in the +Inf bucket are not made up.
        let tail = text.replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200");
        let l = latency(&tail, "miner");
        assert_eq!((l.count, l.p99_ms), (200.0, None));
    }

    #[test]
    fn writes_are_every_request_but_reads() {
        let text = "\
pot_operator_kube_api_requests_total{verb=\"GET\",resource=\"pods\"} 10
pot_operator_kube_api_requests_total{verb=\"PATCH\",resource=\"pods\"} 3
pot_operator_kube_api_requests_total{verb=\"POST\",resource=\"events\"} 2
";
        assert_eq!(requests(text), (15.0, 5.0));
    }
}
