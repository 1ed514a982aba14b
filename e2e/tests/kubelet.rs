//! The local kubelet against the real control plane: a StatefulSet scheduled by the real
//! scheduler runs as processes that see their volumes, Secrets, ConfigMaps and downward-API
//! values at the paths a container would, run as the user their security context names, find
//! each other by DNS name, keep their data and address across restarts, are restarted by their
//! policy, stopped by SIGTERM then SIGKILL on deletion, and show their output with
//! `kubectl logs`. GPU capacity is enforced by the scheduler from what the Node reports.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams};
use pot_e2e::kubelet::Running;
use pot_e2e::kubelet::launch::{Image, Images};
use pot_e2e::{TestEnv, eventually, shared};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// One kubelet for the whole binary: Node `local`, one GPU.
fn kubelet() -> &'static Running {
    static KUBELET: OnceLock<Running> = OnceLock::new();
    KUBELET.get_or_init(|| {
        let mut images = Images::default();
        for (name, program) in [("python", "/usr/bin/python3"), ("shell", "/bin/sh")] {
            images.insert(
                name,
                Image {
                    entrypoint: vec![program.into()],
                    ..Image::default()
                },
            );
        }
        shared()
            .start_kubelet("local", 1, images)
            .expect("starting the local kubelet")
    })
}

const SERVER: &str = r#"
import http.server, json, os, signal, socket, sys
ip, name, ns = os.environ["POD_IP"], os.environ["POD_NAME"], os.environ["POD_NAMESPACE"]
with open("/data/starts", "a") as f:
    f.write(name + "\n")
def term(*_):
    with open("/data/terminated", "w") as f:
        f.write("SIGTERM\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
def resolve(host):
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/crash":
            os._exit(3)
        body = json.dumps({
            "name": name, "uid": os.getuid(), "token_env": os.environ.get("TOKEN"),
            "greeting": open("/etc/conf/greeting").read(), "token": open("/etc/sec/token").read(),
            "peer": resolve("web-1.web.%s.svc.cluster.local" % ns), "service": resolve("web-api"),
            "starts": open("/data/starts").read().split(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving on %s:8000" % ip, flush=True)
http.server.HTTPServer((ip, 8000), Handler).serve_forever()
"#;

fn manifests(ns: &str) -> String {
    let server = serde_json::to_string(SERVER).unwrap();
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: conf, namespace: {ns}}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sec, namespace: {ns}}}
stringData: {{token: s3cret}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: web}}
  ports: [{{name: http, port: 8000}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-api, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 8000, targetPort: 8000}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  serviceName: web
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 10
      automountServiceAccountToken: false
      securityContext: {{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001}}
      containers:
      - name: server
        image: registry.example/python:3.11
        args: ["-c", {server}]
        env:
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        - {{name: TOKEN, valueFrom: {{secretKeyRef: {{name: sec, key: token}}}}}}
        ports: [{{name: http, containerPort: 8000}}]
        startupProbe:
          exec: {{command: ["/bin/sh", "-c", "test -s /data/starts"]}}
          periodSeconds: 1
          failureThreshold: 30
        readinessProbe:
          httpGet: {{path: /ready, port: http}}
          periodSeconds: 1
        livenessProbe:
          tcpSocket: {{port: 8000}}
          periodSeconds: 5
        volumeMounts:
        - {{name: data, mountPath: /data}}
        - {{name: conf, mountPath: /etc/conf, readOnly: true}}
        - {{name: sec, mountPath: /etc/sec, readOnly: true}}
      volumes:
      - {{name: conf, configMap: {{name: conf}}}}
      - {{name: sec, secret: {{secretName: sec, defaultMode: 256}}}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 10Mi}}}}
"#
    )
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

async fn ready_pod(pods: &Api<Pod>, name: &str, what: &str, extra: impl Fn(&Pod) -> bool) -> Pod {
    eventually(what, WAIT, || async {
        let p = pods.get(name).await.ok()?;
        (pod_ready(&p) && extra(&p)).then_some(p)
    })
    .await
}

async fn info(ip: &str) -> Option<Value> {
    let r = reqwest::get(format!("http://{ip}:8000/info")).await.ok()?;
    r.json().await.ok()
}

