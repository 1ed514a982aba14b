//! The operator's Prometheus metrics: reconciles, errors and durations per controller, API
//! requests by verb, and the queue depth autoscaling reads (for users who scale with KEDA or an HPA
//! instead), and whether this replica leads.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
    /// The resource (plural) the request names.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub errors: Family<ControllerLabel, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    /// Requests to the Kubernetes API, by HTTP method (`GET`, `PATCH`, …).
    pub api_requests: Family<VerbLabel, Counter>,
    /// Open tasks of each network, as last read from its API.
    pub queue_depth: Family<ObjectLabel, Gauge>,
    /// The replicas each `Miner` fleet is asked to have (by the autoscaler or its spec).
    pub desired_replicas: Family<ObjectLabel, Gauge>,
    /// 1 while this replica leads (runs the controllers).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pot_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ControllerLabel, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            // 0.5 ms to ~28 s in steps of 1.5x: fine enough for a p99 worth reading, and
            // wide enough for a reconcile that waits out several node-API timeouts.
            Histogram::new(exponential_buckets(0.0005, 1.5, 28))
        });
        let api_requests = Family::<VerbLabel, Counter>::default();
        let queue_depth = Family::<ObjectLabel, Gauge>::default();
        let desired_replicas = Family::<ObjectLabel, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed", errors.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took",
            duration.clone(),
        );
        registry.register(
            "kube_api_requests",
            "Requests to the Kubernetes API by method",
            api_requests.clone(),
        );
        registry.register(
            "network_open_tasks",
            "Tasks of each PotNetwork open for claims (what Miner fleets scale by)",
            queue_depth.clone(),
        );
        registry.register(
            "miner_desired_replicas",
            "Replicas each Miner fleet is asked to have",
            desired_replicas.clone(),
        );
        registry.register("leader", "Whether this replica leads", leader.clone());
        Metrics {
            registry: Arc::new(registry),
            reconciles,
            errors,
            duration,
            api_requests,
            queue_depth,
            desired_replicas,
            leader,
        }
    }

    /// Count one reconcile of `controller` that took `took`.
    pub fn reconciled(&self, controller: &'static str, took: Duration, failed: bool) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&label).inc();
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
