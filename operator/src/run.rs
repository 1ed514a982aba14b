//! `pot-operator run`: the controllers, behind a leader-election Lease so that of several
//! replicas only one reconciles, with `/healthz`, `/readyz` and `/metrics` on an HTTP port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::client::ClientBuilder;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::backoff::{Backoff, WatchBackoff};
use crate::context::{Context, key_of};
use crate::crd::miner::Miner;
use crate::crd::network::PotNetwork;
use crate::crd::task::TrainingTask;
use crate::error::Error;
use crate::metrics::{Metrics, VerbLabel};
use crate::{miner, network, queue, task};

/// How `run` is configured (flags and environment, see `main.rs`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace (all when unset).
    pub namespace: Option<String>,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// The leader-election Lease: its namespace and name.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// How long a Lease is held without renewal before another replica may take it.
    pub lease_duration: Duration,
    /// How often every object is reconciled when nothing changes.
    pub resync: Duration,
    /// Honour the `pot.dev/api-url` annotation (an operator outside the cluster).
    pub allow_api_url_annotation: bool,
    /// Which dataset URLs are downloaded to check a TrainingTask's hashes.
    pub data_check: crate::task::data_check::Fetch,
}

/// A Kubernetes client that counts its requests by method in `metrics`.
pub async fn client(metrics: &Metrics) -> anyhow::Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("finding the cluster (in-cluster service account or kubeconfig)")?;
    let counter = metrics.api_requests.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counter
            .get_or_create(&VerbLabel {
                verb: req.method().as_str().to_string(),
                resource: resource_of(req.uri().path()).to_string(),
            })
            .inc();
        req
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let client = client(&metrics).await?;
    let server = serve(opts.listen, metrics.clone()).await?;

    let lease = LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
        .with_namespace(&opts.lease_namespace)
        .with_identity(&opts.identity)
        .with_duration(opts.lease_duration.as_secs().max(3))
        // Renew halfway to expiry: one slow or failed renewal stays within the renew deadline
        // (`leadership::renew_deadline`, five sixths of the Lease).
        .with_grace((opts.lease_duration.as_secs() / 2).max(1))
        .with_field_manager(crate::apply::FIELD_MANAGER)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut is_leader, lease_task) = lease.watch().await;
    info!(identity = %opts.identity, lease = %opts.lease_name, "waiting to lead");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if *is_leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = is_leader.changed() => changed.context("leader election stopped")?,
            _ = &mut shutdown => {
                info!("stopping before leading");
                drop(is_leader);
                let _ = lease_task.await;
                server.abort();
                return Ok(());
            }
        }
    }
    info!(identity = %opts.identity, "leading: starting the controllers");
    metrics.leader.set(1);
    let mut ctx = Context::new(
        client.clone(),
        metrics.clone(),
        opts.resync,
        opts.allow_api_url_annotation,
    );
    ctx.data_check = opts.data_check;
    let ctx = Arc::new(ctx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut controllers = tokio::spawn(controllers(
        client.clone(),
        opts.namespace.clone(),
        ctx,
        stop_rx,
    ));
    let lost = async {
        loop {
            if is_leader.changed().await.is_err() || !*is_leader.borrow_and_update() {
                return;
            }
        }
    };
    let unconfirmed = crate::leadership::lost(
        Api::namespaced(client.clone(), &opts.lease_namespace),
        opts.lease_name.clone(),
        opts.identity.clone(),
        opts.lease_duration.max(Duration::from_secs(3)),
    );
    let (outcome, graceful) = tokio::select! {
        _ = &mut shutdown => (Ok(()), true),
        _ = lost => (Err(anyhow::anyhow!("lost the leader Lease; exiting so that only the new leader reconciles")), false),
        why = unconfirmed => (Err(anyhow::anyhow!("stepping down: {why}; exiting so that a replica that can reach the API server leads")), false),
    };
    metrics.leader.set(0);
    let _ = stop_tx.send(true);
    if !graceful {
        // Another replica may lead already: nothing more is signed or written from here,
        // not even by a reconcile in flight, and the Lease is not touched.
        controllers.abort();
        server.abort();
        lease_task.abort();
        return outcome;
    }
    // Reconciles in flight finish (the controllers stop taking new ones), then the Lease is
    // released, so a standby takes it at its next try instead of after it expires. The waits
    // add up to less than the chart's 30 s grace period; a reconcile still running then (a
    // slow dataset download) is stopped before the Lease is let go, so no write of this
    // replica can land after another leads.
    if tokio::time::timeout(Duration::from_secs(15), &mut controllers)
        .await
        .is_err()
    {
        warn!("controllers did not stop within 15 s; stopping them");
        controllers.abort();
        let _ = controllers.await;
    }
    drop(is_leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(manager))) => {
            match tokio::time::timeout(Duration::from_secs(5), manager.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("releasing the Lease: {e}"),
                Err(_) => warn!("releasing the Lease: no answer within 5 s"),
            }
        }
        Ok(Ok(Err(e))) => warn!("leader election: {e}"),
        Ok(Err(e)) => warn!("leader election task: {e}"),
        Err(_) => warn!("leader election did not stop within 10 s"),
    }
    server.abort();
    outcome
}

