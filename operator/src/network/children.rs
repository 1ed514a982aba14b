//! The objects a `PotNetwork` owns, built from its spec alone (pure functions, so a test can
//! check every name, label, port and volume without a cluster).
//!
//! Coordinator keys live in one Secret, one key per pod name; each pod reads its own through
//! `$(POD_NAME)`. (Pods of one network can read each other's keys: they are one owner's; a
//! StatefulSet has one pod template, and per-ordinal Secrets would need a template change,
//! and so a rolling restart, whenever the set changed.)

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::network::PotNetwork;

/// Where things are inside a node pod.
pub mod paths {
    pub const DATA: &str = "/var/lib/pot";
    pub const GENESIS_DIR: &str = "/etc/pot/genesis";
    pub const GENESIS_FILE: &str = "genesis.yaml";
    pub const KEYS_DIR: &str = "/etc/pot/keys";
}

/// Names of a network's objects.
pub struct Names {
    pub network: String,
}

impl Names {
    pub fn of(net: &PotNetwork) -> Names {
        Names {
            network: net.name_any(),
        }
    }
    /// The coordinator StatefulSet; its pods are `<this>-<ordinal>`.
    pub fn statefulset(&self) -> String {
        format!("{}-coordinator", self.network)
    }
    pub fn pod(&self, ordinal: usize) -> String {
        format!("{}-{ordinal}", self.statefulset())
    }
    /// The headless Service that gives each coordinator its DNS name.
    pub fn headless(&self) -> String {
        format!("{}-coordinators", self.network)
    }
    /// The Service miners and clients reach the API through.
    pub fn api_service(&self) -> String {
        format!("{}-api", self.network)
    }
    pub fn keys_secret(&self) -> String {
        format!("{}-coordinator-keys", self.network)
    }
    pub fn faucet_secret(&self) -> String {
        format!("{}-faucet", self.network)
    }
    pub fn genesis_configmap(&self) -> String {
        format!("{}-genesis", self.network)
    }
    pub fn pdb(&self) -> String {
        format!("{}-coordinators", self.network)
    }
}

/// The labels every object of the network carries; `component` tells coordinators, miners
/// and the rest apart.
pub fn labels(network: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "pot-node".into()),
        ("app.kubernetes.io/instance".into(), network.into()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/managed-by".into(), "pot-operator".into()),
        ("pot.dev/network".into(), network.into()),
    ])
}

/// The labels that select a network's coordinator pods (a subset of [`labels`]; a
/// StatefulSet's selector cannot change, so it holds only what never does).
pub fn coordinator_selector(network: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".into(), network.into()),
        ("app.kubernetes.io/component".into(), "coordinator".into()),
    ])
}

/// Labels as a label-selector string (`k=v,k=v`).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(net: &PotNetwork) -> OwnerReference {
    net.controller_owner_ref(&())
        .expect("a PotNetwork read from the API has a uid")
}

fn meta(net: &PotNetwork, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: net.namespace(),
        labels: Some(labels(&net.name_any(), "coordinator")),
        owner_references: Some(vec![owner(net)]),
        ..Default::default()
    }
}

/// The metadata of the chain's identity (keys, genesis): no owner, so that deleting the
/// `PotNetwork` (or re-creating it, as GitOps tools do) keeps them with the volumes, and a
/// network of the same name later takes up the same chain. Delete them by label
/// (`pot.dev/network=<name>`) with the volumes to end a chain.
fn identity_meta(net: &PotNetwork, name: String) -> ObjectMeta {
    ObjectMeta {
        owner_references: None,
        ..meta(net, name)
    }
}

/// The coordinators' keys: one key file per pod name.
pub fn keys_secret(net: &PotNetwork, keys: &BTreeMap<String, String>) -> Secret {
    key_files_secret(identity_meta(net, Names::of(net).keys_secret()), keys)
}

