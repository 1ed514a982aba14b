//! The Node this kubelet plays: registered with its capacity (CPU, memory, pods and a
//! configurable `nvidia.com/gpu`), its Lease in `kube-node-lease` renewed every 10 s, and its
//! `Ready` condition refreshed every 40 s, as a kubelet does. The `not-ready` taint the API
//! server puts on a new Node is removed once it is ready (no node-lifecycle controller runs).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::warn;

use super::now;

/// What the Node says about itself.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub gpus: u32,
    pub max_pods: u32,
    /// The port of the kubelet's log endpoint on 127.0.0.1.
    pub kubelet_port: u16,
}

const MANAGER: &str = "pot-e2e-kubelet";
const LEASE_SECONDS: i32 = 40;

fn capacity(cfg: &NodeConfig) -> Value {
    json!({
        "cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.max_pods.to_string(),
        "ephemeral-storage": "100Gi", "nvidia.com/gpu": cfg.gpus.to_string(),
    })
}

/// The Node's status: capacity, addresses, the kubelet endpoint and a fresh `Ready`.
pub fn status(cfg: &NodeConfig) -> Value {
    let now = now();
    json!({
        "capacity": capacity(cfg),
        "allocatable": capacity(cfg),
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": cfg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "pot-e2e local processes", "containerRuntimeVersion": "pot-e2e://0.1",
            "kubeletVersion": "v1.36.3", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": arch(),
        },
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "the pot-e2e kubelet is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
    })
}

/// This machine's architecture as Kubernetes names it (`amd64`, `arm64`).
fn arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// Register (or update) the Node and make it schedulable.
pub async fn register(client: &Client, cfg: &NodeConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let arch = arch();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.name, "labels": {
            "kubernetes.io/hostname": cfg.name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch, "node.kubernetes.io/instance-type": "pot-e2e-local",
            "pot.dev/local-kubelet": "true",
        }},
    });
    nodes
        .patch(
            &cfg.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .with_context(|| format!("registering node {}", cfg.name))?;
    heartbeat(client, cfg).await?;
    // The API server adds `node.kubernetes.io/not-ready` to every new Node; with no
    // node-lifecycle controller here, the kubelet (now ready) takes it off itself.
    let current = nodes.get(&cfg.name).await?;
    let taints: Vec<_> = current
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != "node.kubernetes.io/not-ready")
        .collect();
    nodes
        .patch(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .context("removing the not-ready taint")?;
    Ok(())
}

async fn heartbeat(client: &Client, cfg: &NodeConfig) -> anyhow::Result<()> {
    Api::<Node>::all(client.clone())
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status(cfg)})),
        )
        .await
        .context("posting node status")?;
    Ok(())
}

async fn renew_lease(client: &Client, cfg: &NodeConfig) -> anyhow::Result<()> {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": LEASE_SECONDS,
                 "renewTime": k8s_openapi::jiff::Timestamp::now()},
    });
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            &cfg.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .context("renewing the node lease")?;
    Ok(())
}

/// Renew the Lease every 10 s and post status every 40 s, for as long as the kubelet runs.
pub async fn keep_alive(client: Client, cfg: NodeConfig) {
    let mut tick = 0u64;
    loop {
        if let Err(e) = renew_lease(&client, &cfg).await {
            warn!(error = %format!("{e:#}"), "node lease");
        }
        if tick.is_multiple_of(4)
            && let Err(e) = heartbeat(&client, &cfg).await
        {
            warn!(error = %format!("{e:#}"), "node status");
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
