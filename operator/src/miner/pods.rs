//! What a fleet's pods are doing, read from each running pod's own node API
//! (`GET /v1/node/status`), and draining the pods a scale-down would remove
//! (`POST /v1/node/drain`), or resuming those the fleet needs again (`DELETE`).

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use pot_protocol::api::NodeStatus;
use pot_protocol::client::Client;

use super::children::{Names, selector};
use crate::autoscale::PodWork;
use crate::context::NODE_API_TIMEOUT;
use crate::crd::miner::Miner;
use crate::network::children::selector_string;

/// One pod of the fleet as last seen.
#[derive(Clone, Debug)]
pub struct PodView {
    pub name: String,
    /// Its node API (`http://<pod IP>:<api port>`), once it has an address and runs.
    pub api: Option<String>,
    /// Its node status, or why it could not be read.
    pub status: Option<Result<NodeStatus, String>>,
}

impl PodView {
    /// What removing this pod would cost, from its status (after a drain, so it takes no new
    /// task between this look and the scale-down).
    pub fn work(&self) -> PodWork {
        match (&self.api, &self.status) {
            // Not running: nothing in this process to lose (its volume stays).
            (None, _) => PodWork::Idle,
            (Some(_), Some(Ok(s))) if s.unfinished() == 0 => PodWork::Idle,
            (Some(_), Some(Ok(_))) => PodWork::Busy,
            _ => PodWork::Unknown,
        }
    }
}

/// The fleet's pods by ordinal, each running one's status read from its node API.
pub async fn observe(
    client: &kube::Client,
    m: &Miner,
    api_port: i32,
) -> kube::Result<BTreeMap<u32, PodView>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
    let list = pods
        .list(&ListParams::default().labels(&selector_string(&selector(m))))
        .await?;
    let prefix = format!("{}-", Names::of(m).statefulset());
    let views = list.items.into_iter().filter_map(|p| {
        let ordinal: u32 = p.name_any().strip_prefix(&prefix)?.parse().ok()?;
        let status = p.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.metadata.deletion_timestamp.is_none();
        let api = status
            .and_then(|s| s.pod_ip.as_ref())
            .filter(|_| running)
            .map(|ip| format!("http://{}:{api_port}", bracket(ip)));
        Some((
            ordinal,
            PodView {
                name: p.name_any(),
                api,
                status: None,
            },
        ))
    });
    let mut views: BTreeMap<u32, PodView> = views.collect();
    let reads = views.iter().filter_map(|(o, v)| {
        let url = v.api.clone()?;
        Some(async move {
            let s = Client::with_timeout(url, NODE_API_TIMEOUT)
                .node_status()
                .await
                .map_err(|e| e.to_string());
            (*o, s)
        })
    });
    for (o, s) in join_all(reads).await {
        if let Some(v) = views.get_mut(&o) {
            v.status = Some(s);
        }
    }
    Ok(views)
}

/// Drain every running pod at an ordinal at or above `keep`, and resume every drained one
/// below it; each pod's status is updated with the answer.
pub async fn settle(views: &mut BTreeMap<u32, PodView>, keep: u32, token: &str) {
    let calls = views.iter().filter_map(|(o, v)| {
        let url = v.api.clone()?;
        let draining = matches!(&v.status, Some(Ok(s)) if s.draining);
        let leaving = *o >= keep;
        if !leaving && !draining {
            return None;
        }
        if leaving && draining && v.work() == PodWork::Idle {
            return None;
        }
        Some(async move {
            let node = Client::with_timeout(url, NODE_API_TIMEOUT);
            let answer = if leaving {
                node.drain(token).await
            } else {
                node.resume(token).await
            };
            (*o, answer.map_err(|e| e.to_string()))
        })
    });
    for (o, s) in join_all(calls).await {
        if let Some(v) = views.get_mut(&o) {
            v.status = Some(s);
        }
    }
}

/// An IPv6 address in a URL goes in brackets.
fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::api::TaskWork;
    use pot_protocol::{Hash, SecretKey};

    fn view(api: bool, status: Option<Result<NodeStatus, String>>) -> PodView {
        PodView {
            name: "m-miner-0".into(),
            api: api.then(|| "http://10.0.0.1:26657".into()),
            status,
        }
    }

    fn node(tasks: Vec<TaskWork>) -> NodeStatus {
        NodeStatus {
            role: "miner".into(),
            address: SecretKey::generate().address(),
            height: 9,
            draining: true,
            tasks: tasks
                .into_iter()
                .enumerate()
                .map(|(i, w)| (Hash::of_value("t", &(i as u64)), w))
                .collect(),
            work_seconds: Default::default(),
        }
    }

    #[test]
    fn only_a_pod_seen_to_hold_no_work_counts_as_idle() {
        assert_eq!(view(false, None).work(), PodWork::Idle, "never started");
        assert_eq!(view(true, None).work(), PodWork::Unknown, "not asked yet");
        assert_eq!(
            view(true, Some(Err("timeout".into()))).work(),
            PodWork::Unknown
        );
        assert_eq!(
            view(true, Some(Ok(node(vec![TaskWork::Revealed])))).work(),
            PodWork::Idle
        );
        assert_eq!(
            view(true, Some(Ok(node(vec![TaskWork::Committed])))).work(),
            PodWork::Busy
        );
    }

    #[test]
    fn ipv6_pod_addresses_are_bracketed() {
        assert_eq!(bracket("fd00::1"), "[fd00::1]");
        assert_eq!(bracket("10.1.2.3"), "10.1.2.3");
    }
}
