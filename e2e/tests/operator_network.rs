//! The `PotNetwork` controller against the real API server (controller manager included):
//! the objects it creates, its status from a real `pot-node --dev` coordinator, no write when
//! nothing changed, keys never made twice, garbage collection, and leader election.
//!
//! No kubelet runs here (issue "end to end on the embedded cluster" adds one), so the
//! coordinator pods stay Pending; the status is read from a `pot-node run --dev` the test starts,
//! named by the `pot.dev/api-url` annotation.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pot_e2e::coordinators::dev_node;
use pot_e2e::operator::{Operator, coordinator_for, events_about, install_crds};
use pot_e2e::{TestEnv, eventually};
use pot_operator::crd::network::{NetworkPhase, PotNetwork};
use pot_protocol::Genesis;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// A network of `coordinators`, its API at `api_url`.
fn network(name: &str, coordinators: i32, api_url: &str) -> serde_json::Value {
    json!({
        "apiVersion": "pot.dev/v1alpha1",
        "kind": "PotNetwork",
        "metadata": {"name": name, "annotations": {"pot.dev/api-url": api_url}},
        "spec": {
            "coordinators": coordinators,
            "storage": {"size": "1Gi"},
            "genesis": {"blockTimeMs": 500, "faucet": {"balance": 1000000}},
        }
    })
}

async fn create(env: &TestEnv, doc: serde_json::Value) -> PotNetwork {
    let api: Api<PotNetwork> = env.api();
    let net: PotNetwork = serde_json::from_value(doc).unwrap();
    api.patch(
        &net.name_any(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&net),
    )
    .await
    .unwrap()
}

async fn status_where<F>(env: &TestEnv, name: &str, what: &str, ok: F) -> PotNetwork
where
    F: Fn(&PotNetwork) -> bool,
{
    let api: Api<PotNetwork> = env.api();
    eventually(what, WAIT, || {
        let api = api.clone();
        let name = name.to_string();
        let ok = &ok;
        async move { api.get(&name).await.ok().filter(|n| ok(n)) }
    })
    .await
}

#[tokio::test]
async fn a_network_gets_its_objects_keys_and_genesis() {
    let env = TestEnv::new("op-network").await;
    install_crds(&env).await;
    let _op = Operator::start(&env, "only", &[]).await;
    let net = create(&env, network("main", 4, "http://127.0.0.1:9")).await;
    let status = status_where(&env, "main", "a status with the genesis", |n| {
        n.status.as_ref().is_some_and(|s| s.genesis_hash.is_some())
    })
    .await
    .status
    .unwrap();
    // No kubelet: no coordinator is ready, and the status says so.
    assert_eq!(status.ready.as_deref(), Some("0/4"));
    assert_eq!(status.coordinator_addresses.len(), 4);
    for t in ["Ready", "Progressing", "Degraded"] {
        let c = status.conditions.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(c.observed_generation, net.metadata.generation, "{t}");
    }

    // The genesis names the four keys in the keys Secret, one per pod.
    let cm: ConfigMap = env.api().get("main-genesis").await.unwrap();
    assert_eq!(cm.immutable, Some(true));
    let genesis = Genesis::from_yaml(&cm.data.unwrap()["genesis.yaml"]).unwrap();
    assert_eq!(genesis.params.block_time_ms, 500);
    assert_eq!(genesis.coordinators.len(), 4);
    assert_eq!(status.genesis_hash, Some(genesis.hash().to_string()));
    let keys: Secret = env.api().get("main-coordinator-keys").await.unwrap();
    let data = keys.data.unwrap();
    for (i, c) in genesis.coordinators.iter().enumerate() {
        let file = String::from_utf8(data[&format!("main-coordinator-{i}")].0.clone()).unwrap();
        let key = pot_protocol::keyfile::decode(&file).unwrap();
        assert_eq!(key.address(), c.address, "coordinator {i}");
        assert_eq!(status.coordinator_addresses[i], c.address.to_hex());
    }
    let faucet: Secret = env.api().get("main-faucet").await.unwrap();
    let faucet =
        pot_protocol::keyfile::decode(std::str::from_utf8(&faucet.data.unwrap()["key"].0).unwrap())
            .unwrap();
    assert!(
        genesis
            .balances
            .iter()
            .any(|b| b.address == faucet.address())
    );

    // The StatefulSet, Services and PDB, owned by the network.
    let sts: StatefulSet = env.api().get("main-coordinator").await.unwrap();
    let spec = sts.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(4));
    assert_eq!(spec.service_name.as_deref(), Some("main-coordinators"));
    let owner = &sts.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("PotNetwork", "main")
    );
    assert_eq!(owner.uid, net.uid().unwrap());
    assert_eq!(sts.labels()["app.kubernetes.io/managed-by"], "pot-operator");
    let headless: Service = env.api().get("main-coordinators").await.unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let _: Service = env.api().get("main-api").await.unwrap();
    let pdb: PodDisruptionBudget = env.api().get("main-coordinators").await.unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    // The controller manager made the pods (Pending without a kubelet) from the template.
    eventually("the coordinator pods", WAIT, || {
        let out = env
            .cp
            .kubectl(&["get", "pods", "-n", &env.namespace, "-o", "name"]);
        async move { out.ok().filter(|o| o.lines().count() == 4) }
    })
    .await;
}