/// A Secret of key files, one per pod name (coordinators' and miners' alike).
pub fn key_files_secret(metadata: ObjectMeta, keys: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(
            keys.iter()
                .map(|(pod, file)| (pod.clone(), ByteString(file.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The faucet's key (key `key`), for a development network: there to fund tasks and fleets,
/// so marked for both to sign with.
pub fn faucet_secret(net: &PotNetwork, key_file: &str) -> Secret {
    let mut metadata = identity_meta(net, Names::of(net).faucet_secret());
    metadata.annotations.get_or_insert_default().insert(
        crate::key_secret::SIGNER_FOR_ANNOTATION.into(),
        "TrainingTask,Miner".into(),
    );
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "key".to_string(),
            ByteString(key_file.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The genesis, immutable: a changed genesis is another chain.
pub fn genesis_configmap(net: &PotNetwork, genesis_yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: identity_meta(net, Names::of(net).genesis_configmap()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            paths::GENESIS_FILE.to_string(),
            genesis_yaml.to_string(),
        )])),
        ..Default::default()
    }
}

/// Every port of a coordinator, named.
fn ports(net: &PotNetwork) -> Vec<(&'static str, i32)> {
    let p = &net.spec.ports;
    vec![
        ("p2p", p.p2p),
        ("api", p.api),
        ("gossip", p.gossip),
        ("artifacts", p.artifacts),
    ]
}

/// The headless Service: stable DNS names `<pod>.<service>` for consensus peers, published
/// before the pods are ready (a coordinator is ready only once it has peers).
pub fn headless_service(net: &PotNetwork) -> Service {
    let names = Names::of(net);
    let ports: Vec<_> = ports(net)
        .into_iter()
        .map(|(name, port)| json!({"name": name, "port": port, "targetPort": port}))
        .collect();
    let mut svc: Service = serde_json::from_value(json!({
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": coordinator_selector(&names.network),
            "ports": ports,
        }
    }))
    .expect("a valid Service");
    svc.metadata = meta(net, names.headless());
    svc
}

/// The API Service: ready coordinators only.
pub fn api_service(net: &PotNetwork) -> Service {
    let names = Names::of(net);
    let port = net.spec.ports.api;
    let mut svc: Service = serde_json::from_value(json!({
        "spec": {
            "type": "ClusterIP",
            "selector": coordinator_selector(&names.network),
            "ports": [{"name": "api", "port": port, "targetPort": port}],
        }
    }))
    .expect("a valid Service");
    svc.metadata = meta(net, names.api_service());
    svc
}

/// `/dns4/<pod>.<headless>.<namespace>.svc.cluster.local/tcp/<port>` of every coordinator.
pub fn peer_addresses(net: &PotNetwork, port: i32) -> Vec<String> {
    let names = Names::of(net);
    let ns = net.namespace().unwrap_or_else(|| "default".into());
    (0..net.spec.coordinators.max(0) as usize)
        .map(|i| {
            format!(
                "/dns4/{}.{}.{ns}.svc.cluster.local/tcp/{port}",
                names.pod(i),
                names.headless()
            )
        })
        .collect()
}

/// The coordinators: `pot-node run --role coordinator` (operator/README.md is the contract),
/// one volume each, started all at once (none is ready before a quorum is up).
pub fn statefulset(net: &PotNetwork) -> StatefulSet {
    let names = Names::of(net);
    let spec = &net.spec;
    let replicas = if spec.suspend { 0 } else { spec.coordinators };
    let p = &spec.ports;
    let env = json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        // Listening on the pod's own address, not 0.0.0.0: the same in any cluster, and what
        // lets pods that share one network (the local kubelet's) use the same ports.
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POT_ROLE", "value": "coordinator"},
        {"name": "POT_GENESIS", "value": format!("{}/{}", paths::GENESIS_DIR, paths::GENESIS_FILE)},
        {"name": "POT_KEY", "value": format!("{}/$(POD_NAME)", paths::KEYS_DIR)},
        {"name": "POT_DATA_DIR", "value": paths::DATA},
        {"name": "POT_API_LISTEN", "value": format!("$(POD_IP):{}", p.api)},
        {"name": "POT_P2P_LISTEN", "value": format!("/ip4/$(POD_IP)/tcp/{}", p.p2p)},
        {"name": "POT_PEERS", "value": peer_addresses(net, p.p2p).join(",")},
        {"name": "POT_GOSSIP_LISTEN", "value": format!("/ip4/$(POD_IP)/tcp/{}", p.gossip)},
        {"name": "POT_GOSSIP_PEERS", "value": peer_addresses(net, p.gossip).join(",")},
        {"name": "POT_ARTIFACTS_LISTEN", "value": format!("/ip4/$(POD_IP)/tcp/{}", p.artifacts)},
        {"name": "POT_LOG_JSON", "value": "true"},
        {"name": "RUST_LOG", "value": "info"},
    ]);
    let container_ports: Vec<_> = ports(net)
        .into_iter()
        .map(|(name, port)| json!({"name": name, "containerPort": port}))
        .collect();
    let mut storage = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size()}},
    });
    if let Some(class) = &spec.storage.storage_class_name {
        storage["storageClassName"] = json!(class);
    }
    let mut container = json!({
        "name": "coordinator",
        "image": spec.image,
        "args": ["run"],
        "env": env,
        "ports": container_ports,
        "volumeMounts": [
            {"name": "data", "mountPath": paths::DATA},
            {"name": "genesis", "mountPath": paths::GENESIS_DIR, "readOnly": true},
            {"name": "keys", "mountPath": paths::KEYS_DIR, "readOnly": true},
        ],
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "api"},
            "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "api"},
            "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "api"},
            "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(policy) = spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if let Some(resources) = &spec.resources {
        container["resources"] = json!(resources);
    }
    let sts = json!({
        "spec": {
            "replicas": replicas,
            "serviceName": names.headless(),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": coordinator_selector(&names.network)},
            "template": {
                "metadata": {"labels": labels(&names.network, "coordinator")},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    // A coordinator stops at once on SIGTERM; its WAL and signing record
                    // are on the volume.
                    "terminationGracePeriodSeconds": 30,
                    // Nodes never talk to the Kubernetes API.
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "containers": [container],
                    "volumes": [
                        {"name": "genesis", "configMap": {"name": names.genesis_configmap()}},
                        {"name": "keys", "secret": {"secretName": names.keys_secret(), "defaultMode": 0o400}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": coordinator_selector(&names.network)},
                "spec": storage,
            }],
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        }
    });
    let mut sts: StatefulSet = serde_json::from_value(sts).expect("a valid StatefulSet");
    sts.metadata = meta(net, names.statefulset());
    sts
}

