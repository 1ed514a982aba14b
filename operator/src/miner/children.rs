//! The objects a `Miner` fleet owns, built from its spec and its network's (pure functions).
//!
//! Each pod keeps one identity for life: its key is the file named after the pod in the
//! fleet's keys Secret (added before a pod with a new ordinal starts, never removed or
//! replaced, since the key owns the pod's bonds), and its volume is its StatefulSet claim.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::miner::{FleetRole, HyperSearch, Miner};
use crate::crd::network::PotNetwork;
use crate::network::children::{Names as NetworkNames, labels, paths};
use pot_protocol::Amount;

/// The resource name of a GPU.
pub const GPU: &str = "nvidia.com/gpu";

/// Names of a fleet's objects.
pub struct Names {
    pub miner: String,
}

impl Names {
    pub fn of(m: &Miner) -> Names {
        Names {
            miner: m.name_any(),
        }
    }
    /// The StatefulSet; its pods are `<this>-<ordinal>`.
    pub fn statefulset(&self) -> String {
        format!("{}-miner", self.miner)
    }
    pub fn pod(&self, ordinal: usize) -> String {
        format!("{}-{ordinal}", self.statefulset())
    }
    pub fn keys_secret(&self) -> String {
        format!("{}-miner-keys", self.miner)
    }
    /// The token the operator drains pods with (`POST /v1/node/drain`).
    pub fn drain_secret(&self) -> String {
        format!("{}-miner-drain-token", self.miner)
    }
}

/// The labels that select a fleet's pods (also the scale subresource's selector).
pub fn selector(m: &Miner) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/component".into(), "miner".into()),
        ("pot.dev/miner".into(), m.name_any()),
    ])
}

fn pod_labels(m: &Miner) -> BTreeMap<String, String> {
    let mut l = labels(&m.spec.network_ref.name, "miner");
    l.extend(selector(m));
    l
}

fn meta(m: &Miner, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: m.namespace(),
        labels: Some(pod_labels(m)),
        owner_references: Some(vec![
            m.controller_owner_ref(&())
                .expect("a Miner read from the API has a uid"),
        ]),
        ..Default::default()
    }
}

/// The miners' keys, one key file per pod name. No owner: the keys hold the miners' balances
/// and bonds, so deleting the `Miner` keeps them (a fleet of the same name takes them up
/// again once a person hands them over, see `identity::MINER_UID_ANNOTATION`); delete the
/// Secret by hand once the funds are moved.
pub fn keys_secret(m: &Miner, keys: &BTreeMap<String, String>) -> Secret {
    let metadata = ObjectMeta {
        owner_references: None,
        ..meta(m, Names::of(m).keys_secret())
    };
    crate::network::children::key_files_secret(metadata, keys)
}