#[tokio::test]
async fn a_network_status_follows_the_chain_its_genesis_started() {
    let env = TestEnv::new("op-chain").await;
    install_crds(&env).await;
    let _op = Operator::start(&env, "only", &[]).await;
    let api: Api<PotNetwork> = env.api();
    create(&env, network("one", 1, "http://127.0.0.1:9")).await;

    // The real coordinator, from the genesis and key the operator made.
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, url) = coordinator_for(&env, "one", dir.path()).await;
    let genesis = dir.path().join("genesis.yaml");
    annotate(&api, "one", &url).await;
    let net = status_where(&env, "one", "a status with the chain's height", |n| {
        n.status
            .as_ref()
            .is_some_and(|s| s.height.is_some_and(|h| h > 0))
    })
    .await;
    let status = net.status.unwrap();
    let expected = Genesis::from_yaml(&std::fs::read_to_string(&genesis).unwrap()).unwrap();
    assert_eq!(status.chain_id, Some(expected.chain_id.clone()));
    assert_eq!(status.open_tasks, Some(0));
    assert!(status.last_block_time.is_some());
    // The pod itself is not ready (no kubelet), so the network is not Running.
    assert_eq!(status.phase, NetworkPhase::Degraded);

    // An API serving another chain is not believed.
    let data = tempfile::tempdir().unwrap();
    let (_stranger, other) =
        dev_node(&pot_e2e::pot_node_binary(), &data.path().join("dev"), &[]).await;
    create(&env, network("two", 1, &other)).await;
    let net = status_where(&env, "two", "the other chain refused", |n| {
        n.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.message.contains("not this network's"))
        })
    })
    .await;
    assert_eq!(net.status.unwrap().height, None);
}

/// Whether the network's `Degraded` condition holds for `reason`.
fn degraded_because(n: &PotNetwork, reason: &str) -> bool {
    n.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason)
    })
}

/// `obj` as a backup restores it: without what the API server assigned.
fn as_backup<K: kube::Resource + Clone>(obj: &K) -> K {
    let mut copy = obj.clone();
    let meta = copy.meta_mut();
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.managed_fields = None;
    copy
}

