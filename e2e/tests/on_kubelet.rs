//! The product as its users run it, on the embedded cluster with the local kubelet: the
//! operator installed with `helm install` (running as a pod, under the chart's ServiceAccount),
//! resources applied with `kubectl`, and real `pot-node` coordinators and miners as pods.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use pot_e2e::kubelet::{Running, project_images};
use pot_e2e::operator::repo;
use pot_e2e::{TestEnv, demo, eventually, shared, workspace_binary};
use pot_operator::crd::miner::Miner;
use pot_operator::crd::task::{TaskPhase, TrainingTask};
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

/// The whole flow on 4 coordinators: every miner of the CPU fleet trains and claims the
/// digits task, the validator fleet (funded and bonded by the operator, nothing at genesis)
/// checks the claims, and the task finalizes with a winner whose held-out accuracy is at least
/// 0.9; the TrainingTask's status is what every coordinator's chain says.
#[tokio::test]
async fn a_task_finalizes_on_four_coordinators_and_its_status_matches_the_chain() {
    cluster();
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
    assert_eq!(status.claims.len(), 2, "{}", demo::summary(&task));
    let winner = status.winner.clone().expect("a winner");
    let accuracy = status.winner_metric.expect("the winner's metric");
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");
    assert!(
        status
            .claims
            .iter()
            .all(|c| c.verdict.as_deref() == Some("valid") && c.valid_reports >= 2),
        "both honest claims pass a quorum of validators: {:?}",
        status.claims
    );

    // The status is the chain's: ask each coordinator (by its pod address) for the task.
    let pods: Api<Pod> = env.api();
    let id = status.task_id.clone().unwrap().parse().unwrap();
    for i in 0..4 {
        let pod = pods.get(&format!("main-coordinator-{i}")).await.unwrap();
        let ip = pod.status.unwrap().pod_ip.unwrap();
        let info = NodeClient::new(format!("http://{ip}:26657"))
            .task(&id)
            .await
            .unwrap();
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
    }
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