/// Run every controller until `stop` turns true.
async fn controllers(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    stop: watch::Receiver<bool>,
) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=pot-operator");
    let backoff = Arc::new(Backoff::default());
    let networks = Controller::new(
        api::<PotNetwork>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(WatchBackoff::default())
    .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    // The keys and genesis have no owner (they outlive a network): watched by label, so a
    // restored Secret or ConfigMap is seen at once.
    .watches(api::<Secret>(&client, &namespace), owned.clone(), |s| {
        labelled_owner(&s, "pot.dev/network")
    })
    .watches(api::<ConfigMap>(&client, &namespace), owned.clone(), |c| {
        labelled_owner(&c, "pot.dev/network")
    });
    let _ = ctx.networks.set(networks.store());
    let (queue_changed, queue_changes) = futures::channel::mpsc::unbounded();
    let miners = Controller::new(
        api::<Miner>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(WatchBackoff::default())
    .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
    // The keys Secret has no owner (it outlives the fleet): watched by label, so keys handed
    // over to a fleet (or restored) are taken up at once.
    .watches(api::<Secret>(&client, &namespace), owned, |s| {
        labelled_owner(&s, "pot.dev/miner")
    })
    .reconcile_on(queue_changes);
    let tasks = Controller::new(
        api::<TrainingTask>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(WatchBackoff::default());
    let poller = tokio::spawn(queue::poll(
        ctx.clone(),
        miners.store(),
        networks.store(),
        queue_changed,
        stop.clone(),
    ));
    let sweeper = tokio::spawn(forget_deleted(
        ctx.clone(),
        backoff.clone(),
        networks.store(),
        miners.store(),
        tasks.store(),
    ));
    tokio::join!(
        drive(
            networks,
            "potnetwork",
            network::reconcile,
            ctx.clone(),
            backoff.clone(),
            stop.clone()
        ),
        drive(
            miners,
            "miner",
            miner::reconcile,
            ctx.clone(),
            backoff.clone(),
            stop.clone()
        ),
        drive(
            tasks,
            "trainingtask",
            task::reconcile,
            ctx.clone(),
            backoff.clone(),
            stop.clone()
        ),
    );
    poller.abort();
    sweeper.abort();
    info!("controllers stopped");
}

/// Every minute, drop what the operator remembers of objects its watches no longer show
/// ([`Context::forget_deleted`]); only once every watch has listed, so that an empty cache
/// at start-up is not taken for "everything deleted".
async fn forget_deleted(
    ctx: Arc<Context>,
    backoff: Arc<Backoff>,
    networks: Store<PotNetwork>,
    miners: Store<Miner>,
    tasks: Store<TrainingTask>,
) {
    const EVERY: Duration = Duration::from_secs(60);
    if networks.wait_until_ready().await.is_err()
        || miners.wait_until_ready().await.is_err()
        || tasks.wait_until_ready().await.is_err()
    {
        return;
    }
    loop {
        tokio::time::sleep(EVERY).await;
        let mut live = std::collections::HashSet::new();
        let mut add = |kind: &str, objs: Vec<String>| {
            live.extend(objs.into_iter().map(|o| format!("{kind}/{o}")));
        };
        add(
            "potnetwork",
            networks
                .state()
                .iter()
                .map(|o| key_of(o.as_ref()))
                .collect(),
        );
        add(
            "miner",
            miners.state().iter().map(|o| key_of(o.as_ref())).collect(),
        );
        add(
            "trainingtask",
            tasks.state().iter().map(|o| key_of(o.as_ref())).collect(),
        );
        ctx.forget_deleted(&live);
        backoff.retain(&live);
    }
}

/// `Api::all` or the watched namespace's.
fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// How long a failed reconcile waits for its Event to be recorded.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Run one controller until `stop` turns true: every reconcile counted and timed, failures
/// retried with per-object backoff (slowly when a person must act).
async fn drive<K, F, Fut>(
    controller: Controller<K>,
    name: &'static str,
    reconcile: F,
    ctx: Arc<Context>,
    backoff: Arc<Backoff>,
    stop: watch::Receiver<bool>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    use futures::StreamExt;
    let stopped = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let ok_backoff = backoff.clone();
    controller
        .graceful_shutdown_on(stopped)
        .run(
            move |obj, ctx: Arc<Context>| {
                let backoff = ok_backoff.clone();
                let reconcile = reconcile.clone();
                async move {
                    let began = Instant::now();
                    let key = format!("{name}/{}", key_of(obj.as_ref()));
                    let result = reconcile(obj.clone(), ctx.clone()).await;
                    ctx.metrics.reconciled(name, began.elapsed(), result.is_err());
                    match &result {
                        Ok(_) => backoff.succeeded(&key),
                        // `kubectl describe` shows why: what a person must fix at once, an API
                        // error only once it persists (a conflict or a blip retried in a second
                        // is no news, and an Event per retry would load a struggling API
                        // server). Repeats fold into one Event series.
                        Err(e) if matches!(e, Error::Needs { .. }) || backoff.failures(&key) >= 2 => {
                            let event = ctx.event(obj.as_ref(), true, e.reason(), e.to_string());
                            let _ = tokio::time::timeout(EVENT_TIMEOUT, event).await;
                        }
                        Err(_) => {}
                    }
                    result
                }
            },
            move |obj, err, _ctx| {
                let needs_person = matches!(err, Error::Needs { .. });
                let wait = backoff.failed(&format!("{name}/{}", key_of(obj.as_ref())), needs_person);
                warn!(controller = name, object = %key_of(obj.as_ref()), "reconcile failed (retry in {wait:?}): {err}");
                Action::requeue(wait)
            },
            ctx,
        )
        .for_each(|_| std::future::ready(()))
        .await;
}

/// The resource (plural) a Kubernetes API path names: `…/namespaces/<ns>/<resource>/…` or
/// `/api/v1/<resource>`, `/apis/<group>/<version>/<resource>`.
pub fn resource_of(path: &str) -> &str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(i) = parts.iter().position(|p| *p == "namespaces")
        && let Some(r) = parts.get(i + 2)
    {
        return r;
    }
    let at = if parts.first() == Some(&"api") { 2 } else { 3 };
    parts.get(at).copied().unwrap_or("")
}

/// The object (of kind `K`, named by label `label`) that an unowned Secret or ConfigMap of
/// the operator's belongs to: `pot.dev/network` for a network's keys and genesis,
/// `pot.dev/miner` for a fleet's keys.
fn labelled_owner<K, O>(obj: &O, label: &str) -> Option<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()>,
    O: ResourceExt,
{
    let name = obj.labels().get(label)?;
    Some(ObjectRef::new(name).within(&obj.namespace()?))
}

/// Serve `/healthz` (the process is up), `/readyz` (up; a standby replica is ready too, it
/// just does not lead) and `/metrics`.
async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(metrics): State<Metrics>| async move {
                let text = metrics.encode();
                (
                    StatusCode::OK,
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    info!(%listen, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("HTTP server: {e}");
        }
    }))
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("shutting down");
}

#[cfg(test)]
mod tests {
    #[test]
    fn requests_are_counted_by_the_resource_they_name() {
        use super::resource_of;
        assert_eq!(resource_of("/api/v1/namespaces/a/secrets/x"), "secrets");
        assert_eq!(
            resource_of("/apis/coordination.k8s.io/v1/namespaces/a/leases/pot-operator"),
            "leases"
        );
        assert_eq!(
            resource_of("/apis/pot.dev/v1alpha1/potnetworks"),
            "potnetworks"
        );
        assert_eq!(resource_of("/api/v1/pods"), "pods");
    }
}
