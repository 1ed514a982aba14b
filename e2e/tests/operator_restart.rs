//! The operator when the API server goes away: kube-apiserver is killed (every watch and
//! request in flight breaks) while reconciles run, and started again on the same etcd. The
//! operator must keep running, finish what it was doing, and converge on every later change:
//! spec changes and new objects through its watches (a re-listing watch sees them too), and a
//! deleted child even if its watch was still re-connecting when it went (such a delete leaves
//! no event; the resync, 30 s here, repairs it — as client-go's resync would).
//!
//! Its own test binary: restarting the shared API server would break the other tests' requests.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use pot_e2e::operator::{Operator, apply, digits_training_task, install_crds, replicas_where};
use pot_e2e::{TestEnv, eventually};
use pot_operator::crd::miner::Miner;
use pot_operator::crd::network::PotNetwork;
use pot_operator::crd::task::TrainingTask;
use pot_protocol::{SecretKey, keyfile};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn fleet(name: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
        "metadata": {"name": name},
        "spec": {"networkRef": {"name": "main"}, "replicas": replicas, "storage": {"size": "1Gi"}}
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn scale(miners: &Api<Miner>, name: &str, replicas: i32) {
    let patch = json!({"spec": {"replicas": replicas}});
    miners
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_converges_after_the_api_server_restarts_mid_reconcile() {
    let env = TestEnv::new("op-restart").await;
    install_crds(&env).await;
    // A Lease long enough that the library's renewal backoff after the outage cannot make it
    // step down here (that is the last part's business).
    let mut op = Operator::start(
        &env,
        "only",
        &["--resync-seconds", "30", "--lease-seconds", "60"],
    )
    .await;
    apply::<PotNetwork>(
        &env.api(),
        json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "PotNetwork",
            "metadata": {"name": "main", "annotations": {"pot.dev/api-url": "http://127.0.0.1:9"}},
            "spec": {"coordinators": 1, "storage": {"size": "1Gi"}}
        }),
    )
    .await;
    let miners: Api<Miner> = env.api();
    for name in ["a", "b"] {
        apply::<Miner>(&miners, fleet(name, 1)).await;
    }
    for sts in ["a-miner", "b-miner"] {
        replicas_where(&env, sts, "the fleets' StatefulSets", |r| r == 1).await;
    }

    // Changes the operator is busy with when the API server dies.
    scale(&miners, "a", 3).await;
    scale(&miners, "b", 2).await;
    let cp = env.cp;
    tokio::task::spawn_blocking(move || cp.restart_api_server(Duration::from_secs(3)))
        .await
        .unwrap()
        .expect("restarting kube-apiserver");
    assert!(
        op.process.exited().is_none(),
        "the operator exited when the API server went away:\n{}",
        op.log_text()
    );
    replicas_where(&env, "a-miner", "the first fleet at 3", |r| r == 3).await;
    replicas_where(&env, "b-miner", "the second fleet at 2", |r| r == 2).await;

    // After the restart: a spec change, new objects of two kinds, and a deleted child.
    scale(&miners, "a", 4).await;
    replicas_where(&env, "a-miner", "the first fleet at 4", |r| r == 4).await;
    apply::<Miner>(&miners, fleet("c", 2)).await;
    replicas_where(&env, "c-miner", "a fleet made after the restart", |r| {
        r == 2
    })
    .await;
    // A task naming a key its Secret does not allow to sign is refused (the TrainingTask
    // controller's watch and its status writes work again).
    let secrets: Api<Secret> = env.api();
    let key = keyfile::encode(&SecretKey::generate());
    let unmarked = Secret {
        metadata: ObjectMeta {
            name: Some("unmarked".into()),
            ..Default::default()
        },
        string_data: Some([("key".to_string(), key)].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &unmarked)
        .await
        .unwrap();
    let tasks: Api<TrainingTask> = env.api();
    let tt: TrainingTask =
        serde_json::from_value(digits_training_task("t", "main", "unmarked")).unwrap();
    tasks.create(&PostParams::default(), &tt).await.unwrap();
    eventually("the task refused for its unmarked key", WAIT, || {
        let tasks = tasks.clone();
        async move {
            let s = tasks.get("t").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.reason == "PublisherKeyInvalid")
                .then_some(())
        }
    })
    .await;
    let services: Api<Service> = env.api();
    let before = services.get("main-coordinators").await.unwrap();
    services
        .delete("main-coordinators", &DeleteParams::default())
        .await
        .unwrap();
    let began = std::time::Instant::now();
    loop {
        let s = services.get_opt("main-coordinators").await.ok().flatten();
        if s.is_some_and(|s| s.metadata.uid != before.metadata.uid) {
            break;
        }
        assert!(
            began.elapsed() < WAIT,
            "the network's Service was not made again; operator log:\n{}",
            tail(&op.log_text(), 60)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the status writer works again: the fleet reports what it asked for.
    eventually("the first fleet's status at 4", WAIT, || {
        let miners = miners.clone();
        async move {
            let m = miners.get("a").await.ok()?;
            (m.status?.desired_replicas == 4).then_some(())
        }
    })
    .await;
    assert!(op.process.exited().is_none(), "the operator kept running");

    // An outage longer than the Lease: an operator that cannot confirm it still leads (a
    // replica that may have been replaced) must not go on signing for the chain. It steps
    // down (exits, for its pod to be restarted) instead of leading blind.
    drop(op);
    let mut op = Operator::start(&env, "short", &["--lease-seconds", "6"]).await;
    eventually("the second operator to lead", WAIT, || {
        let op = &op;
        async move { (op.metric("pot_operator_leader").await == 1.0).then_some(()) }
    })
    .await;
    tokio::task::spawn_blocking(move || cp.restart_api_server(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("restarting kube-apiserver");
    let status = eventually("the operator to step down", WAIT, || {
        let exited = op.process.exited();
        async move { exited }
    })
    .await;
    assert!(
        !status.success(),
        "stepping down is an error exit: {status}"
    );
    assert!(
        op.log_text()
            .contains("stepping down: leadership unconfirmed"),
        "{}",
        tail(&op.log_text(), 30)
    );
}
