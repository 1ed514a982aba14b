//! The `TrainingTask` controller against the real API server and a real chain: the task is
//! signed with the publisher's key and submitted exactly once, and the status follows the
//! chain to the end. No miner runs here (no kubelet yet), so the task ends with no claim and
//! the ledger refunds the bounty without asking for the eval set.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pot_e2e::operator::{Operator, coordinator_for, digits_training_task, install_crds, windows};
use pot_e2e::{TestEnv, eventually};
use pot_operator::crd::network::PotNetwork;
use pot_operator::crd::task::{TaskPhase, TrainingTask};
use pot_protocol::client::Client;
use pot_protocol::keyfile;
use serde_json::json;

#[tokio::test]
async fn a_task_is_submitted_once_and_followed_to_its_end() {
    let env = TestEnv::new("op-task").await;
    install_crds(&env).await;
    // `any`: the test serves a dataset on loopback, which the default (`public`) never fetches.
    let op = Operator::start(&env, "only", &["--data-check", "any"]).await;
    let nets: Api<PotNetwork> = env.api();
    let net: PotNetwork = serde_json::from_value(json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "PotNetwork",
        "metadata": {"name": "chain", "annotations": {"pot.dev/api-url": "http://127.0.0.1:9"}},
        "spec": {"coordinators": 1, "storage": {"size": "1Gi"},
                 "genesis": {"blockTimeMs": 300, "faucet": {"balance": 100000000}}},
    }))
    .unwrap();
    nets.patch("chain", &PatchParams::apply("test"), &Patch::Apply(&net))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator_for(&env, "chain", dir.path()).await;
    let patch = json!({"metadata": {"annotations": {"pot.dev/api-url": url}}});
    nets.patch("chain", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let faucet: Secret = env.api().get("chain-faucet").await.unwrap();
    let publisher =
        keyfile::decode(std::str::from_utf8(&faucet.data.unwrap()["key"].0).unwrap()).unwrap();
    let node = Client::new(url.clone());
    let before = node.account(&publisher.address()).await.unwrap();

    let tasks: Api<TrainingTask> = env.api();
    let mut doc = digits_training_task("digits", "chain", "chain-faucet");
    doc["spec"]["windows"] = windows(3, 20);
    let tt: TrainingTask = serde_json::from_value(doc).unwrap();
    // A second task of the same publisher, created at once: both may pick the same nonce.
    let mut twin = tt.clone();
    twin.metadata.name = Some("digits-twin".into());
    twin.spec.bounty = 7000;
    for t in [&tt, &twin] {
        let name = t.metadata.name.clone().unwrap();
        tasks
            .patch(&name, &PatchParams::apply("test"), &Patch::Apply(t))
            .await
            .unwrap();
    }
    // And, through kubectl, one whose training set's hash is not that of its bytes: it fails
    // before anything is signed, and the two others go on as if it were not there.
    let mut bad = digits_training_task("bad-hash", "chain", "chain-faucet");
    bad["spec"]["task"]["dataset"]["sha256"] = "ab".repeat(32).into();
    env.cp
        .kubectl_input(
            &["apply", "-n", &env.namespace, "-f", "-"],
            &serde_json::to_string(&bad).unwrap(),
        )
        .unwrap();
    // And one whose training set is downloaded (after the condition says it is being
    // checked) and found to be other bytes than its hash says.
    let mut bad_url = digits_training_task("bad-url", "chain", "chain-faucet");
    bad_url["spec"]["task"]["dataset"]["locator"] = serve(b"0,1\n").into();
    tasks
        .patch(
            "bad-url",
            &PatchParams::apply("test"),
            &Patch::Apply(&serde_json::from_value::<TrainingTask>(bad_url).unwrap()),
        )
        .await
        .unwrap();
    let ended = |name: &'static str| {
        let tasks = tasks.clone();
        async move {
            eventually("the task to end on chain", Duration::from_secs(120), || {
                let tasks = tasks.clone();
                async move {
                    let t = tasks.get(name).await.ok()?;
                    let s = t.status.clone()?;
                    matches!(s.phase, TaskPhase::Finalized | TaskPhase::Failed).then_some(t)
                }
            })
            .await
        }
    };
    let done = ended("digits").await;
    let twin_done = ended("digits-twin").await;
    let twin_status = twin_done.status.unwrap();
    assert_ne!(twin_status.task_id, done.status.as_ref().unwrap().task_id);
    let twin_id: pot_protocol::Hash = twin_status.task_id.unwrap().parse().unwrap();
    assert_eq!(
        node.task(&twin_id).await.unwrap().task.bounty.0,
        7000,
        "each resource mirrors its own task"
    );
    let status = done.status.unwrap();
    assert_eq!(
        status.phase,
        TaskPhase::Finalized,
        "{:?}\n{}",
        status.message,
        op.log_text()
    );
    let id: pot_protocol::Hash = status.task_id.clone().unwrap().parse().unwrap();
    let info = node.task(&id).await.unwrap();
    assert_eq!(info.task.bounty.0, 5000);
    assert_eq!(info.task.client, publisher.address());
    // No miner took it: the bounty came back.
    assert!(
        status
            .payouts
            .iter()
            .any(|p| p.reason == "refund" && p.amount == 5000),
        "{:?}",
        status.payouts
    );
    // Exactly one submission each, though they were reconciled many times (and none for the
    // task with the wrong hash).
    let after = node.account(&publisher.address()).await.unwrap();
    assert_eq!(after.nonce, before.nonce + 2, "submitted more than once");
    let bad = tasks.get("bad-hash").await.unwrap().status.unwrap();
    assert_eq!(bad.phase, TaskPhase::Failed, "{:?}", bad.message);
    assert!(bad.submit_nonce.is_none() && bad.task_id.is_none());
    let verified = bad
        .conditions
        .iter()
        .find(|c| c.type_ == "DataVerified")
        .expect("a DataVerified condition");
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("False", "HashMismatch")
    );
    assert!(
        verified
            .message
            .starts_with("task.dataset: builtin:digits has SHA-256 09f66e6d")
            && verified.message.contains(&"ab".repeat(32))
            && verified.message.contains("no bounty escrowed"),
        "{}",
        verified.message
    );
    let bad_url = ended("bad-url").await.status.unwrap();
    assert_eq!(bad_url.phase, TaskPhase::Failed, "{:?}", bad_url.message);
    assert!(bad_url.submit_nonce.is_none());
    let verified = bad_url
        .conditions
        .iter()
        .find(|c| c.type_ == "DataVerified")
        .expect("a DataVerified condition");
    assert_eq!(verified.reason, "HashMismatch", "{}", verified.message);
    assert!(
        verified.message.contains("(4 bytes) has SHA-256"),
        "{}",
        verified.message
    );
    // kubectl shows it where a person looks first.
    let shown = env
        .cp
        .kubectl(&["get", "tt", "bad-hash", "-n", &env.namespace])
        .unwrap();
    assert!(shown.contains("Failed"), "{shown}");
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "DataVerified" && c.status == "True"),
        "{:?}",
        status.conditions
    );
    let reconciles = op
        .metric("pot_operator_reconciles_total{controller=\"trainingtask\"}")
        .await;
    assert!(reconciles >= 3.0, "{reconciles} reconciles");
    assert!(
        done.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"pot.dev/eval-reveal".to_string())
    );

    // An ended task lets its resource go at once.
    tasks
        .delete("digits", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the task deleted", Duration::from_secs(30), || {
        let tasks = tasks.clone();
        async move { tasks.get_opt("digits").await.ok()?.is_none().then_some(()) }
    })
    .await;

    // Naming a Secret is not enough to sign with its key: the coordinator's own key (funded at
    // genesis) is not marked for TrainingTasks, so a task naming it is refused and the key
    // signs nothing.
    let keys: Secret = env.api().get("chain-coordinator-keys").await.unwrap();
    let coordinator =
        keyfile::decode(std::str::from_utf8(&keys.data.unwrap()["chain-coordinator-0"].0).unwrap())
            .unwrap();
    let nonce_before = node.account(&coordinator.address()).await.unwrap().nonce;
    let mut stolen = tt.clone();
    stolen.metadata.name = Some("stolen".into());
    stolen.spec.publisher_key_secret.name = "chain-coordinator-keys".into();
    stolen.spec.publisher_key_secret.key = "chain-coordinator-0".into();
    tasks
        .patch(
            "stolen",
            &PatchParams::apply("test"),
            &Patch::Apply(&stolen),
        )
        .await
        .unwrap();
    let refused = eventually("the unmarked key refused", Duration::from_secs(30), || {
        let tasks = tasks.clone();
        async move {
            let s = tasks.get("stolen").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.reason == "PublisherKeyInvalid")
                .then_some(s)
        }
    })
    .await;
    assert_eq!(refused.phase, TaskPhase::Pending);
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("pot.dev/signer-for=TrainingTask")),
        "{:?}",
        refused.message
    );
    assert!(refused.task_id.is_none() && refused.submit_nonce.is_none());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        node.account(&coordinator.address()).await.unwrap().nonce,
        nonce_before,
        "the coordinator's key signed for a task"
    );
}

/// Serve `body` to every request on a loopback port; the URL of a file there.
fn serve(body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}/digits.csv")
}
