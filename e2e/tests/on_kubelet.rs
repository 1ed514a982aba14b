//! The product as its users run it, on the embedded cluster with the local kubelet: the
//! operator installed with `helm install` (running as a pod, under the chart's ServiceAccount),
//! resources applied with `kubectl`, and real `pot-node` coordinators and miners as pods.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use pot_e2e::kubelet::{Running, project_images};
use pot_e2e::operator::{rbac_deviations, repo, statefulset_replicas};
use pot_e2e::{TestEnv, demo, eventually, shared, workspace_binary};
use pot_operator::crd::miner::Miner;
use pot_operator::crd::task::{TaskPhase, TrainingTask};
use pot_protocol::api::{NodeStatus, TaskWork};
use pot_protocol::client::Client as NodeClient;
use pot_protocol::state::TaskStatus;

/// One kubelet and one operator (Helm release `pot` in `pot-system`) for the whole binary.
fn cluster() -> &'static Running {
    static KUBELET: OnceLock<Running> = OnceLock::new();
    KUBELET.get_or_init(|| {
        let cp = shared();
        let libtorch =
            std::env::var_os("LIBTORCH").map(|l| std::path::PathBuf::from(l).join("lib"));
        let images = project_images(
            &cp.dir.join("images"),
            &[
                ("pot-node", pot_e2e::pot_node_binary()),
                (
                    "pot-operator",
                    workspace_binary("pot-operator", "pot-operator"),
                ),
            ],
            libtorch,
        )
        .expect("the node image");
        let kubelet = cp
            .start_kubelet("local", 0, images)
            .expect("the local kubelet");
        let chart = repo().join("helm/pot");
        demo::helm_install(
            &cp.tool("helm"),
            &cp.kubeconfig,
            &chart,
            &["resyncSeconds=2"],
        )
        .expect("helm install");
        kubelet
    })
}

/// The tests that run whole networks take turns: on two cores, two at once would starve both.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A manifest of `manifests/` with its network and key names replaced.
fn manifest(file: &str, replace: &[(&str, &str)]) -> String {
    let path = repo().join("manifests").join(file);
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    text
}

const NETWORK: &str = r#"
apiVersion: pot.dev/v1alpha1
kind: PotNetwork
metadata:
  name: main
spec:
  coordinators: 4
  storage: {size: 1Gi}
  genesis:
    blockTimeMs: 500
    faucet: {balance: 100000000}
"#;

