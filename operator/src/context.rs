//! What every reconcile shares: the Kubernetes client, the event recorder, metrics, and how to
//! reach a network's API.

use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

use crate::crd::network::PotNetwork;
use crate::metrics::Metrics;

/// An annotation on a `PotNetwork` naming the URL of its API when the operator cannot reach
/// the in-cluster Service (an operator run from a laptop with a kubeconfig, a port-forward).
/// Honoured only with `--allow-api-url-annotation`: otherwise anyone who may annotate a
/// network could make the operator send requests wherever they like.
pub const API_URL_ANNOTATION: &str = "pot.dev/api-url";

/// How long one call to a network's API may take before the reconcile goes on without it.
pub const NODE_API_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// How often an object is reconciled when nothing changes (its chain moves meanwhile).
    pub resync: Duration,
    /// Whether [`API_URL_ANNOTATION`] is honoured.
    pub allow_api_url_annotation: bool,
    /// When each object's status was last written (`namespace/name` of a kind).
    pub status_written: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Metrics,
        resync: Duration,
        allow_api_url_annotation: bool,
    ) -> Context {
        let reporter = Reporter {
            controller: "pot-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            resync,
            allow_api_url_annotation,
            status_written: Default::default(),
        }
    }

    /// Record an Event on `obj`; a failure to record is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(object = %obj.name_any(), reason, "recording an event: {e}");
        }
    }

    /// The URL of a network's API: the annotation's where allowed, else its API Service's.
    pub fn api_url(&self, net: &PotNetwork) -> String {
        if self.allow_api_url_annotation
            && let Some(url) = net.annotations().get(API_URL_ANNOTATION)
        {
            return url.clone();
        }
        service_url(net)
    }
}

/// The in-cluster URL of a network's API Service.
pub fn service_url(net: &PotNetwork) -> String {
    format!(
        "http://{}-api.{}.svc:{}",
        net.name_any(),
        net.namespace().unwrap_or_else(|| "default".into()),
        net.spec.ports.api
    )
}
