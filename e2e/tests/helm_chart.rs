//! The Helm chart `helm/pot`: `helm lint --strict` passes, what `helm template` renders (in each
//! shape its values allow) is accepted by the real API server, its RBAC and admission policy
//! are the reference ones the operator is tested with, bad values are refused by the schema,
//! and its version is the workspace's.

use std::path::PathBuf;

use pot_e2e::operator::repo;
use pot_e2e::shared;
use serde_json::Value;

fn chart() -> PathBuf {
    repo().join("helm/pot")
}

/// `helm template` of the chart with `--set` values and `extra` flags; an error is helm's
/// stderr alone (so a test of its message cannot match the command line instead).
fn render(sets: &[&str], extra: &[&str]) -> anyhow::Result<String> {
    let mut cmd = shared().command("helm");
    cmd.args(["template", "pot"])
        .arg(chart())
        .args(["--namespace", "pot-system"])
        .args(extra);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The rendered documents as JSON.
fn template(sets: &[&str]) -> anyhow::Result<Vec<Value>> {
    Ok(docs(&render(sets, &[])?))
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v = serde_json::to_value(serde_yaml::Value::deserialize(d).ok()?).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn lint_passes_strictly() {
    let out = shared()
        .command("helm")
        .args(["lint", "--strict", &chart().display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_shape_of_the_chart_is_accepted_by_the_api_server() {
    let cp = shared();
    for ns in ["pot-system", "team-a"] {
        let _ = cp.kubectl(&["create", "namespace", ns]);
    }
    for sets in [
        vec![],
        vec!["watchNamespace=team-a", "replicaCount=2"],
        vec![
            "admissionPolicy.enabled=false",
            "networkPolicy.enabled=false",
            "rbac.create=false",
        ],
    ] {
        let rendered = render(&sets, &["--include-crds"]).unwrap();
        let applied = cp
            .kubectl_input(&["apply", "--dry-run=server", "-f", "-"], &rendered)
            .unwrap_or_else(|e| panic!("with {sets:?}: {e}"));
        assert!(
            applied.contains("deployment.apps/pot created (server dry run)"),
            "{applied}"
        );
    }
}

#[test]
fn rbac_and_admission_policy_are_the_reference_ones() {
    let rendered = template(&[]).unwrap();
    let reference =
        docs(&std::fs::read_to_string(repo().join("operator/rbac/clusterrole.yaml")).unwrap());
    assert_eq!(
        find(&rendered, "ClusterRole")["rules"],
        find(&reference, "ClusterRole")["rules"],
        "helm/pot/templates/rbac.yaml and operator/rbac/clusterrole.yaml differ"
    );
    let reference =
        docs(&std::fs::read_to_string(repo().join("operator/admission/signer-keys.yaml")).unwrap());
    assert_eq!(
        find(&rendered, "ValidatingAdmissionPolicy")["spec"],
        find(&reference, "ValidatingAdmissionPolicy")["spec"],
        "helm/pot/templates/admission-policy.yaml and operator/admission/signer-keys.yaml differ"
    );
    let binding = find(&rendered, "ValidatingAdmissionPolicyBinding");
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    assert_eq!(
        binding["spec"]["policyName"],
        find(&rendered, "ValidatingAdmissionPolicy")["metadata"]["name"]
    );
}

#[test]
fn the_operator_pod_is_hardened() {
    let rendered = template(&[]).unwrap();
    let pod = &find(&rendered, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let watched = template(&["watchNamespace=team-a"]).unwrap();
    let env = &find(&watched, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POT_OPERATOR_NAMESPACE" && e["value"] == "team-a")
    );
    // Watching one namespace grants rights there, not cluster-wide.
    assert!(watched.iter().all(|d| d["kind"] != "ClusterRoleBinding"));
    assert!(
        watched
            .iter()
            .any(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "team-a")
    );
}

#[test]
fn bad_values_are_refused_by_the_schema() {
    for (set, words) in [
        ("logLevel=loud", "logLevel"),
        ("replicaCount=-1", "replicaCount"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("watchNamespace=Not_A_Namespace", "watchNamespace"),
        ("nosuchvalue=1", "nosuchvalue"),
        // The operator's rights never go to a namespace's default account by accident.
        ("serviceAccount.create=false", "serviceAccount.name"),
    ] {
        let err = template(&[set]).expect_err(set).to_string();
        assert!(err.contains(words), "{set}: {err}");
    }
}

#[test]
fn the_chart_works_as_a_dependency() {
    // Helm passes `global` to every chart of a release.
    template(&["global.imageRegistry=registry.example.com"]).unwrap();
}

#[test]
fn the_chart_version_is_the_workspaces() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"].as_str(), Some(version));
    assert_eq!(chart["appVersion"].as_str(), Some(version));
}
