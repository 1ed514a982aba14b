//! What every reconcile shares: the Kubernetes client, the event recorder, metrics, and how to
//! reach a network's API.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
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
    /// Which dataset URLs the TrainingTask controller downloads to check them.
    pub data_check: crate::task::data_check::Fetch,
    /// When each object's status was last written (`kind/namespace/name`).
    status_written: Mutex<HashMap<String, Instant>>,
    /// Since when a condition has held without a break (a pod idle, a task missing), by key.
    first_seen: Mutex<HashMap<String, Instant>>,
    // Keys of the maps above start with the object's `kind/namespace/name` (see
    // [`Context::forget_deleted`]), so what is remembered of a deleted object can be found.
    /// The networks as the `PotNetwork` controller's watch last saw them (set once the
    /// controllers start): the Miner and TrainingTask controllers read them from here.
    pub networks: OnceLock<Store<PotNetwork>>,
    /// Each network's open tasks as last read (`namespace/name`), and when.
    pub queues: Mutex<HashMap<String, (Instant, u64)>>,
    /// Each autoscaled fleet's recent recommendations (`namespace/name`), for the scale-down
    /// stabilisation window.
    pub scale_history: Mutex<HashMap<String, Vec<(Instant, u32)>>>,
    /// Fleets with a desired-replicas gauge (`namespace/name`).
    gauged_miners: Mutex<HashSet<String>>,
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
            data_check: Default::default(),
            status_written: Default::default(),
            first_seen: Default::default(),
            networks: OnceLock::new(),
            queues: Default::default(),
            scale_history: Default::default(),
            gauged_miners: Default::default(),
        }
    }

    /// Whether a status that differs from the stored one only in progress may be skipped: the
    /// object's status was written within the resync period. Each write triggers a reconcile,
    /// so a chain with sub-second blocks would otherwise keep its objects reconciling.
    pub fn written_recently(&self, key: &str) -> bool {
        self.status_written
            .lock()
            .expect("status_written lock")
            .get(key)
            .is_some_and(|at| at.elapsed() < self.resync)
    }

    pub fn mark_written(&self, key: String) {
        self.status_written
            .lock()
            .expect("status_written lock")
            .insert(key, Instant::now());
    }

    /// How long the condition `key` has held: from the first call since it was last
    /// [`Context::forget`]-ten.
    pub fn held_for(&self, key: String) -> Duration {
        self.first_seen
            .lock()
            .expect("first_seen lock")
            .entry(key)
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// A context whose client points nowhere (for unit tests of what it remembers; needs a
    /// Tokio runtime).
    #[cfg(test)]
    pub fn for_tests() -> Context {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = Client::try_from(config).expect("a client");
        Context::new(client, Metrics::new(), Duration::from_secs(10), false)
    }

    /// The condition `key` no longer holds.
    pub fn forget(&self, key: &str) {
        self.first_seen.lock().expect("first_seen lock").remove(key);
    }

    /// Drop what is remembered of objects that no longer exist — timers, write times, queue
    /// readings, scaling history and their metric series — so that a long-running operator
    /// does not grow with every object ever made, and `/metrics` shows only live ones.
    /// `live` holds `kind/namespace/name` of every object the watches know (kinds lower-case:
    /// `potnetwork`, `miner`, `trainingtask`).
    pub fn forget_deleted(&self, live: &HashSet<String>) {
        let alive = |key: &str| live.contains(&object_of(key));
        self.status_written
            .lock()
            .expect("status_written lock")
            .retain(|k, _| alive(k));
        self.first_seen
            .lock()
            .expect("first_seen lock")
            .retain(|k, _| alive(k));
        let label = |key: &str| {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            crate::metrics::ObjectLabel {
                namespace: ns.to_string(),
                name: name.to_string(),
            }
        };
        self.queues.lock().expect("queues lock").retain(|k, _| {
            let keep = live.contains(&format!("potnetwork/{k}"));
            if !keep {
                self.metrics.queue_depth.remove(&label(k));
            }
            keep
        });
        self.scale_history
            .lock()
            .expect("scale_history lock")
            .retain(|k, _| live.contains(&format!("miner/{k}")));
        self.gauged_miners
            .lock()
            .expect("gauged_miners lock")
            .retain(|k| {
                let keep = live.contains(&format!("miner/{k}"));
                if !keep {
                    self.metrics.desired_replicas.remove(&label(k));
                }
                keep
            });
    }

    /// Set a fleet's desired-replicas gauge (and remember it has one, for
    /// [`Context::forget_deleted`]).
    pub fn gauge_desired(&self, m: &crate::crd::miner::Miner, desired: u32) {
        self.metrics
            .desired_replicas
            .get_or_create(&crate::metrics::ObjectLabel {
                namespace: m.namespace().unwrap_or_default(),
                name: m.name_any(),
            })
            .set(i64::from(desired));
        self.gauged_miners
            .lock()
            .expect("gauged_miners lock")
            .insert(key_of(m));
    }

    /// The network `name` in `ns`: from the watch's cache, else from the API server.
    pub async fn network(&self, ns: &str, name: &str) -> kube::Result<Option<PotNetwork>> {
        if let Some(store) = self.networks.get()
            && let Some(net) = store.get(&ObjectRef::new(name).within(ns))
        {
            return Ok(Some((*net).clone()));
        }
        Api::<PotNetwork>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }

    /// A network's takeable tasks ([`takeable`]): the queue poller's reading when it is at most `fresh` old, else
    /// read now. `None` when the network's API does not answer.
    pub async fn open_tasks(&self, net: &PotNetwork, fresh: Duration) -> Option<u64> {
        let key = key_of(net);
        let cached = self
            .queues
            .lock()
            .expect("queues lock")
            .get(&key)
            .filter(|(at, _)| at.elapsed() <= fresh)
            .map(|(_, open)| *open);
        if cached.is_some() {
            return cached;
        }
        let open = takeable(
            &pot_protocol::client::Client::with_timeout(self.api_url(net), NODE_API_TIMEOUT)
                .queue()
                .await
                .ok()?,
        );
        self.record_queue(net, open);
        Some(open)
    }

    /// Remember a network's open tasks; true when they differ from the last reading.
    pub fn record_queue(&self, net: &PotNetwork, open: u64) -> bool {
        let key = key_of(net);
        self.metrics
            .queue_depth
            .get_or_create(&crate::metrics::ObjectLabel {
                namespace: net.namespace().unwrap_or_default(),
                name: net.name_any(),
            })
            .set(open as i64);
        let old = self
            .queues
            .lock()
            .expect("queues lock")
            .insert(key, (Instant::now(), open));
        old.map(|(_, o)| o) != Some(open)
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
            note: Some(fit_event_note(&note)),
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

/// The tasks of a queue that a miner can still take (in their commit window): what fleets
/// scale by. Tasks further on need no new miner, and counting them would keep fleets large
/// (or let anyone grow every fleet with cheap tasks nobody claims).
pub fn takeable(q: &pot_protocol::api::Queue) -> u64 {
    q.by_phase
        .get(&pot_protocol::Phase::Commit)
        .copied()
        .unwrap_or(0)
}

/// The `kind/namespace/name` a remembered key starts with.
fn object_of(key: &str) -> String {
    key.splitn(4, '/').take(3).collect::<Vec<_>>().join("/")
}

/// `note` cut (at a character boundary, marked with an ellipsis) to fit the Events API's limit
/// of 1,024 bytes, which refuses a longer note.
fn fit_event_note(note: &str) -> String {
    const MAX: usize = 1024 - '…'.len_utf8();
    if note.len() <= 1024 {
        return note.to_string();
    }
    let mut end = MAX;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

/// `s` cut to `max` characters, marked with an ellipsis where it was cut (an error from
/// elsewhere must not fill a condition).
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `namespace/name` of an object.
pub fn key_of<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
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

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::Phase;
    use pot_protocol::api::Queue;

    #[test]
    fn fleets_scale_by_the_tasks_a_miner_can_still_take() {
        let q = Queue {
            height: 9,
            open: 7,
            by_phase: [
                (Phase::Commit, 2),
                (Phase::ReportCommit, 4),
                (Phase::Vote, 1),
                (Phase::Finalized, 30),
            ]
            .into(),
        };
        assert_eq!(takeable(&q), 2);
        assert_eq!(takeable(&Queue::default()), 0);
    }

    #[test]
    fn an_event_note_fits_the_api_limit_in_bytes() {
        assert_eq!(fit_event_note("short → fine"), "short → fine");
        let long = "→".repeat(600); // 1,800 bytes
        let cut = fit_event_note(&long);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with('…') && cut.starts_with("→→"));
        let exact = "a".repeat(1024);
        assert_eq!(fit_event_note(&exact), exact);
    }

    fn miner(ns: &str, name: &str) -> crate::crd::miner::Miner {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "Miner",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"networkRef": {"name": "n"}},
        }))
        .unwrap()
    }

    fn network(ns: &str, name: &str) -> PotNetwork {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pot.dev/v1alpha1", "kind": "PotNetwork",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"coordinators": 1},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn what_is_remembered_of_a_deleted_object_goes_and_the_rest_stays() {
        let ctx = Context::for_tests();
        let (kept, gone) = (miner("a", "kept"), miner("a", "gone"));
        for m in [&kept, &gone] {
            ctx.gauge_desired(m, 3);
            ctx.mark_written(format!("miner/{}", key_of(m)));
            ctx.held_for(format!("miner/{}/idle/{}-miner-0", key_of(m), m.name_any()));
            ctx.scale_history
                .lock()
                .unwrap()
                .insert(key_of(m), vec![(Instant::now(), 3)]);
        }
        ctx.record_queue(&network("a", "gone-net"), 4);
        ctx.record_queue(&network("a", "net"), 5);
        ctx.held_for("trainingtask/a/gone-task/nonce-missing/7".into());
        ctx.held_for("trainingtask/a/task/nonce-missing/7".into());
        // A name that only starts like a live one is not kept by it.
        ctx.mark_written("miner/a/kept-too".into());

        let live: HashSet<String> = ["miner/a/kept", "potnetwork/a/net", "trainingtask/a/task"]
            .into_iter()
            .map(String::from)
            .collect();
        ctx.forget_deleted(&live);

        let written: Vec<String> = ctx.status_written.lock().unwrap().keys().cloned().collect();
        assert_eq!(written, vec!["miner/a/kept".to_string()]);
        let mut timers: Vec<String> = ctx.first_seen.lock().unwrap().keys().cloned().collect();
        timers.sort();
        assert_eq!(
            timers,
            vec![
                "miner/a/kept/idle/kept-miner-0",
                "trainingtask/a/task/nonce-missing/7"
            ]
        );
        assert_eq!(
            ctx.scale_history.lock().unwrap().keys().collect::<Vec<_>>(),
            vec!["a/kept"]
        );
        assert_eq!(
            ctx.queues.lock().unwrap().keys().collect::<Vec<_>>(),
            vec!["a/net"]
        );
        let text = ctx.metrics.encode();
        assert!(text.contains("name=\"kept\""), "{text}");
        assert!(text.contains("name=\"net\""), "{text}");
        assert!(!text.contains("gone"), "{text}");
    }
}