async fn annotate(api: &Api<PotNetwork>, name: &str, url: &str) {
    let patch = json!({"metadata": {"annotations": {"pot.dev/api-url": url}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unchanged_network_is_reconciled_without_a_single_write() {
    let env = TestEnv::new("op-no-writes").await;
    install_crds(&env).await;
    let op = Operator::start(&env, "only", &[]).await;
    // An API nobody answers: the status settles and stays.
    create(&env, network("quiet", 1, "http://127.0.0.1:9")).await;
    status_where(&env, "quiet", "the first status", |n| n.status.is_some()).await;
    // Let what the first passes did settle (two more reconciles), then count.
    let reconciles = "pot_operator_reconciles_total{controller=\"potnetwork\"}";
    let start = op.metric(reconciles).await;
    eventually("two more reconciles", WAIT, || async {
        (op.metric(reconciles).await >= start + 2.0).then_some(())
    })
    .await;
    let writes = op.writes().await;
    let counted = op.metric(reconciles).await;
    eventually("three more reconciles", WAIT, || async {
        (op.metric(reconciles).await >= counted + 3.0).then_some(())
    })
    .await;
    assert_eq!(
        op.writes().await,
        writes,
        "an unchanged network was written to; operator log:\n{}",
        op.log_text()
    );
}

#[tokio::test]
async fn a_lost_key_is_reported_and_never_made_again() {
    let env = TestEnv::new("op-keys").await;
    install_crds(&env).await;
    let _op = Operator::start(&env, "only", &[]).await;
    create(&env, network("keys", 1, "http://127.0.0.1:9")).await;
    status_where(&env, "keys", "the genesis hash in the status", |n| {
        n.status.as_ref().is_some_and(|s| s.genesis_hash.is_some())
    })
    .await;
    let secrets: Api<Secret> = env.api();
    let before = secrets.get("keys-coordinator-keys").await.unwrap();
    secrets
        .delete("keys-coordinator-keys", &DeleteParams::default())
        .await
        .unwrap();
    let net = status_where(&env, "keys", "the KeysLost condition", |n| {
        degraded_because(n, "KeysLost")
    })
    .await;
    assert_eq!(net.status.unwrap().phase, NetworkPhase::Degraded);
    // A failed reconcile is an Event too, for `kubectl describe` and `kubectl events`.
    let warned = eventually("a KeysLost Warning Event", WAIT, || {
        let env = &env;
        async move {
            events_about(env, "PotNetwork", "keys")
                .await
                .into_iter()
                .find(|(t, r, _)| t == "Warning" && r == "KeysLost")
        }
    })
    .await;
    assert!(
        warned.2.contains("restore Secret keys-coordinator-keys"),
        "{warned:?}"
    );
    assert!(
        secrets
            .get_opt("keys-coordinator-keys")
            .await
            .unwrap()
            .is_none(),
        "a deleted coordinator key must not be generated again"
    );
    // Restored from "backup", the network recovers with the same key.
    let restored = as_backup(&before);
    secrets
        .create(&Default::default(), &restored)
        .await
        .unwrap();
    status_where(&env, "keys", "the KeysLost condition to clear", |n| {
        n.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.reason != "KeysLost")
        })
    })
    .await;

    // A lost genesis is not written again either: a new one would be another chain.
    let configmaps: Api<ConfigMap> = env.api();
    let genesis = configmaps.get("keys-genesis").await.unwrap();
    configmaps
        .delete("keys-genesis", &DeleteParams::default())
        .await
        .unwrap();
    status_where(&env, "keys", "the GenesisLost condition", |n| {
        degraded_because(n, "GenesisLost")
    })
    .await;
    assert!(configmaps.get_opt("keys-genesis").await.unwrap().is_none());
    let restored = as_backup(&genesis);

    // The wrong backup: the same coordinators, another genesis (an hour earlier).
    let mut other = restored.clone();
    let mut g = Genesis::from_yaml(&other.data.as_ref().unwrap()["genesis.yaml"]).unwrap();
    g.genesis_time_ms -= 3_600_000;
    other
        .data
        .as_mut()
        .unwrap()
        .insert("genesis.yaml".into(), g.to_yaml());
    configmaps
        .create(&Default::default(), &other)
        .await
        .unwrap();
    status_where(&env, "keys", "the GenesisMismatch condition", |n| {
        degraded_because(n, "GenesisMismatch")
    })
    .await;
    configmaps
        .delete("keys-genesis", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the wrong genesis to go", WAIT, || {
        let configmaps = configmaps.clone();
        async move {
            configmaps
                .get_opt("keys-genesis")
                .await
                .ok()
                .filter(|c| c.is_none())
        }
    })
    .await;
    configmaps
        .create(&Default::default(), &restored)
        .await
        .unwrap();
    status_where(&env, "keys", "the GenesisLost condition to clear", |n| {
        n.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.reason != "GenesisLost")
        })
    })
    .await;
}

