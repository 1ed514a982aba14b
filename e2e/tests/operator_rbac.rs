//! The operator's ClusterRole (`operator/rbac/clusterrole.yaml`) is least privilege: every
//! rule it needs is granted, what it must never do is not, and the operator does its work as
//! a ServiceAccount bound to it.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use pot_e2e::operator::{Operator, digits_training_task, install_crds, rbac_deviations, repo};
use pot_e2e::{TestEnv, eventually};
use pot_operator::crd::network::PotNetwork;
use serde_json::json;

/// Bind the ClusterRole to ServiceAccount `pot-operator` of the test's namespace; returns the
/// user name to impersonate.
fn bind(env: &TestEnv) -> String {
    let role = repo().join("operator/rbac/clusterrole.yaml");
    env.cp
        .kubectl(&["apply", "-f", role.to_str().unwrap()])
        .expect("applying the ClusterRole");
    let ns = &env.namespace;
    env.cp
        .kubectl(&["create", "serviceaccount", "pot-operator", "-n", ns])
        .unwrap();
    env.cp
        .kubectl(&[
            "create",
            "clusterrolebinding",
            &format!("pot-operator-{ns}"),
            "--clusterrole=pot-operator",
            &format!("--serviceaccount={ns}:pot-operator"),
        ])
        .unwrap();
    format!("system:serviceaccount:{ns}:pot-operator")
}

#[tokio::test]
async fn the_cluster_role_grants_what_the_controllers_use_and_nothing_else() {
    let env = TestEnv::new("op-rbac").await;
    install_crds(&env).await;
    let user = bind(&env);
    let wrong = rbac_deviations(&env, &env.namespace, &user);
    assert!(wrong.is_empty(), "the ClusterRole is wrong: {wrong:?}");

    // Under that role alone, the operator leads and reconciles a network fully.
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&env.cp.kubeconfig).unwrap()).unwrap();
    for u in kubeconfig["users"].as_sequence_mut().unwrap() {
        u["user"]["as"] = serde_yaml::Value::from(user.clone());
    }
    let path = env
        .cp
        .dir
        .join(format!("{}-operator.kubeconfig", env.namespace));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let op = Operator::start_with(&env, "limited", &[], &path).await;
    let api: Api<PotNetwork> = env.api();
    let net: PotNetwork = serde_json::from_value(json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "PotNetwork",
        "metadata": {"name": "limited"},
        "spec": {"coordinators": 1, "genesis": {"faucet": {"balance": 1000}}},
    }))
    .unwrap();
    api.patch("limited", &PatchParams::apply("test"), &Patch::Apply(&net))
        .await
        .unwrap();
    eventually(
        "the network reconciled under the role",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let n = api.get("limited").await.ok()?;
                n.status?.genesis_hash.map(|_| ())
            }
        },
    )
    .await;
    let objects = env
        .cp
        .kubectl(&[
            "get",
            "statefulsets,services,poddisruptionbudgets",
            "-n",
            &env.namespace,
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(objects.lines().count(), 4, "{objects}");
    assert_eq!(
        op.metric("pot_operator_leader").await,
        1.0,
        "operator log:\n{}",
        op.log_text()
    );
    // A fleet too: keys, token, Service, StatefulSet, pods listed.
    let miners: Api<pot_operator::crd::miner::Miner> = env.api();
    let fleet: pot_operator::crd::miner::Miner = serde_json::from_value(json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
        "metadata": {"name": "cpu"},
        "spec": {"networkRef": {"name": "limited"}, "replicas": 1},
    }))
    .unwrap();
    miners
        .patch("cpu", &PatchParams::apply("test"), &Patch::Apply(&fleet))
        .await
        .unwrap();
    eventually(
        "the fleet reconciled under the role",
        Duration::from_secs(60),
        || {
            let miners = miners.clone();
            async move {
                let m = miners.get("cpu").await.ok()?;
                (m.status?.addresses.len() == 1).then_some(())
            }
        },
    )
    .await;
    for controller in ["potnetwork", "miner"] {
        let errors = op
            .metric(&format!(
                "pot_operator_reconcile_errors_total{{controller=\"{controller}\"}}"
            ))
            .await;
        assert_eq!(
            errors,
            0.0,
            "a {controller} reconcile failed under the role:\n{}",
            op.log_text()
        );
    }
}

