//! The operator's ClusterRole (`operator/rbac/clusterrole.yaml`) is least privilege: every
//! rule it needs is granted, what it must never do is not, and the operator does its work as
//! a ServiceAccount bound to it.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use pot_e2e::operator::{Operator, install_crds, repo};
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

fn can(env: &TestEnv, user: &str, verb: &str, resource: &str) -> bool {
    // `kubectl auth can-i` answers on stdout and exits 1 for "no"; a subresource is a flag.
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let out = env
        .cp
        .command("kubectl")
        .args([
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            &env.namespace,
            "--as",
            user,
        ])
        .args(sub)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn the_cluster_role_grants_what_the_controllers_use_and_nothing_else() {
    let env = TestEnv::new("op-rbac").await;
    install_crds(&env).await;
    let user = bind(&env);
    let needed = [
        ("watch", "potnetworks.pot.dev"),
        ("patch", "potnetworks.pot.dev/status"),
        ("watch", "miners.pot.dev"),
        ("patch", "miners.pot.dev/status"),
        ("watch", "trainingtasks.pot.dev"),
        ("patch", "trainingtasks.pot.dev"),
        ("patch", "trainingtasks.pot.dev/status"),
        ("list", "pods"),
        ("create", "statefulsets.apps"),
        ("patch", "statefulsets.apps"),
        ("watch", "services"),
        ("patch", "poddisruptionbudgets.policy"),
        ("create", "secrets"),
        ("update", "secrets"),
        ("create", "configmaps"),
        ("list", "persistentvolumeclaims"),
        ("create", "events.events.k8s.io"),
        ("patch", "leases.coordination.k8s.io"),
    ];
    let forbidden = [
        ("delete", "secrets"),
        ("delete", "statefulsets.apps"),
        ("patch", "potnetworks.pot.dev"),
        ("patch", "miners.pot.dev"),
        ("delete", "trainingtasks.pot.dev"),
        ("delete", "pods"),
        ("update", "configmaps"),
        ("create", "pods"),
        ("list", "nodes"),
        ("delete", "persistentvolumeclaims"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ];
    let mut wrong = Vec::new();
    for (verb, resource) in needed {
        if !can(&env, &user, verb, resource) {
            wrong.push(format!("cannot {verb} {resource}"));
        }
    }
    for (verb, resource) in forbidden {
        if can(&env, &user, verb, resource) {
            wrong.push(format!("may {verb} {resource}"));
        }
    }
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