/// The whole flow on 4 coordinators: the miners of the CPU fleet train and claim the digits
/// task, the validator fleet (funded and bonded by the operator, nothing at genesis) checks the
/// claims, and the task finalizes with a winner whose held-out accuracy is at least 0.9; the
/// TrainingTask's status is what every coordinator's chain says. On the way, a coordinator pod
/// is deleted once the task is on chain and a miner pod in the middle of its training: both
/// come back, and the four chains are one.
#[tokio::test]
async fn a_task_finalizes_on_four_coordinators_through_pod_deletions_and_its_status_matches_the_chain()
 {
    cluster();
    let _turn = HEAVY.lock().await;
    let env = TestEnv::new("full_flow").await;
    let ns = env.namespace.clone();
    env.cp
        .kubectl_input(&["apply", "-n", &ns, "-f", "-"], NETWORK)
        .unwrap();
    let rename = [
        ("name: dev\n", "name: main\n"),
        ("dev-faucet", "main-faucet"),
    ];
    // Who trains, who checks, and the task, as `make demo` applies them.
    for file in ["miners-cpu.yaml", "validators-cpu.yaml", "task-digits.yaml"] {
        env.cp
            .kubectl_input(&["apply", "-n", &ns, "-f", "-"], &manifest(file, &rename))
            .unwrap();
    }
    let tasks: Api<TrainingTask> = env.api();
    let pods: Api<Pod> = env.api();

    // Chaos, first a coordinator: deleted once the task is on chain, it comes back (a new pod,
    // the same volume) and catches up.
    eventually("the task on chain", Duration::from_secs(600), || async {
        let s = tasks.get("digits").await.ok()?.status?;
        s.submitted_at.map(|_| ())
    })
    .await;
    let restarted = delete_pod(&env, "main-coordinator-1").await;
    // Then a miner, in the middle of its training (seen at a step short of the last).
    let (step, steps) = eventually("cpu-miner-1 training", Duration::from_secs(600), || async {
        let p = pods.get("cpu-miner-1").await.ok()?;
        let ip = p.status?.pod_ip?;
        let s = NodeClient::with_timeout(format!("http://{ip}:26657"), Duration::from_secs(2))
            .node_status()
            .await
            .ok()?;
        s.tasks.values().find_map(|w| match w {
            TaskWork::Training { step, steps, .. } if *step > 0 && step < steps => {
                Some((*step, *steps))
            }
            _ => None,
        })
    })
    .await;
    let killed = delete_pod(&env, "cpu-miner-1").await;
    eprintln!("deleted cpu-miner-1 at step {step} of {steps}");
    eventually(
        "main-coordinator-1 back and ready",
        Duration::from_secs(300),
        || async {
            let p = pods.get("main-coordinator-1").await.ok()?;
            (p.metadata.uid != restarted && is_ready(&p)).then_some(())
        },
    )
    .await;

    let task = eventually(
        "the task finalized (with the outcome in its status)",
        Duration::from_secs(1200),
        || async {
            let t = tasks.get("digits").await.ok()?;
            let s = t.status.as_ref()?;
            assert!(
                !matches!(s.phase, TaskPhase::Failed | TaskPhase::Expired),
                "{}",
                demo::summary(&t)
            );
            (s.phase == TaskPhase::Finalized && !s.payouts.is_empty()).then_some(t)
        },
    )
    .await;
    let status = task.status.clone().unwrap();
    // The miner deleted mid-training may or may not have trained again in time to claim.
    assert!(!status.claims.is_empty(), "{}", demo::summary(&task));
    let winner = status.winner.clone().expect("a winner");
    let accuracy = status.winner_metric.expect("the winner's metric");
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");
    assert!(
        status
            .claims
            .iter()
            .all(|c| c.verdict.as_deref() == Some("valid") && c.valid_reports >= 2),
        "every honest claim passes a quorum of validators: {:?}",
        status.claims
    );

    // The status is the chain's: ask each coordinator (by its pod address) for the task.
    let id = status.task_id.clone().unwrap().parse().unwrap();
    let mut ends = Vec::new();
    for i in 0..4 {
        let pod = pods.get(&format!("main-coordinator-{i}")).await.unwrap();
        let ip = pod.status.unwrap().pod_ip.unwrap();
        let coordinator = NodeClient::new(format!("http://{ip}:26657"));
        // The operator read one node; this one may be a block or two behind it.
        let info = eventually(
            &format!("coordinator {i} to have finalized the task"),
            Duration::from_secs(120),
            || async {
                coordinator
                    .task(&id)
                    .await
                    .ok()
                    .filter(|info| matches!(info.task.status, TaskStatus::Finalized(_)))
            },
        )
        .await;
        let on_chain: BTreeSet<String> = info.task.claims.keys().map(|a| a.to_hex()).collect();
        let mirrored: BTreeSet<String> = status.claims.iter().map(|c| c.miner.clone()).collect();
        assert_eq!(on_chain, mirrored, "coordinator {i}'s claims");
        let TaskStatus::Finalized(outcome) = &info.task.status else {
            panic!("coordinator {i}: not finalized: {:?}", info.task.status);
        };
        assert_eq!(outcome.winner.map(|w| w.to_hex()), Some(winner.clone()));
        assert_eq!(
            outcome.winning_metric.map(|m| m.to_f64()),
            Some(accuracy),
            "coordinator {i}'s winning metric"
        );
        let paid: Vec<(String, u64)> = outcome
            .payouts
            .iter()
            .map(|p| (p.to.to_hex(), p.amount.0))
            .collect();
        let shown: Vec<(String, u64)> = status
            .payouts
            .iter()
            .map(|p| (p.address.clone(), p.amount))
            .collect();
        assert_eq!(paid, shown, "coordinator {i}'s payouts");
        ends.push(NodeClient::new(format!("http://{ip}:26657")));
    }
    // One chain: the block at the lowest of the four heads is the same block everywhere (its
    // hash covers every block before it).
    let mut heights = Vec::new();
    for c in &ends {
        heights.push(c.head().await.unwrap().height);
    }
    let common = *heights.iter().min().unwrap();
    let mut blocks = Vec::new();
    for c in &ends {
        let b = c.block(common).await.unwrap();
        blocks.push((b.hash, b.state_root));
    }
    assert!(
        blocks.windows(2).all(|w| w[0] == w[1]),
        "the coordinators disagree at height {common}: {blocks:?}"
    );
    // The deleted miner came back as a new pod.
    let miner = eventually(
        "a new cpu-miner-1 ready",
        Duration::from_secs(300),
        || async {
            let p = pods.get("cpu-miner-1").await.ok()?;
            (p.metadata.uid != killed && is_ready(&p)).then_some(p)
        },
    )
    .await;
    // ... and at work again: its node follows the chain (its status answers from its volume).
    let ip = miner.status.unwrap().pod_ip.unwrap();
    let back = NodeClient::new(format!("http://{ip}:26657"))
        .node_status()
        .await
        .unwrap();
    assert!(back.height > 0, "{back:?}");
    // The validators that checked the claims were paid their share.
    let validators: Api<Miner> = env.api();
    let fleet = validators.get("validators").await.unwrap();
    let addresses: BTreeSet<String> = fleet.status.unwrap().addresses.into_iter().collect();
    let paid_validators: BTreeSet<&String> = status
        .payouts
        .iter()
        .filter(|p| p.reason == "validator")
        .map(|p| &p.address)
        .collect();
    assert!(
        paid_validators.len() >= 2 && paid_validators.iter().all(|a| addresses.contains(*a)),
        "validators paid {paid_validators:?}; the fleet is {addresses:?}"
    );

    // Node pods run as the non-root user their security context names: the processes do.
    for p in pods.list(&Default::default()).await.unwrap() {
        let sc = p.spec.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
    }
    let uids = node_process_uids();
    assert!(
        uids.len() >= 9,
        "4 coordinators, 2 miners and 3 validators: {uids:?}"
    );
    assert!(uids.iter().all(|u| *u == 10001), "{uids:?}");

    // `kubectl logs` shows a miner's own log (through the API server and the kubelet).
    let logs = env.cp.kubectl(&["logs", "-n", &ns, "cpu-miner-0"]).unwrap();
    assert!(logs.contains("took the task"), "{logs}");
}

