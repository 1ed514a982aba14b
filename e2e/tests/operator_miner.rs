//! The `Miner` controller against the real API server (controller manager included): a
//! fleet's objects, `kubectl scale`, and replicas that follow a real chain's open-task queue —
//! up within 2 s, down only after the stabilisation window.
//!
//! No kubelet runs here, so the miner pods stay Pending: they hold no work, and a scale-down
//! needs no drain (the drain rule itself is table- and property-tested in `autoscale`, and the
//! drain endpoint in `pot-node`'s `roles::status`).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use pot_e2e::operator::{
    Operator, apply, coordinator_for, install_crds, replicas_where, statefulset_replicas,
    submit_digits_task, windows,
};
use pot_e2e::{TestEnv, eventually};
use pot_operator::crd::miner::Miner;
use pot_operator::crd::network::PotNetwork;
use pot_protocol::client::Client;
use pot_protocol::keyfile;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn network(name: &str, api_url: &str) -> serde_json::Value {
    json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "PotNetwork",
        "metadata": {"name": name, "annotations": {"pot.dev/api-url": api_url}},
        "spec": {
            "coordinators": 1,
            "storage": {"size": "1Gi"},
            "genesis": {"blockTimeMs": 300, "faucet": {"balance": 100000000}},
        }
    })
}