/// `kubectl --as user apply -f -` with `doc`; its stderr when refused.
fn apply_as(env: &TestEnv, user: &str, doc: &serde_json::Value) -> Result<(), String> {
    env.cp
        .kubectl_input(
            &["apply", "-n", &env.namespace, "--as", user, "-f", "-"],
            &doc.to_string(),
        )
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_someone_who_may_read_a_key_secret_may_have_the_operator_sign_with_it() {
    let env = TestEnv::new("op-signer-keys").await;
    install_crds(&env).await;
    let policy = repo().join("operator/admission/signer-keys.yaml");
    env.cp
        .kubectl(&["apply", "-f", policy.to_str().unwrap()])
        .expect("applying the admission policy");
    let ns = env.namespace.clone();
    // Alice may create tasks and fleets here, but not read Secrets.
    env.cp
        .kubectl(&[
            "create",
            "role",
            "authors",
            "-n",
            &ns,
            "--verb=get,list,create,update,patch",
            "--resource=trainingtasks.pot.dev,miners.pot.dev",
        ])
        .unwrap();
    env.cp
        .kubectl(&[
            "create",
            "rolebinding",
            "alice-authors",
            "-n",
            &ns,
            "--role=authors",
            "--user=alice",
        ])
        .unwrap();
    let task = digits_training_task("spend", "main", "team-key");
    // The policy is enforced a moment after it is created. Each try names a new task: one
    // created before enforcement began would make a repeated `apply` send nothing at all.
    let mut attempt = 0;
    let refused = eventually("the task refused", Duration::from_secs(30), || {
        attempt += 1;
        let mut doc = task.clone();
        doc["metadata"]["name"] = json!(format!("spend-{attempt}"));
        let r = apply_as(&env, "alice", &doc).err();
        async move { r }
    })
    .await;
    assert!(
        refused.contains("you may not read Secret team-key"),
        "{refused}"
    );
    let fleet = json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
        "metadata": {"name": "fleet"},
        "spec": {"networkRef": {"name": "main"}, "replicas": 1,
                 "funding": {"fromSecret": {"name": "team-key"}}}
    });
    let refused = apply_as(&env, "alice", &fleet).unwrap_err();
    assert!(
        refused.contains("you may not read Secret team-key"),
        "{refused}"
    );
    // A fleet that names no key, and anything by someone who may read the key, goes through.
    let unfunded = json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
        "metadata": {"name": "fleet"},
        "spec": {"networkRef": {"name": "main"}, "replicas": 1}
    });
    apply_as(&env, "alice", &unfunded).expect("a fleet without funding");
    let refused = apply_as(&env, "alice", &fleet).unwrap_err();
    assert!(
        refused.contains("you may not read Secret team-key"),
        "adding funding later is checked too: {refused}"
    );
    env.cp
        .kubectl(&[
            "create",
            "role",
            "team-key-reader",
            "-n",
            &ns,
            "--verb=get",
            "--resource=secrets",
            "--resource-name=team-key",
        ])
        .unwrap();
    env.cp
        .kubectl(&[
            "create",
            "rolebinding",
            "alice-key",
            "-n",
            &ns,
            "--role=team-key-reader",
            "--user=alice",
        ])
        .unwrap();
    eventually(
        "the task accepted once Alice may read the key",
        Duration::from_secs(30),
        || {
            let ok = apply_as(&env, "alice", &task).is_ok();
            async move { ok.then_some(()) }
        },
    )
    .await;
    apply_as(&env, "alice", &fleet).expect("the funded fleet");
}