/// A CPU fleet that scales with the queue, from 1 to 3 miners, 2 open tasks per miner.
const AUTOSCALED: &str = r#"
apiVersion: pot.dev/v1alpha1
kind: Miner
metadata:
  name: auto
spec:
  networkRef: {name: dev}
  gpusPerPod: 0
  resources:
    requests: {cpu: 100m, memory: 256Mi}
  storage: {size: 1Gi}
  stake: 10000
  funding:
    fromSecret: {name: dev-faucet}
  autoscaling:
    minReplicas: 1
    maxReplicas: 3
    targetOpenTasksPerMiner: 2
    scaleDownStabilizationSeconds: 10
"#;

/// Autoscaling with real miner pods: six queued tasks raise the fleet from its minimum of 1 to
/// its maximum of 3 at once; when no task is left open for claims it returns to 1 after the
/// stabilisation window; and no pod it removed was doing work (each was last seen drained,
/// with every task it took revealed or let go).
#[tokio::test]
async fn six_queued_tasks_scale_the_fleet_up_and_it_shrinks_back_without_killing_work() {
    cluster();
    let _turn = HEAVY.lock().await;
    let env = TestEnv::new("autoscale").await;
    let ns = env.namespace.clone();
    let apply = ["apply", "-n", ns.as_str(), "-f", "-"];
    env.cp
        .kubectl_input(&apply, &manifest("network-dev.yaml", &[]))
        .unwrap();
    env.cp.kubectl_input(&apply, AUTOSCALED).unwrap();
    let pods: Api<Pod> = env.api();
    eventually("auto-miner-0 ready", Duration::from_secs(300), || async {
        is_ready(&pods.get("auto-miner-0").await.ok()?).then_some(())
    })
    .await;
    let coordinator = pods.get("dev-coordinator-0").await.unwrap();
    let chain = NodeClient::new(format!(
        "http://{}:26657",
        coordinator.status.unwrap().pod_ip.unwrap()
    ));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn(watch_miners(pods.clone(), stop.clone()));
    // Six small tasks, each open for claims for 60 s.
    for i in 0..6 {
        let task = manifest(
            "task-digits.yaml",
            &[
                ("name: digits\n", &format!("name: digits-{i}\n")),
                ("steps: 2000", "steps: 300"),
                ("commit: 60", "commit: 120"),
                ("reportCommit: 40", "reportCommit: 20"),
                ("bounty: 5000", "bounty: 1000"),
            ],
        );
        env.cp.kubectl_input(&apply, &task).unwrap();
    }
    let takeable = |q: pot_protocol::api::Queue| pot_operator::context::takeable(&q);
    eventually(
        "six tasks open for claims",
        Duration::from_secs(120),
        || async { (takeable(chain.queue().await.ok()?) == 6).then_some(()) },
    )
    .await;
    eventually(
        "the fleet at its maximum",
        Duration::from_secs(30),
        || async { (statefulset_replicas(&env, "auto-miner").await? == 3).then_some(()) },
    )
    .await;
    let emptied = eventually(
        "no task open for claims",
        Duration::from_secs(300),
        || async {
            (takeable(chain.queue().await.ok()?) == 0).then_some(std::time::Instant::now())
        },
    )
    .await;
    eventually(
        "the fleet back at its minimum",
        Duration::from_secs(300),
        || async {
            let left = pods
                .list(&kube::api::ListParams::default().labels("pot.dev/miner=auto"))
                .await
                .ok()?;
            (statefulset_replicas(&env, "auto-miner").await? == 1 && left.items.len() == 1)
                .then_some(())
        },
    )
    .await;
    let down = emptied.elapsed();
    assert!(
        down >= Duration::from_secs(9),
        "shrank {down:?} after the queue emptied, inside the 10 s window"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();

    // A pod the fleet removed before it ever had an address (still starting) is not seen
    // here, and had no work to lose.
    let removed: Vec<&MinerSeen> = seen.values().filter(|m| m.deleted).collect();
    assert!(
        !removed.is_empty() && removed.len() <= 2,
        "of auto-miner-1 and -2, those seen running were removed: {seen:#?}"
    );
    for m in &removed {
        let last = m.last.as_ref().expect("a removed pod was seen working");
        assert!(
            last.draining && last.unfinished() == 0,
            "{} was removed with work: {last:?}",
            m.name
        );
    }
    // The scaled-up pods did take tasks (so waiting for them mattered), and every task was
    // claimed and revealed by someone.
    assert!(
        removed.iter().any(|m| m.took_tasks),
        "no removed pod ever took a task: {seen:#?}"
    );
    let tasks: Api<TrainingTask> = env.api();
    for t in 0..6 {
        let name = format!("digits-{t}");
        let id = tasks
            .get(&name)
            .await
            .unwrap()
            .status
            .unwrap()
            .task_id
            .unwrap();
        let id = id.parse().unwrap();
        eventually(
            &format!("every claim on {name} revealed"),
            Duration::from_secs(120),
            || async {
                let info = chain.task(&id).await.ok()?;
                let claims = &info.task.claims;
                (!claims.is_empty() && claims.values().all(|c| c.claim.is_some())).then_some(())
            },
        )
        .await;
    }
    // The chain's word, not the pods': once every task is finalized, no key of the fleet was
    // penalised — no claim rejected, and no validation it was assigned left unreported because
    // its pod was removed.
    for t in 0..6 {
        let name = format!("digits-{t}");
        let id = tasks.get(&name).await.unwrap().status.unwrap().task_id;
        let id = id.unwrap().parse().unwrap();
        eventually(
            &format!("{name} finalized on chain"),
            Duration::from_secs(600),
            || async {
                let info = chain.task(&id).await.ok()?;
                matches!(info.task.status, TaskStatus::Finalized(_)).then_some(())
            },
        )
        .await;
    }
    for m in seen.values() {
        let Some(last) = &m.last else { continue };
        let account = chain.account(&last.address).await.unwrap();
        let r = &account.reputation;
        assert_eq!(
            (r.claims_rejected, r.reports_missed),
            (0, 0),
            "{} ({}) was penalised on chain: {r:?}",
            m.name,
            last.address
        );
    }
}

/// What the test saw of one miner pod (kept by its uid: a recreated pod is another).
#[derive(Debug)]
struct MinerSeen {
    name: String,
    /// Its node status at the last look before it was deleted.
    last: Option<NodeStatus>,
    took_tasks: bool,
    deleted: bool,
}

/// Look at every miner pod's node status every 250 ms until `stop`, keeping each pod's last
/// status from before its deletion began.
async fn watch_miners(
    pods: Api<Pod>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::collections::BTreeMap<String, MinerSeen> {
    let mut seen = std::collections::BTreeMap::<String, MinerSeen>::new();
    let lp = kube::api::ListParams::default().labels("pot.dev/miner=auto");
    loop {
        let done = stop.load(std::sync::atomic::Ordering::Relaxed);
        if let Ok(list) = pods.list(&lp).await {
            let alive: BTreeSet<String> = list
                .items
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            for (uid, m) in seen.iter_mut() {
                m.deleted |= !alive.contains(uid);
            }
            for p in list.items {
                let (Some(uid), Some(ip)) = (
                    p.metadata.uid.clone(),
                    p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                ) else {
                    continue;
                };
                let entry = seen.entry(uid.clone()).or_insert_with(|| MinerSeen {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    last: None,
                    took_tasks: false,
                    deleted: false,
                });
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let status =
                    NodeClient::with_timeout(format!("http://{ip}:26657"), Duration::from_secs(1))
                        .node_status()
                        .await;
                if let Ok(s) = status {
                    entry.took_tasks |= !s.tasks.is_empty();
                    entry.last = Some(s);
                }
            }
        }
        if done {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator the chart installed runs as the chart's ServiceAccount, and that account may do
/// what the controllers use and none of what they must never do, in a namespace the chart
/// never heard of (`kubectl auth can-i --as`).
#[tokio::test]
async fn the_charts_service_account_may_do_what_the_operator_needs_and_no_more() {
    cluster();
    let env = TestEnv::new("chart_rbac").await;
    let account = env
        .cp
        .kubectl(&[
            "get",
            "deployment",
            "-n",
            "pot-system",
            "-l",
            "app.kubernetes.io/name=pot-operator",
            "-o",
            "jsonpath={.items[*].spec.template.spec.serviceAccountName}",
        ])
        .unwrap();
    let account = account.trim();
    assert!(
        !account.is_empty() && !account.contains(' '),
        "one operator Deployment with a ServiceAccount: {account:?}"
    );
    let user = format!("system:serviceaccount:pot-system:{account}");
    let wrong = rbac_deviations(&env, &env.namespace, &user);
    assert!(wrong.is_empty(), "the chart's RBAC is wrong: {wrong:?}");
    // And the account is not the namespace's default one, which other pods share.
    assert_ne!(account, "default");
}

/// Delete pod `name` as `kubectl delete` does (gracefully), returning the uid it had.
async fn delete_pod(env: &TestEnv, name: &str) -> Option<String> {
    let pods: Api<Pod> = env.api();
    let uid = pods.get(name).await.unwrap().metadata.uid;
    env.cp
        .kubectl(&["delete", "pod", name, "-n", &env.namespace, "--wait=false"])
        .unwrap();
    uid
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The real uid of every process running the image's `pot-node`.
fn node_process_uids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/usr/local/bin/pot-node\0"))
        })
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}