/// Coordinators that may be down at once for voluntary disruptions: `f` of `3f + 1` (a quorum
/// stays), and one for a development network (which has no quorum to keep).
pub fn max_unavailable(coordinators: i32) -> i32 {
    ((coordinators - 1) / 3).max(1)
}

pub fn pdb(net: &PotNetwork) -> PodDisruptionBudget {
    let names = Names::of(net);
    let mut pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "spec": {
            "maxUnavailable": max_unavailable(net.spec.coordinators),
            "selector": {"matchLabels": coordinator_selector(&names.network)},
        }
    }))
    .expect("a valid PodDisruptionBudget");
    pdb.metadata = meta(net, names.pdb());
    pdb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::network::PotNetworkSpec;

    fn network(coordinators: i32) -> PotNetwork {
        let mut spec: PotNetworkSpec = serde_json::from_value(json!({})).unwrap();
        spec.coordinators = coordinators;
        let mut net = PotNetwork::new("main", spec);
        net.metadata.namespace = Some("team".into());
        net.metadata.uid = Some("uid-1".into());
        net
    }

    #[test]
    fn coordinators_find_each_other_by_stable_names() {
        let net = network(4);
        let peers = peer_addresses(&net, 26656);
        assert_eq!(peers.len(), 4);
        assert_eq!(
            peers[3],
            "/dns4/main-coordinator-3.main-coordinators.team.svc.cluster.local/tcp/26656"
        );
        let sts = statefulset(&net);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.service_name.as_deref(), Some("main-coordinators"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["POT_ROLE"], "coordinator");
        assert_eq!(env["POT_KEY"], "/etc/pot/keys/$(POD_NAME)");
        assert_eq!(env["POT_PEERS"], peers.join(","));
        assert_eq!(env["POT_API_LISTEN"], "$(POD_IP):26657");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        let claims = spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        assert_eq!(
            sts.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        assert_eq!(
            sts.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
    }

    #[test]
    fn a_suspended_network_keeps_its_objects_but_runs_no_coordinator() {
        let mut net = network(4);
        net.spec.suspend = true;
        assert_eq!(statefulset(&net).spec.unwrap().replicas, Some(0));
    }

    #[test]
    fn disruptions_never_take_a_quorum() {
        assert_eq!(max_unavailable(1), 1);
        assert_eq!(max_unavailable(4), 1);
        assert_eq!(max_unavailable(7), 2);
        assert_eq!(max_unavailable(10), 3);
        let pdb = pdb(&network(7));
        assert_eq!(
            pdb.spec.unwrap().max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
        );
    }

    #[test]
    fn services_select_the_coordinators_and_name_every_port() {
        let net = network(4);
        let headless = headless_service(&net);
        let spec = headless.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let names: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["p2p", "api", "gossip", "artifacts"]);
        assert_eq!(spec.selector.unwrap(), coordinator_selector("main"));
        let api = api_service(&net).spec.unwrap();
        assert_eq!(api.ports.unwrap()[0].port, 26657);
    }
}