/// The directory behind a pod's claim, as the provisioner made it.
async fn claim_dir(env: &TestEnv, claim: &str) -> PathBuf {
    let pvc = env.api::<PersistentVolumeClaim>().get(claim).await.unwrap();
    let volume = pvc.spec.unwrap().volume_name.unwrap();
    let pv = Api::<PersistentVolume>::all(env.client.clone())
        .get(&volume)
        .await
        .unwrap();
    assert_eq!(
        pv.metadata.annotations.unwrap()["pv.kubernetes.io/provisioned-by"],
        "pot.dev/local-path"
    );
    PathBuf::from(pv.spec.unwrap().host_path.unwrap().path)
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_statefulset_runs_as_processes_that_find_each_other() {
    kubelet();
    let env = TestEnv::new("kubelet_sts").await;
    let ns = env.namespace.clone();
    env.cp
        .kubectl_input(&["apply", "-f", "-"], &manifests(&ns))
        .unwrap();
    let pods: Api<Pod> = env.api();
    let web0 = ready_pod(&pods, "web-0", "web-0 ready", |_| true).await;
    let web1 = ready_pod(&pods, "web-1", "web-1 ready", |_| true).await;
    let (ip0, ip1) = (pod_ip(&web0).unwrap(), pod_ip(&web1).unwrap());
    assert_ne!(ip0, ip1);
    assert!(ip0.starts_with("127."), "{ip0}");

    // What the process sees: downward API, Secret and ConfigMap values and files, its user,
    // its peer by the StatefulSet's DNS name, the Service by its short name.
    let seen = eventually("web-0 answering", WAIT, || info(&ip0)).await;
    assert_eq!(seen["name"], "web-0");
    assert_eq!(seen["uid"], 10001);
    assert_eq!(seen["greeting"], "hello");
    assert_eq!(seen["token"], "s3cret");
    assert_eq!(seen["token_env"], "s3cret");
    assert_eq!(seen["peer"], ip1.as_str());
    let service = seen["service"].as_str().unwrap_or_default().to_string();
    assert!(
        service == ip0 || service == ip1,
        "web-api resolved to {service}"
    );

    // The claim was provisioned as a local directory, owned by the pod's user.
    let dir0 = claim_dir(&env, "data-web-0").await;
    assert_eq!(
        std::fs::read_to_string(dir0.join("starts")).unwrap(),
        "web-0\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&dir0).unwrap().uid(), 10001);

    // `kubectl logs` reaches the kubelet through the API server.
    let logs = env.cp.kubectl(&["logs", "web-0", "-n", &ns]).unwrap();
    assert!(logs.contains(&format!("serving on {ip0}:8000")), "{logs}");

    // A crash restarts the container (Always): same pod, same address, data kept, the
    // previous run's log still readable.
    let _ = reqwest::get(format!("http://{ip0}:8000/crash")).await;
    let again = ready_pod(&pods, "web-0", "web-0 restarted and ready", |p| {
        restarts(p) == 1
    })
    .await;
    assert_eq!(pod_ip(&again).unwrap(), ip0);
    let last = again.status.unwrap().container_statuses.unwrap()[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 3);
    let seen = eventually("web-0 answering again", WAIT, || info(&ip0)).await;
    assert_eq!(seen["starts"], serde_json::json!(["web-0", "web-0"]));
    let previous = env
        .cp
        .kubectl(&["logs", "web-0", "-n", &ns, "--previous"])
        .unwrap();
    assert!(previous.contains("serving on"), "{previous}");

    // Deleting a pod sends SIGTERM; the StatefulSet's new pod has the old name's address.
    let dir1 = claim_dir(&env, "data-web-1").await;
    let old_uid = web1.metadata.uid.clone();
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    let back = ready_pod(&pods, "web-1", "a new web-1 ready", |p| {
        p.metadata.uid != old_uid
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(dir1.join("terminated")).unwrap(),
        "SIGTERM\n"
    );
    assert_eq!(pod_ip(&back).unwrap(), ip1);
}

/// `(pid, command line)` of every process whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .filter(|pid| pot_e2e::spawn::alive(*pid))
        .collect()
}

#[tokio::test]
async fn deletion_waits_out_the_grace_period_then_kills() {
    kubelet();
    let env = TestEnv::new("kubelet_grace").await;
    let ns = env.namespace.clone();
    let marker = format!("ignores-sigterm-{ns}");
    // A shell that ignores SIGTERM (and so do its children).
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: stubborn, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 4
  automountServiceAccountToken: false
  containers:
  - name: sh
    image: shell
    args: ["-c", "trap '' TERM; echo {marker}; while true; do sleep 1; done"]
"#
    );
    env.cp.kubectl_input(&["apply", "-f", "-"], &pod).unwrap();
    let pods: Api<Pod> = env.api();
    ready_pod(&pods, "stubborn", "the shell running", |_| true).await;
    assert!(!processes_with(&marker).is_empty());
    let began = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        pods.get_opt("stubborn").await.unwrap().is_some(),
        "the pod went before its grace period"
    );
    eventually("the pod gone", WAIT, || async {
        pods.get_opt("stubborn")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        began.elapsed() >= Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
    assert!(
        processes_with(&marker).is_empty(),
        "a process outlived its pod"
    );
}

#[tokio::test]
async fn gpus_are_scheduled_within_the_nodes_capacity() {
    kubelet();
    let env = TestEnv::new("kubelet_gpu").await;
    let ns = env.namespace.clone();
    let pod = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: sh
    image: shell
    args: ["-c", "exec sleep 1000"]
    resources: {{limits: {{nvidia.com/gpu: 1}}}}
"#
        )
    };
    let pods: Api<Pod> = env.api();
    env.cp
        .kubectl_input(&["apply", "-f", "-"], &pod("first"))
        .unwrap();
    ready_pod(&pods, "first", "the first GPU pod running", |_| true).await;
    env.cp
        .kubectl_input(&["apply", "-f", "-"], &pod("second"))
        .unwrap();
    let reason = eventually("the second GPU pod unschedulable", WAIT, || async {
        let p = pods.get("second").await.ok()?;
        let conds = p.status?.conditions?;
        let c = conds.into_iter().find(|c| c.type_ == "PodScheduled")?;
        (c.status == "False").then(|| c.message.unwrap_or_default())
    })
    .await;
    assert!(reason.contains("nvidia.com/gpu"), "{reason}");
    pods.delete("first", &DeleteParams::default())
        .await
        .unwrap();
    ready_pod(
        &pods,
        "second",
        "the second GPU pod running once the GPU is free",
        |_| true,
    )
    .await;
    let node = env
        .cp
        .kubectl(&["get", "node", "local", "-o", "json"])
        .unwrap();
    let node: Value = serde_json::from_str(&node).unwrap();
    assert_eq!(node["status"]["capacity"]["nvidia.com/gpu"], "1");
    assert_eq!(node["metadata"]["labels"]["pot.dev/local-kubelet"], "true");
}

