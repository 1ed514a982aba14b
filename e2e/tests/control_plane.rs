//! The embedded control plane is a real Kubernetes: readiness, CRD validation with CEL by the
//! API server itself, controllers and the scheduler acting on workloads, garbage collection,
//! and helm output accepted by server-side dry run.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use pot_e2e::{TestEnv, control_plane::READY_TIMEOUT, eventually, shared};
use serde_json::json;

#[tokio::test]
async fn starts_within_a_minute_and_reports_ready() {
    let cp = shared();
    // The promise is under a minute with the binaries cached; start-up itself only gives up
    // after READY_TIMEOUT, so this bound is checked here and can fail on its own.
    assert!(READY_TIMEOUT > Duration::from_secs(60));
    assert!(
        cp.startup < Duration::from_secs(60),
        "start-up took {:?}",
        cp.startup
    );
    println!("control plane started in {:?}", cp.startup);
    assert_eq!(
        cp.kubectl(&["get", "--raw", "/readyz"]).unwrap().trim(),
        "ok"
    );
    let version = cp.kubectl(&["version", "-o", "json"]).unwrap();
    assert!(version.contains("\"gitVersion\": \"v1.36"), "{version}");
}

#[tokio::test]
async fn crd_validation_and_cel_rules_are_enforced_by_the_api_server() {
    let env = TestEnv::new("crd-cel").await;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "ranges.test.pot.dev"},
        "spec": {
            "group": "test.pot.dev",
            "scope": "Namespaced",
            "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["min", "max"],
                        "properties": {
                            "min": {"type": "integer", "minimum": 0},
                            "max": {"type": "integer"}
                        },
                        "x-kubernetes-validations": [
                            {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                        ]
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(env.client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    eventually("the CRD to be established", Duration::from_secs(30), || {
        let crds = crds.clone();
        async move {
            let c = crds.get("ranges.test.pot.dev").await.ok()?;
            let established = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;

    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("test.pot.dev", "v1", "Range"));
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.namespace, &ar);
    let obj = |name: &str, min: i64, max: i64| {
        serde_json::from_value::<DynamicObject>(json!({
            "apiVersion": "test.pot.dev/v1", "kind": "Range",
            "metadata": {"name": name},
            "spec": {"min": min, "max": max}
        }))
        .unwrap()
    };
    // The CRD may take a moment to be served after Established.
    eventually(
        "a valid object to be accepted",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            let o = obj("good", 1, 5);
            async move {
                api.create(&PostParams::default(), &o)
                    .await
                    .ok()
                    .map(|_| ())
            }
        },
    )
    .await;

    let err = api
        .create(&PostParams::default(), &obj("bad", 9, 5))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("min must not exceed max"),
        "{}",
        status.message
    );

    let err = api
        .create(&PostParams::default(), &obj("negative", -1, 5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("should be greater than or equal to 0"),
        "{err}"
    );
    assert!(api.get_opt("bad").await.unwrap().is_none());
}

#[tokio::test]
async fn statefulset_pods_are_created_bound_and_garbage_collected() {
    let env = TestEnv::new("sts-gc").await;
    let node_name = format!("node-{}", env.namespace);
    let nodes = Api::<Node>::all(env.client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name, "labels": {"pot.dev/test": env.namespace}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    // A kubelet would report this; here the test does.
    let status = json!({"status": {
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "2"},
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110", "nvidia.com/gpu": "2"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}]
    }});
    nodes
        .patch_status(
            &node_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .unwrap();

    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "miners"},
        "spec": {
            "replicas": 2,
            "serviceName": "miners",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "miners"}},
            "template": {
                "metadata": {"labels": {"app": "miners"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node_name},
                    "containers": [{
                        "name": "node", "image": "pot-node:dev",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}
                    }]
                }
            }
        }
    }))
    .unwrap();
    // The hostname label a kubelet would set; and the API server taints every new node
    // not-ready until the node lifecycle controller sees it Ready, which is not running here.
    nodes
        .patch(
            &node_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({
                "metadata": {"labels": {"kubernetes.io/hostname": node_name}},
                "spec": {"taints": null}
            })),
        )
        .await
        .unwrap();
    let sts_api: Api<StatefulSet> = env.api();
    sts_api.create(&PostParams::default(), &sts).await.unwrap();

    let pods: Api<Pod> = env.api();
    let lp = ListParams::default().labels("app=miners");
    let bound = eventually("2 pods bound to the node", Duration::from_secs(60), || {
        let pods = pods.clone();
        let lp = lp.clone();
        let node_name = node_name.clone();
        async move {
            let list = pods.list(&lp).await.ok()?;
            let bound: Vec<String> = list
                .items
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
                })
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            (bound.len() == 2).then_some(bound)
        }
    })
    .await;
    let mut names = bound.clone();
    names.sort();
    assert_eq!(names, vec!["miners-0", "miners-1"]);
    for p in pods.list(&lp).await.unwrap().items {
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("StatefulSet", "miners")
        );
    }

    // Deleting the owner: the garbage collector deletes the pods (they turn Terminating; with
    // no kubelet to confirm, the test plays kubelet and removes them once marked).
    sts_api
        .delete("miners", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "the pods to be deleted by the garbage collector",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            let lp = lp.clone();
            async move {
                let list = pods.list(&lp).await.ok()?;
                let mut pending = false;
                for p in &list.items {
                    if p.metadata.deletion_timestamp.is_some() {
                        let name = p.metadata.name.clone().unwrap();
                        let _ = pods
                            .delete(
                                &name,
                                &DeleteParams {
                                    grace_period_seconds: Some(0),
                                    ..Default::default()
                                },
                            )
                            .await;
                    }
                    pending = true;
                }
                (!pending).then_some(())
            }
        },
    )
    .await;
    nodes
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn helm_template_output_passes_server_side_dry_run() {
    let env = TestEnv::new("helm").await;
    let chart = tempfile::tempdir().unwrap();
    let root = chart.path().join("throwaway");
    std::fs::create_dir_all(root.join("templates")).unwrap();
    std::fs::write(
        root.join("Chart.yaml"),
        "apiVersion: v2\nname: throwaway\nversion: 0.1.0\nkubeVersion: \">=1.30.0-0\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("values.yaml"),
        "replicas: 2\nimage: pot-node:dev\n",
    )
    .unwrap();
    std::fs::write(
        root.join("templates/deployment.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-web
  labels: {app: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      containers:
        - name: web
          image: {{ .Values.image }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  greeting: hello
"#,
    )
    .unwrap();

    let cp = env.cp;
    let rendered = cp
        .command("helm")
        .args([
            "template",
            "demo",
            root.to_str().unwrap(),
            "--namespace",
            &env.namespace,
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );

    let apply = |extra: &[&str], input: &[u8]| {
        let mut child = cp
            .command("kubectl")
            .args(["apply", "-n", &env.namespace, "-f", "-"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = apply(&["--dry-run=server"], &rendered.stdout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deployment.apps/demo-web created (server dry run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("configmap/demo-config created (server dry run)"),
        "{stdout}"
    );
    // A dry run creates nothing.
    assert!(
        cp.kubectl(&["get", "deployment", "demo-web", "-n", &env.namespace])
            .is_err()
    );

    // And the server, not the client, rejects what is wrong.
    let broken = String::from_utf8_lossy(&rendered.stdout).replace("replicas: 2", "replicas: two");
    let out = apply(&["--dry-run=server"], broken.as_bytes());
    assert!(!out.status.success());
}
