//! What a miner or validator shows: `GET /v1/node/status` (role, height, draining, the tasks in
//! progress), `POST /v1/node/drain` (authenticated with the token from a mounted Secret: the
//! operator scales miners down through it), Prometheus `/metrics`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use pot_protocol::api::{ApiError, NodeStatus as StatusView, TaskWork};
use pot_protocol::tx::TaskId;
use pot_protocol::{Address, Height};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

type Labels = Vec<(String, String)>;

fn task_labels(task: &TaskId) -> Labels {
    vec![("task".to_string(), task.to_string())]
}

/// The node's Prometheus metrics (its own registry: two nodes can run in one process).
#[derive(Default)]
pub struct RoleMetrics {
    registry: Registry,
    height: Gauge,
    draining: Gauge,
    pub training_step: Family<Labels, Gauge>,
    pub training_loss: Family<Labels, Gauge<f64, AtomicU64>>,
    pub training_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    pub claims_revealed: Counter,
    pub reports_revealed: Counter,
    work_seconds: Family<Vec<(String, String)>, Counter<f64, AtomicU64>>,
}

impl RoleMetrics {
    fn new() -> RoleMetrics {
        let mut m = RoleMetrics::default();
        let r = m.registry.sub_registry_with_prefix("pot");
        r.register("height", "Last block this node followed", m.height.clone());
        r.register(
            "draining",
            "1 while the node takes no new task",
            m.draining.clone(),
        );
        r.register(
            "training_step",
            "Step a task's training reached",
            m.training_step.clone(),
        );
        r.register(
            "training_loss",
            "Last batch loss of a task's training",
            m.training_loss.clone(),
        );
        r.register(
            "training_steps_per_second",
            "Training speed of a task since this process started it",
            m.training_rate.clone(),
        );
        r.register(
            "claims_revealed",
            "Claims this miner revealed",
            m.claims_revealed.clone(),
        );
        r.register(
            "reports_revealed",
            "Reports this validator revealed",
            m.reports_revealed.clone(),
        );
        r.register(
            "work_seconds",
            "Seconds spent on each kind of work (training, checkpointing, transfer, replay_sampled, \
             replay_top_q, evaluation)",
            m.work_seconds.clone(),
        );
        m
    }