#[tokio::test]
async fn deleting_a_network_collects_everything_it_owns() {
    let env = TestEnv::new("op-gc").await;
    install_crds(&env).await;
    let _op = Operator::start(&env, "only", &[]).await;
    create(&env, network("gone", 1, "http://127.0.0.1:9")).await;
    let sts: Api<StatefulSet> = env.api();
    eventually("the StatefulSet", WAIT, || {
        let sts = sts.clone();
        async move { sts.get_opt("gone-coordinator").await.ok().flatten() }
    })
    .await;
    let nets: Api<PotNetwork> = env.api();
    nets.delete("gone", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("the network's workloads to be collected", WAIT, || {
        let out = env.cp.kubectl(&[
            "get",
            "statefulsets,services,poddisruptionbudgets",
            "-n",
            &env.namespace,
            "-l",
            "pot.dev/network=gone",
            "-o",
            "name",
        ]);
        async move { out.ok().filter(|o| o.trim().is_empty()) }
    })
    .await;
    // The chain's identity stays with its volumes: a network of the same name takes it up.
    let kept = env
        .cp
        .kubectl(&[
            "get",
            "configmaps,secrets",
            "-n",
            &env.namespace,
            "-l",
            "pot.dev/network=gone",
            "-o",
            "name",
        ])
        .unwrap();
    for name in [
        "configmap/gone-genesis",
        "secret/gone-coordinator-keys",
        "secret/gone-faucet",
    ] {
        assert!(
            kept.contains(name),
            "{name} was deleted with the network:\n{kept}"
        );
    }
    let before: ConfigMap = env.api().get("gone-genesis").await.unwrap();
    create(&env, network("gone", 1, "http://127.0.0.1:9")).await;
    let net = status_where(&env, "gone", "the re-created network's status", |n| {
        n.status.as_ref().is_some_and(|s| s.genesis_hash.is_some())
    })
    .await;
    let genesis = Genesis::from_yaml(&before.data.unwrap()["genesis.yaml"]).unwrap();
    assert_eq!(
        net.status.unwrap().genesis_hash,
        Some(genesis.hash().to_string())
    );
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies() {
    let env = TestEnv::new("op-leader").await;
    install_crds(&env).await;
    let lease = ["--lease-seconds", "4"];
    let mut first = Operator::start(&env, "first", &lease).await;
    eventually("the first operator to lead", WAIT, || async {
        (first.metric("pot_operator_leader").await == 1.0).then_some(())
    })
    .await;
    let second = Operator::start(&env, "second", &lease).await;
    create(&env, network("led", 1, "http://127.0.0.1:9")).await;
    status_where(&env, "led", "a status", |n| n.status.is_some()).await;
    let reconciles = "pot_operator_reconciles_total{controller=\"potnetwork\"}";
    assert!(first.metric(reconciles).await >= 1.0);
    assert_eq!(second.metric("pot_operator_leader").await, 0.0);
    assert_eq!(second.metric(reconciles).await, 0.0, "a standby reconciled");

    // SIGKILL: no release, so the standby waits out the lease.
    pot_e2e::spawn::signal(first.process.pid(), libc::SIGKILL);
    let killed = std::time::Instant::now();
    eventually("the standby to lead", Duration::from_secs(30), || async {
        (second.metric("pot_operator_leader").await == 1.0).then_some(())
    })
    .await;
    let took = killed.elapsed();
    // The lease (4 s) plus the standby's retry period and a loaded machine's slack.
    assert!(
        took <= Duration::from_secs(4 + 10),
        "takeover took {took:?}"
    );
    let holder = env
        .cp
        .kubectl(&[
            "get",
            "lease",
            "pot-operator",
            "-n",
            &env.namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap();
    assert_eq!(holder.trim(), "second");
    create(&env, network("after", 1, "http://127.0.0.1:9")).await;
    status_where(&env, "after", "the new leader's status", |n| {
        n.status.is_some()
    })
    .await;
    let _ = first.process.exited();
}