#[tokio::test]
async fn a_fleet_gets_its_objects_and_follows_kubectl_scale() {
    let env = TestEnv::new("op-miner").await;
    install_crds(&env).await;
    let op = Operator::start(&env, "only", &[]).await;
    apply::<PotNetwork>(&env.api(), network("main", "http://127.0.0.1:9")).await;
    // A real chain: a fleet shrinks only past pods whose keys the chain shows holding no
    // claim, so without one it keeps every pod.
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator_for(&env, "main", dir.path()).await;
    let nets: Api<PotNetwork> = env.api();
    let patch = json!({"metadata": {"annotations": {"pot.dev/api-url": url}}});
    nets.patch("main", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    apply::<Miner>(
        &env.api(),
        json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
            "metadata": {"name": "gpu"},
            "spec": {
                "networkRef": {"name": "main"},
                "replicas": 2,
                "gpusPerPod": 1,
                "storage": {"size": "1Gi"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        }),
    )
    .await;
    replicas_where(&env, "gpu-miner", "the fleet's StatefulSet", |r| r == 2).await;
    let sts: StatefulSet = env.api().get("gpu-miner").await.unwrap();
    let owner = &sts.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Miner", "gpu"));
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let limits = pod.containers[0].resources.clone().unwrap().limits.unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    let svc: Service = env.api().get("gpu-miner").await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let secrets: Api<Secret> = env.api();
    let keys = secrets.get("gpu-miner-keys").await.unwrap();
    assert!(
        keys.owner_references().is_empty(),
        "the keys hold funds: they outlive the fleet"
    );
    let key_of = |s: &Secret, pod: &str| {
        keyfile::decode(std::str::from_utf8(&s.data.as_ref().unwrap()[pod].0).unwrap()).unwrap()
    };
    let first = key_of(&keys, "gpu-miner-0").address();
    assert_eq!(keys.data.as_ref().unwrap().len(), 2);
    let token = secrets.get("gpu-miner-drain-token").await.unwrap();
    assert!(token.data.unwrap()["token"].0.len() >= 32);

    // The status names the pods' addresses; with nothing changing, nothing is written.
    let miners: Api<Miner> = env.api();
    let m = eventually("the fleet's status", WAIT, || {
        let miners = miners.clone();
        async move {
            let m = miners.get("gpu").await.ok()?;
            let s = m.status.as_ref()?;
            // Settled: the StatefulSet's pods counted too.
            (s.addresses.len() == 2 && s.replicas == 2).then_some(m)
        }
    })
    .await;
    let status = m.status.unwrap();
    assert_eq!(status.desired_replicas, 2);
    assert_eq!(status.addresses[0], first.to_hex());
    assert!(status.selector.unwrap().contains("pot.dev/miner=gpu"));
    // The network's status follows its chain (progress written once per resync): only the
    // fleet's writes count here.
    let fleet_writes = |counts: Vec<String>| -> Vec<String> {
        counts
            .into_iter()
            .filter(|l| {
                !l.contains("resource=\"potnetworks\"") && !l.contains("resource=\"events\"")
            })
            .collect()
    };
    // Something may still settle (a pod turning ready, the network's first queue reading), and
    // writing that is right; so look for two reconciles in a row with the status unchanged and
    // nothing written. An operator that writes on every reconcile never gets there.
    let reconciles = "pot_operator_reconciles_total{controller=\"miner\"}";
    eventually(
        "two reconciles that write nothing to an unchanged fleet",
        WAIT,
        || {
            let (op, miners, fleet_writes) = (&op, &miners, &fleet_writes);
            async move {
                let version = |m: Miner| m.metadata.resource_version;
                let status_before = version(miners.get("gpu").await.ok()?);
                let counts = fleet_writes(op.write_counts().await);
                let before = op.metric(reconciles).await;
                while op.metric(reconciles).await < before + 2.0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let after = fleet_writes(op.write_counts().await);
                let status_after = version(miners.get("gpu").await.ok()?);
                (after == counts && status_after == status_before).then_some(())
            }
        },
    )
    .await;

    // `kubectl scale` goes through the scale subresource; the new ordinal gets a new key and
    // the old keys stay, also after scaling down.
    env.cp
        .kubectl(&["scale", "mnr", "gpu", "--replicas=3", "-n", &env.namespace])
        .unwrap();
    replicas_where(&env, "gpu-miner", "scaled to 3", |r| r == 3).await;
    env.cp
        .kubectl(&["scale", "mnr", "gpu", "--replicas=1", "-n", &env.namespace])
        .unwrap();
    replicas_where(&env, "gpu-miner", "scaled to 1", |r| r == 1).await;
    let keys = secrets.get("gpu-miner-keys").await.unwrap();
    assert_eq!(keys.data.as_ref().unwrap().len(), 3);
    assert_eq!(
        key_of(&keys, "gpu-miner-0").address(),
        first,
        "a key was replaced"
    );

    // The keys outlive the fleet; a new Miner of the same name (anyone who may create Miners
    // could make one) does not get them until a person hands them over.
    let fleet_doc = miners.get("gpu").await.unwrap();
    miners.delete("gpu", &Default::default()).await.unwrap();
    let sts_api: Api<StatefulSet> = env.api();
    eventually("the fleet's StatefulSet collected", WAIT, || {
        let sts_api = sts_api.clone();
        async move {
            sts_api
                .get_opt("gpu-miner")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let mut again = fleet_doc.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("gpu".into()),
        ..Default::default()
    };
    again.status = None;
    let again = miners.create(&Default::default(), &again).await.unwrap();
    let refused = eventually("the old keys refused", WAIT, || {
        let miners = miners.clone();
        async move {
            let s = miners.get("gpu").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.reason == "KeysOfAnotherFleet")
        }
    })
    .await;
    assert!(
        refused.message.contains("pot.dev/miner-uid"),
        "{}",
        refused.message
    );
    // (A reconcile of the deleted fleet still in flight may have written its StatefulSet
    // again, owned by the old uid: what must not exist is one of the new fleet.)
    let new_uid = again.uid().unwrap();
    assert!(
        sts_api
            .get_opt("gpu-miner")
            .await
            .unwrap()
            .is_none_or(|s| s.owner_references().iter().all(|o| o.uid != new_uid)),
        "a fleet ran with keys made for another"
    );
    env.cp
        .kubectl(&[
            "annotate",
            "secret",
            "gpu-miner-keys",
            "-n",
            &env.namespace,
            "--overwrite",
            &format!("pot.dev/miner-uid={}", again.uid().unwrap()),
        ])
        .unwrap();
    replicas_where(
        &env,
        "gpu-miner",
        "the fleet back with its handed-over keys",
        |r| r >= 1,
    )
    .await;
    let keys = secrets.get("gpu-miner-keys").await.unwrap();
    assert_eq!(key_of(&keys, "gpu-miner-0").address(), first);
}

#[tokio::test]
async fn replicas_follow_the_queue_up_at_once_and_down_after_the_window() {
    let env = TestEnv::new("op-autoscale").await;
    install_crds(&env).await;
    let _op = Operator::start(&env, "only", &[]).await;
    apply::<PotNetwork>(&env.api(), network("chain", "http://127.0.0.1:9")).await;
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator_for(&env, "chain", dir.path()).await;
    let nets: Api<PotNetwork> = env.api();
    let patch = json!({"metadata": {"annotations": {"pot.dev/api-url": url}}});
    nets.patch("chain", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    const WINDOW: u64 = 4;
    apply::<Miner>(
        &env.api(),
        json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
            "metadata": {"name": "auto"},
            "spec": {
                "networkRef": {"name": "chain"},
                "storage": {"size": "1Gi"},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 5, "targetOpenTasksPerMiner": 1,
                                "scaleDownStabilizationSeconds": WINDOW},
            }
        }),
    )
    .await;
    replicas_where(&env, "auto-miner", "an idle fleet at its minimum", |r| {
        r == 0
    })
    .await;

    let faucet: Secret = env.api().get("chain-faucet").await.unwrap();
    let key =
        keyfile::decode(std::str::from_utf8(&faucet.data.unwrap()["key"].0).unwrap()).unwrap();
    let node = Client::new(url.clone());
    let nonce = node.account(&key.address()).await.unwrap().nonce;
    for i in 0..3 {
        // Open for claims for 30 blocks; then it leaves the part of the queue miners take.
        submit_digits_task(&node, &key, nonce + i, 1000, windows(30, 1))
            .await
            .unwrap();
    }
    // From the moment the chain's queue shows the tasks to the StatefulSet's replicas.
    let takeable = |q: pot_protocol::api::Queue| pot_operator::context::takeable(&q);
    let queued = eventually("three tasks open for claims", WAIT, || {
        let node = node.clone();
        async move { (takeable(node.queue().await.ok()?) == 3).then_some(Instant::now()) }
    })
    .await;
    replicas_where(&env, "auto-miner", "three miners", |r| r == 3).await;
    let up = queued.elapsed();
    assert!(
        up <= Duration::from_secs(2),
        "replicas followed the queue after {up:?}"
    );

    // Their commit windows close; the fleet waits for the stabilisation window, then for
    // its pods to have been seen idle for 5 s, before it shrinks.
    let emptied = eventually("no task open for claims", WAIT, || {
        let node = node.clone();
        async move { (takeable(node.queue().await.ok()?) == 0).then_some(Instant::now()) }
    })
    .await;
    assert_eq!(
        statefulset_replicas(&env, "auto-miner").await,
        Some(3),
        "scaled down at once"
    );
    replicas_where(&env, "auto-miner", "back to the minimum", |r| r == 0).await;
    let down = emptied.elapsed();
    assert!(
        down >= Duration::from_millis(WINDOW * 1000 - 1500),
        "scaled down {down:?} after the queue emptied, within the {WINDOW} s window"
    );
    assert!(
        down <= Duration::from_secs(WINDOW + 5 + 5),
        "scaled down only {down:?} after the queue emptied"
    );
}