    fn export(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub struct NodeStatus {
    role: &'static str,
    address: Address,
    height: AtomicU64,
    draining: AtomicBool,
    tasks: Mutex<BTreeMap<TaskId, TaskWork>>,
    work_seconds: Mutex<BTreeMap<&'static str, f64>>,
    pub metrics: RoleMetrics,
}

impl NodeStatus {
    pub fn new(role: &'static str, address: Address) -> NodeStatus {
        NodeStatus {
            role,
            address,
            height: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            tasks: Mutex::default(),
            work_seconds: Mutex::default(),
            metrics: RoleMetrics::new(),
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_height(&self, h: Height) {
        self.height.store(h, Ordering::SeqCst);
        self.metrics.height.set(h as i64);
    }

    pub fn set_work(&self, task: TaskId, work: TaskWork) {
        let labels = task_labels(&task);
        if let TaskWork::Training {
            step,
            loss,
            steps_per_second,
            ..
        } = &work
        {
            self.metrics
                .training_step
                .get_or_create(&labels)
                .set(*step as i64);
            if let Some(l) = loss {
                self.metrics
                    .training_loss
                    .get_or_create(&labels)
                    .set(f64::from(*l));
            }
            if let Some(r) = steps_per_second {
                self.metrics.training_rate.get_or_create(&labels).set(*r);
            }
        } else {
            self.metrics.training_rate.remove(&labels);
        }
        self.tasks.lock().expect("status lock").insert(task, work);
    }

    /// Count `seconds` of work of one kind (where a task's cost goes, for operators and the
    /// cost-split benchmark).
    pub fn add_work_seconds(&self, kind: &'static str, seconds: f64) {
        if !(seconds.is_finite() && seconds > 0.0) {
            return;
        }
        self.metrics
            .work_seconds
            .get_or_create(&vec![("work".to_string(), kind.to_string())])
            .inc_by(seconds);
        *self
            .work_seconds
            .lock()
            .expect("status lock")
            .entry(kind)
            .or_default() += seconds;
    }

    /// Count a verification's time by kind.
    pub fn add_verification(&self, t: &crate::verify::Timings) {
        self.add_work_seconds("transfer", t.transfer);
        self.add_work_seconds("replay_sampled", t.replay_sampled);
        self.add_work_seconds("replay_top_q", t.replay_top_q);
        self.add_work_seconds("evaluation", t.evaluation);
    }

    pub fn remove_work(&self, task: &TaskId) {
        let labels = task_labels(task);
        self.metrics.training_step.remove(&labels);
        self.metrics.training_loss.remove(&labels);
        self.metrics.training_rate.remove(&labels);
        self.tasks.lock().expect("status lock").remove(task);
    }

    pub fn view(&self) -> StatusView {
        StatusView {
            role: self.role.into(),
            address: self.address,
            height: self.height.load(Ordering::SeqCst),
            draining: self.draining(),
            tasks: self.tasks.lock().expect("status lock").clone(),
            work_seconds: self
                .work_seconds
                .lock()
                .expect("status lock")
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

#[derive(Clone)]
struct Shared {
    status: Arc<NodeStatus>,
    drain_token: Option<Arc<str>>,
    tip: watch::Receiver<u64>,
    started: std::time::Instant,
}

/// Serve the node's API on `listen`; returns the address bound (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    status: Arc<NodeStatus>,
    drain_token: Option<String>,
    tip: watch::Receiver<u64>,
) -> anyhow::Result<SocketAddr> {
    let shared = Shared {
        status,
        drain_token: drain_token.map(Arc::from),
        tip,
        started: std::time::Instant::now(),
    };
    let app = Router::new()
        .route("/v1/node/status", get(status_view))
        .route("/v1/node/drain", post(drain).delete(resume))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the node API on {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("node API stopped: {e}");
        }
    });
    Ok(addr)
}

async fn status_view(AxumState(s): AxumState<Shared>) -> Json<StatusView> {
    Json(s.status.view())
}

fn refuse(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    let body = ApiError {
        code: code.into(),
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

/// Start draining (`POST`). The token is compared in constant time; without a configured
/// token the endpoint is off (nobody can drain a node whose operator did not arrange it).
async fn drain(AxumState(s): AxumState<Shared>, headers: HeaderMap) -> axum::response::Response {
    if let Some(refused) = refusal(&s, &headers) {
        return refused;
    }
    if !s.status.draining.swap(true, Ordering::SeqCst) {
        tracing::info!("draining: no new tasks; finishing those in progress");
        s.status.metrics.draining.set(1);
    }
    Json(s.status.view()).into_response()
}

/// Stop draining (`DELETE`): a fleet that grows again before a drained pod was removed takes
/// it back as it is, instead of restarting it.
async fn resume(AxumState(s): AxumState<Shared>, headers: HeaderMap) -> axum::response::Response {
    if let Some(refused) = refusal(&s, &headers) {
        return refused;
    }
    if s.status.draining.swap(false, Ordering::SeqCst) {
        tracing::info!("drain cancelled: taking new tasks again");
        s.status.metrics.draining.set(0);
    }
    Json(s.status.view()).into_response()
}

/// The answer to a request without the node's drain token (`None`: it has it).
fn refusal(s: &Shared, headers: &HeaderMap) -> Option<axum::response::Response> {
    let Some(expected) = &s.drain_token else {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "drain_disabled",
            "this node was started without --drain-token-file",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "a drain request needs `Authorization: Bearer <the node's drain token>`",
        ));
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(AxumState(s): AxumState<Shared>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.status.metrics.export(),
    )
}

/// Ready once this node has followed the chain past genesis (the follower checks every
/// block's certificate on the way): before that it knows no task.
async fn readyz(AxumState(s): AxumState<Shared>) -> axum::response::Response {
    let height = *s.tip.borrow();
    if height > 0 {
        return (StatusCode::OK, format!("following at height {height}\n")).into_response();
    }
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        &format!(
            "has not followed a block yet ({} s after start)",
            s.started.elapsed().as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pot_protocol::SecretKey;
    use pot_protocol::client::{Client, ClientError};

    async fn node(token: Option<&str>) -> (Arc<NodeStatus>, Client) {
        let status = Arc::new(NodeStatus::new("miner", SecretKey::generate().address()));
        let (_tx, tip) = watch::channel(0);
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            status.clone(),
            token.map(String::from),
            tip,
        )
        .await
        .unwrap();
        (status, Client::new(format!("http://{addr}")))
    }

    fn code(e: ClientError) -> Option<String> {
        e.code().map(String::from)
    }

    #[tokio::test]
    async fn only_the_token_drains_and_resumes_a_node() {
        let (status, client) = node(Some("s3cret")).await;
        assert_eq!(
            code(client.drain("guess").await.unwrap_err()).as_deref(),
            Some("bad_token")
        );
        assert_eq!(
            code(client.resume("").await.unwrap_err()).as_deref(),
            Some("bad_token")
        );
        assert!(!status.draining());
        assert!(client.drain("s3cret").await.unwrap().draining);
        assert!(client.node_status().await.unwrap().draining);
        let resumed = client.resume("s3cret").await.unwrap();
        assert!(!resumed.draining && !status.draining());
    }

    #[tokio::test]
    async fn without_a_token_nobody_drains() {
        let (status, client) = node(None).await;
        assert_eq!(
            code(client.drain("").await.unwrap_err()).as_deref(),
            Some("drain_disabled")
        );
        assert!(!status.draining());
    }
}