/// The token the operator drains the fleet's pods with (key `token`).
pub fn drain_secret(m: &Miner, token: &str) -> Secret {
    Secret {
        metadata: meta(m, Names::of(m).drain_secret()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The headless Service that gives each miner pod its stable DNS name (the StatefulSet's
/// `serviceName`), for the artifact swarm's peers.
pub fn headless_service(m: &Miner, net: &PotNetwork) -> Service {
    let ports = &net.spec.ports;
    let mut svc: Service = serde_json::from_value(json!({
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(m),
            "ports": [
                {"name": "api", "port": ports.api, "targetPort": ports.api},
                {"name": "artifacts", "port": ports.artifacts, "targetPort": ports.artifacts},
            ],
        }
    }))
    .expect("a valid Service");
    svc.metadata = meta(m, Names::of(m).statefulset());
    svc
}

/// What each pod keeps bonded as a validator: `validatorStake` when it validates; for a
/// Validator fleet without one, the network's minimum bond; none for a miner without one (it
/// validates with stake bonded otherwise, if any — a miner's funding is not spent on a bond
/// below the collateral most tasks ask).
pub fn validator_stake(m: &Miner, net: &PotNetwork) -> Option<Amount> {
    let spec = &m.spec;
    match (spec.validator_stake, spec.role) {
        _ if !spec.validates() => None,
        (Some(stake), _) => Some(Amount(stake)),
        (None, FleetRole::Validator) => {
            Some(crate::network::genesis::params(&net.spec.genesis).min_validator_bond)
        }
        (None, FleetRole::Miner) => None,
    }
}

/// The miners' StatefulSet at `replicas` pods.
pub fn statefulset(m: &Miner, net: &PotNetwork, replicas: i32) -> StatefulSet {
    let names = Names::of(m);
    let nn = NetworkNames::of(net);
    let spec = &m.spec;
    let ports = &net.spec.ports;
    let ns = net.namespace().unwrap_or_else(|| "default".into());
    let n = net.spec.coordinators.max(0) as usize;
    let coordinator_dns =
        |i: usize| format!("{}.{}.{ns}.svc.cluster.local", nn.pod(i), nn.headless());
    let bootstrap: Vec<String> = (0..n)
        .map(|i| format!("/dns4/{}/tcp/{}", coordinator_dns(i), ports.artifacts))
        .collect();
    let apis: Vec<String> = (0..n)
        .map(|i| format!("http://{}:{}", coordinator_dns(i), ports.api))
        .collect();
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        // The pod's own address (see the coordinators' StatefulSet).
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "POT_ROLE", "value": match spec.role {
            FleetRole::Miner => "miner",
            FleetRole::Validator => "validator",
        }}),
        json!({"name": "POT_GENESIS", "value": format!("{}/{}", paths::GENESIS_DIR, paths::GENESIS_FILE)}),
        json!({"name": "POT_KEY", "value": format!("{}/$(POD_NAME)", paths::KEYS_DIR)}),
        json!({"name": "POT_DATA_DIR", "value": paths::DATA}),
        json!({"name": "POT_API_LISTEN", "value": format!("$(POD_IP):{}", ports.api)}),
        json!({"name": "POT_ARTIFACTS_LISTEN", "value": format!("/ip4/$(POD_IP)/tcp/{}", ports.artifacts)}),
        json!({"name": "POT_BOOTSTRAP", "value": bootstrap.join(",")}),
        json!({"name": "POT_COORDINATORS", "value": apis.join(",")}),
        json!({"name": "POT_DEVICE", "value": if spec.gpus_per_pod > 0 { "cuda" } else { "cpu" }}),
        json!({"name": "POT_HYPER_SEARCH", "value": match spec.hyper_search {
            HyperSearch::Defaults => "defaults",
            HyperSearch::Random => "random",
        }}),
        json!({"name": "POT_DRAIN_TOKEN_FILE", "value": "/etc/pot/drain/token"}),
        json!({"name": "POT_CPU_CAPABILITY", "value": "avx2"}),
        json!({"name": "POT_LOG_JSON", "value": "true"}),
        json!({"name": "RUST_LOG", "value": "info"}),
    ];
    if let Some(slots) = spec.slots {
        env.push(json!({"name": "POT_SLOTS", "value": slots.to_string()}));
    }
    if !spec.validates() {
        env.push(json!({"name": "POT_NO_VALIDATE", "value": "true"}));
    }
    if let Some(stake) = validator_stake(m, net) {
        // Pods funded by the operator hold no validator stake at genesis: each bonds it.
        env.push(json!({"name": "POT_VALIDATOR_STAKE", "value": stake.0.to_string()}));
    }
    let mut resources = serde_json::to_value(spec.resources.clone().unwrap_or_default())
        .expect("resources serialise");
    if spec.gpus_per_pod > 0 {
        // Extended resources are requested through limits (requests follow them).
        resources["limits"][GPU] = json!(spec.gpus_per_pod.to_string());
        resources["requests"][GPU] = json!(spec.gpus_per_pod.to_string());
    }
    let image = spec.image.clone().unwrap_or_else(|| net.spec.image.clone());
    let mut container = json!({
        "name": "miner",
        "image": image,
        "args": ["run"],
        "env": env,
        "ports": [
            {"name": "api", "containerPort": ports.api},
            {"name": "artifacts", "containerPort": ports.artifacts},
        ],
        "resources": resources,
        "volumeMounts": [
            {"name": "data", "mountPath": paths::DATA},
            {"name": "genesis", "mountPath": paths::GENESIS_DIR, "readOnly": true},
            {"name": "keys", "mountPath": paths::KEYS_DIR, "readOnly": true},
            {"name": "drain", "mountPath": "/etc/pot/drain", "readOnly": true},
        ],
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "api"}, "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "api"}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "api"}, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(policy) = spec.image_pull_policy.or(net.spec.image_pull_policy) {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut pod = json!({
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                        "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // A miner stops at once on SIGTERM and resumes from its last checkpoint.
        "terminationGracePeriodSeconds": 30,
                    // Nodes never talk to the Kubernetes API.
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
        "containers": [container],
        "volumes": [
            {"name": "genesis", "configMap": {"name": nn.genesis_configmap()}},
            {"name": "keys", "secret": {"secretName": names.keys_secret(), "defaultMode": 0o400}},
            {"name": "drain", "secret": {"secretName": names.drain_secret(), "defaultMode": 0o400}},
        ],
    });
    for (field, value) in [
        (
            "nodeSelector",
            spec.node_selector.as_ref().map(|v| json!(v)),
        ),
        ("tolerations", spec.tolerations.as_ref().map(|v| json!(v))),
        ("affinity", spec.affinity.as_ref().map(|v| json!(v))),
        (
            "priorityClassName",
            spec.priority_class_name.as_ref().map(|v| json!(v)),
        ),
        (
            "runtimeClassName",
            spec.runtime_class_name.as_ref().map(|v| json!(v)),
        ),
    ] {
        if let Some(v) = value {
            pod[field] = v;
        }
    }
    let mut storage = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size()}},
    });
    if let Some(class) = &spec.storage.storage_class_name {
        storage["storageClassName"] = json!(class);
    }
    let sts = json!({
        "spec": {
            "replicas": replicas,
            "serviceName": names.statefulset(),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(m)},
            "template": {"metadata": {"labels": pod_labels(m)}, "spec": pod},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": selector(m)},
                "spec": storage,
            }],
            // A pod that comes back keeps its volume: its run, salts and checkpoints.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        }
    });
    let mut sts: StatefulSet = serde_json::from_value(sts).expect("a valid StatefulSet");
    sts.metadata = meta(m, names.statefulset());
    sts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::miner::MinerSpec;
    use crate::crd::network::PotNetworkSpec;

    fn fleet(gpus: i32) -> (Miner, PotNetwork) {
        let spec: MinerSpec = serde_json::from_value(json!({
            "networkRef": {"name": "main"},
            "gpusPerPod": gpus,
            "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            "runtimeClassName": "nvidia",
            "resources": {"requests": {"cpu": "2"}},
        }))
        .unwrap();
        let mut m = Miner::new("gpu", spec);
        m.metadata.namespace = Some("team".into());
        m.metadata.uid = Some("uid-m".into());
        let net_spec: PotNetworkSpec = serde_json::from_value(json!({"coordinators": 4})).unwrap();
        let mut net = PotNetwork::new("main", net_spec);
        net.metadata.namespace = Some("team".into());
        (m, net)
    }

    #[test]
    fn gpu_miners_request_their_gpus_and_keep_the_scheduling_fields() {
        let (m, net) = fleet(2);
        let sts = statefulset(&m, &net, 3);
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some(GPU));
        let c = &pod.containers[0];
        let r = c.resources.clone().unwrap();
        assert_eq!(r.limits.unwrap()[GPU].0, "2");
        assert_eq!(r.requests.clone().unwrap()[GPU].0, "2");
        assert_eq!(
            r.requests.unwrap()["cpu"].0,
            "2",
            "the user's requests stay"
        );
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["POT_ROLE"], "miner");
        assert_eq!(env["POT_DEVICE"], "cuda");
        assert_eq!(env["POT_KEY"], "/etc/pot/keys/$(POD_NAME)");
        assert_eq!(env["POT_COORDINATORS"].split(',').count(), 4);
        assert!(env["POT_BOOTSTRAP"].starts_with(
            "/dns4/main-coordinator-0.main-coordinators.team.svc.cluster.local/tcp/26658"
        ));
        assert_eq!(
            spec.selector.match_labels.unwrap(),
            selector(&m),
            "the scale subresource's selector selects the pods"
        );
    }

    fn env_of(m: &Miner, net: &PotNetwork) -> BTreeMap<String, String> {
        let pod = statefulset(m, net, 1).spec.unwrap().template.spec.unwrap();
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn each_role_runs_its_node_role_and_bonds_validator_stake_only_to_validate() {
        let (mut m, mut net) = fleet(0);
        // A miner validates by default, bonding validator stake only when told how much.
        let env = env_of(&m, &net);
        assert_eq!(env["POT_ROLE"], "miner");
        assert!(!env.contains_key("POT_VALIDATOR_STAKE"));
        assert!(!env.contains_key("POT_NO_VALIDATE"));
        m.spec.validator_stake = Some(9000);
        assert_eq!(env_of(&m, &net)["POT_VALIDATOR_STAKE"], "9000");
        // A miner that only trains bonds none.
        m.spec.validate = false;
        let env = env_of(&m, &net);
        assert_eq!(env["POT_NO_VALIDATE"], "true");
        assert!(!env.contains_key("POT_VALIDATOR_STAKE"));
        // A validator fleet validates whatever `validate` says; without a validatorStake it
        // bonds the network's minimum.
        m.spec.role = crate::crd::miner::FleetRole::Validator;
        let env = env_of(&m, &net);
        assert_eq!(env["POT_ROLE"], "validator");
        assert_eq!(env["POT_VALIDATOR_STAKE"], "9000");
        assert!(!env.contains_key("POT_NO_VALIDATE"));
        m.spec.validator_stake = None;
        net.spec.genesis.min_validator_bond = Some(700);
        assert_eq!(env_of(&m, &net)["POT_VALIDATOR_STAKE"], "700");
    }

    #[test]
    fn cpu_miners_request_no_gpu() {
        let (m, net) = fleet(0);
        let pod = statefulset(&m, &net, 1)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let c = &pod.containers[0];
        let r = c.resources.clone().unwrap();
        assert!(!r.limits.unwrap_or_default().contains_key(GPU));
        let device = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "POT_DEVICE")
            .unwrap();
        assert_eq!(device.value.as_deref(), Some("cpu"));
    }
}