#[tokio::test]
async fn the_kubelet_refuses_what_kubernetes_refuses() {
    kubelet();
    let env = TestEnv::new("kubelet_refuses").await;
    let ns = env.namespace.clone();
    let pods = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: sec, namespace: {ns}}}
stringData: {{token: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: writer, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: sh
    image: shell
    args: ["-c", "if echo x > /etc/sec/token; then echo WROTE; else echo READ-ONLY; fi; exec sleep 1000"]
    volumeMounts: [{{name: sec, mountPath: /etc/sec}}]
  volumes: [{{name: sec, secret: {{secretName: sec}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: rootless, namespace: {ns}}}
spec:
  automountServiceAccountToken: false
  securityContext: {{runAsNonRoot: true}}
  containers:
  - name: sh
    image: shell
    args: ["-c", "exec sleep 1000"]
"#
    );
    env.cp.kubectl_input(&["apply", "-f", "-"], &pods).unwrap();
    let api: Api<Pod> = env.api();
    // A Secret volume is read-only even when the mount does not say so.
    ready_pod(&api, "writer", "the writer running", |_| true).await;
    let logs = eventually("the writer's verdict", WAIT, || async {
        let logs = env.cp.kubectl(&["logs", "writer", "-n", &ns]).ok()?;
        (!logs.is_empty()).then_some(logs)
    })
    .await;
    assert!(logs.contains("READ-ONLY"), "{logs}");
    // runAsNonRoot with no user to run as is refused, with the reason, and nothing runs.
    let message = eventually("the rootless pod refused", WAIT, || async {
        let p = api.get("rootless").await.ok()?;
        let c = p.status?.container_statuses?.into_iter().next()?;
        let waiting = c.state?.waiting?;
        (waiting.reason.as_deref() == Some("CreateContainerConfigError"))
            .then(|| waiting.message.unwrap_or_default())
    })
    .await;
    assert!(message.contains("runAsNonRoot"), "{message}");
}
