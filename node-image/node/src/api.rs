//! The node's HTTP API (axum): submit transactions, read the chain, tasks and accounts, the
//! queue the operator scales by, Prometheus metrics and health. Bodies are the JSON types of
//! `pot_protocol::api`; every error is `{code, message}` with a 4xx/5xx status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pot_protocol::api::{
    AccountInfo, ApiError, BlockInfo, DecidedBlock, Head, Queue, SubmitTx, SubmitTxs, Submitted,
    SubmittedTxs, TaskInfo, TxStatus, TxVerdict,
};
use pot_protocol::tx::{Role, limits};
use pot_protocol::{Address, Hash, Phase, SignedTx, State};
use serde::Deserialize;
use tower_http::timeout::TimeoutLayer;

use crate::artifacts::net::ArtifactNet;
use crate::artifacts::{BlobStore, wire::MAX_BLOB};
use crate::chain::admission::{Admitter, Unjudged};
use crate::chain::mempool::AdmitError;
use crate::chain::store::StoreError;
use crate::chain::{Admission, Chain};
use crate::consensus::status::EngineStatus;
use crate::metrics::Metrics;

/// Largest request body: one hex-encoded transaction in JSON, with room to spare.
pub const MAX_BODY_BYTES: usize = 2 * limits::MAX_TX_BYTES + 1024;
/// Largest `POST /v1/txs` body: [`SubmitTxs::MAX`] transactions of about 2 KiB each (a
/// transfer is under 200 bytes), or fewer larger ones.
pub const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;
/// `POST /v1/txs` requests read and judged at once at most; more wait (without their bodies
/// read) until one ends or their timeout, so a flood of large batches holds at most this many
/// bodies in memory.
pub const MAX_CONCURRENT_BATCHES: usize = 16;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `GET /v1/artifacts/{hash}` waits for a blob this node must fetch first (the fetch
/// goes on, and a later request finds it stored).
pub const HTTP_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Api {
    pub chain: Arc<Chain>,
    /// Admits submissions in batches (see `chain::admission`).
    pub admitter: Admitter,
    pub metrics: Arc<Metrics>,
    /// What consensus lately did, for `/readyz`.
    pub status: Arc<EngineStatus>,
    /// The blobs this node holds, served at `/v1/artifacts/{sha256}`.
    pub blobs: BlobStore,
    /// The artifact swarm, to fetch a blob the chain names that this node does not hold yet.
    pub artifact_net: Option<ArtifactNet>,
}

/// An error response.
pub struct Error(StatusCode, &'static str, String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.1.to_string(),
            message: self.2,
        };
        let busy = matches!(self.1, "admission_busy" | "sender_full" | "mempool_full");
        let mut response = (self.0, Json(body)).into_response();
        // Busy for now (the admission queue, the mempool, a sender's share of it, which frees
        // up as blocks include transactions): worth a retry soon.
        if busy {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

fn bad_request(code: &'static str, message: impl ToString) -> Error {
    Error(StatusCode::BAD_REQUEST, code, message.to_string())
}

fn not_found(message: impl ToString) -> Error {
    Error(StatusCode::NOT_FOUND, "not_found", message.to_string())
}

fn internal(e: impl ToString) -> Error {
    Error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// Parse a path parameter; a bad one is a 400 with `code`, naming the parameter and why.
fn parse<T>(code: &'static str, what: &str, s: &str) -> Result<T, Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| bad_request(code, format!("{what} {s:?}: {e}")))
}

pub fn router(api: Api) -> Router {
    // Downloads may take longer than any other request: no timeout.
    let downloads = Router::new()
        .route("/v1/artifacts/{hash}", get(artifact))
        .with_state(api.clone());
    let batches = Router::new()
        .route("/v1/txs", post(submit_txs))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_BATCHES,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(api.clone());
    Router::new()
        .route("/v1/tx", post(submit_tx))
        .route("/v1/tx/{hash}", get(tx_status))
        .route("/v1/chain/head", get(head))
        .route("/v1/blocks/{height}", get(block))
        .route("/v1/blocks/{height}/decided", get(decided_block))
        .route("/v1/accounts/{address}", get(account))
        .route("/v1/tasks", get(tasks))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/queue", get(queue))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(api)
        .merge(downloads)
        .merge(batches)
}

/// `GET /v1/artifacts/{sha256}`: a blob this node holds; or, if the chain names it (a task's
/// dataset or eval set, a claimed model) and this node has an artifact swarm, fetched from the
/// peers that hold it first. Blobs nobody on chain named are never fetched for a stranger.
async fn artifact(
    AxumState(api): AxumState<Api>,
    Path(hash): Path<String>,
    Query(q): Query<ArtifactQuery>,
) -> Result<Response, Error> {
    use axum::http::header;
    let blob: Hash = parse("bad_hash", "artifact", &hash)?;
    let task: Option<Hash> = q
        .task
        .as_deref()
        .map(|t| parse("bad_hash", "task id", t))
        .transpose()?;
    if !api.blobs.contains(&blob) {
        let Some(net) = &api.artifact_net else {
            return Err(not_found(format!(
                "artifact {blob} is not held by this node"
            )));
        };
        let named = match task {
            // A task that has ended is looked up by its id (the state holds active ones only).
            Some(id) => any_task_info(&api.chain, id)
                .map_err(internal)?
                .is_some_and(|info| task_names(&info.task, &blob)),
            None => api
                .chain
                .state()
                .tasks
                .values()
                .any(|t| task_names(t, &blob)),
        };
        if !named {
            return Err(not_found(match task {
                Some(id) => format!(
                    "artifact {blob} is not held by this node, and task {id} does not name it"
                ),
                None => format!(
                    "artifact {blob} is not held by this node, and no active task names it \
                     (add ?task=<id> for a task that has ended)"
                ),
            }));
        }
        let fetch = tokio::time::timeout(HTTP_FETCH_TIMEOUT, net.fetch(blob, MAX_BLOB, &[]));
        let fetched = fetch.await.map_err(|_| {
            Error(
                StatusCode::GATEWAY_TIMEOUT,
                "artifact_unavailable",
                format!("fetching artifact {blob} from its holders took too long; try again"),
            )
        })?;
        fetched.map_err(|e| {
            Error(
                StatusCode::BAD_GATEWAY,
                "artifact_unavailable",
                format!("{e:#}"),
            )
        })?;
    }
    let file = tokio::fs::File::open(api.blobs.path(&blob))
        .await
        .map_err(internal)?;
    let len = file.metadata().await.map_err(internal)?.len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, format!("\"{blob}\"")),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
struct ArtifactQuery {
    /// The task that names the blob (needed for one that has ended).
    task: Option<String>,
}

/// Whether task `t` names `blob`: its dataset, its eval set, or a claimed model.
fn task_names(t: &pot_protocol::state::Task, blob: &Hash) -> bool {
    let datasets = t.spec.dataset.blobs().into_iter().chain(
        t.eval_set
            .iter()
            .flat_map(pot_protocol::task::DatasetRef::blobs),
    );
    datasets.map(|b| b.sha256).any(|h| h == *blob)
        || t.claims
            .values()
            .filter_map(|c| c.claim.as_ref())
            .any(|c| c.model_hash == *blob)
}

async fn submit_tx(
    AxumState(api): AxumState<Api>,
    body: Result<Json<SubmitTx>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Submitted>, Error> {
    let Json(body) = body.map_err(|e| bad_request("bad_json", e.body_text()))?;
    let bytes = hex::decode(body.tx.trim())
        .map_err(|e| bad_request("bad_hex", format!("tx is not hex: {e}")))?;
    let stx = SignedTx::decode(&bytes).map_err(|e| bad_request("bad_encoding", e))?;
    // Verifying the signature and replaying it on the pending state is CPU work: done off the
    // async threads, together with whatever else was submitted meanwhile.
    let verdict = api.admitter.submit(stx).await;
    if verdict == Err(Unjudged::Busy) {
        api.metrics.admission_busy(1);
    }
    let hash = judged(verdict)?;
    Ok(Json(Submitted { hash }))
}

/// [`SubmitTxs`] as the node reads it: the first [`SubmitTxs::MAX`] transactions kept, the rest
/// only counted, so that a body of millions of tiny items is refused for what it is
/// (`too_many_txs`) without holding them all in memory first.
#[derive(Deserialize)]
struct IncomingTxs {
    txs: CappedList,
}

/// A JSON list of strings of which at most [`SubmitTxs::MAX`] are kept.
struct CappedList {
    kept: Vec<String>,
    /// Items in the list, kept or not.
    count: usize,
}

impl<'de> Deserialize<'de> for CappedList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Capped;
        impl<'de> serde::de::Visitor<'de> for Capped {
            type Value = CappedList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of hex-encoded transactions")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CappedList, A::Error> {
                let mut list = CappedList {
                    kept: Vec::new(),
                    count: 0,
                };
                loop {
                    let more = if list.kept.len() < SubmitTxs::MAX {
                        seq.next_element::<String>()?.map(|tx| list.kept.push(tx))
                    } else {
                        seq.next_element::<serde::de::IgnoredAny>()?.map(drop)
                    };
                    if more.is_none() {
                        return Ok(list);
                    }
                    list.count += 1;
                }
            }
        }
        d.deserialize_seq(Capped)
    }
}

/// `POST /v1/txs`: each transaction judged as `POST /v1/tx` would judge it alone, all in one
/// request; a malformed one is refused on its own and does not stop the others.
async fn submit_txs(
    AxumState(api): AxumState<Api>,
    body: Result<Json<IncomingTxs>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SubmittedTxs>, Error> {
    let Json(IncomingTxs { txs }) = body.map_err(|e| bad_request("bad_json", e.body_text()))?;
    if txs.count > SubmitTxs::MAX {
        return Err(bad_request(
            "too_many_txs",
            format!(
                "{} transactions in one request (at most {})",
                txs.count,
                SubmitTxs::MAX
            ),
        ));
    }
    let txs = txs.kept;
    // The well-formed ones go to admission; each malformed one keeps its error in its place.
    let mut well_formed = Vec::with_capacity(txs.len());
    let malformed: Vec<Option<Error>> = txs
        .iter()
        .map(|tx| {
            let decoded = hex::decode(tx.trim())
                .map_err(|e| bad_request("bad_hex", format!("tx is not hex: {e}")))
                .and_then(|bytes| {
                    SignedTx::decode(&bytes).map_err(|e| bad_request("bad_encoding", e))
                });
            decoded.map(|stx| well_formed.push(stx)).err()
        })
        .collect();
    api.metrics.batch_request(txs.len());
    let verdicts = api.admitter.submit_many(well_formed).await;
    api.metrics.admission_busy(
        verdicts
            .iter()
            .filter(|v| **v == Err(Unjudged::Busy))
            .count(),
    );
    // Nothing judged (the queue was full, or admission has stopped): the request's own status,
    // so that retries and alerts keyed on it see it.
    if let Some(Err(why)) = verdicts.first()
        && verdicts.iter().all(Result::is_err)
    {
        return Err(unjudged(why.clone()));
    }
    let mut verdicts = verdicts.into_iter();
    let results = malformed
        .into_iter()
        .map(|malformed| {
            let judged = match malformed {
                Some(e) => Err(e),
                None => judged(verdicts.next().expect("one verdict each")),
            };
            match judged {
                Ok(hash) => TxVerdict::Admitted { hash },
                Err(Error(status, code, message)) => TxVerdict::Refused {
                    status: status.as_u16(),
                    error: ApiError {
                        code: code.into(),
                        message,
                    },
                },
            }
        })
        .collect();
    Ok(Json(SubmittedTxs { results }))
}

/// A submission that was never judged, as the API answers it.
fn unjudged(why: Unjudged) -> Error {
    match why {
        busy @ Unjudged::Busy => Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "admission_busy",
            busy.to_string(),
        ),
        stopped @ Unjudged::Stopped => internal(stopped),
    }
}

/// A submission's verdict as the API answers it: its hash, or the error with its status.
/// What was admitted has been passed on by the admission thread already (a retry of a held
/// or decided transaction is not sent around the network again).
fn judged(verdict: Result<Result<Admission, AdmitError>, Unjudged>) -> Result<Hash, Error> {
    let admitted = verdict.map_err(unjudged)?;
    let admission = admitted.map_err(|e| match e {
        AdmitError::Invalid(e) => bad_request("tx_rejected", e),
        taken @ AdmitError::NonceTaken { .. } => bad_request("tx_rejected", taken),
        busy @ AdmitError::SenderFull { .. } => Error(
            StatusCode::TOO_MANY_REQUESTS,
            "sender_full",
            busy.to_string(),
        ),
        full @ AdmitError::Full { .. } => Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "mempool_full",
            full.to_string(),
        ),
    })?;
    Ok(admission.hash())
}

async fn tx_status(
    AxumState(api): AxumState<Api>,
    Path(hash): Path<String>,
) -> Result<Json<TxStatus>, Error> {
    let hash = parse("bad_hash", "transaction hash", &hash)?;
    match api.chain.tx_status(&hash).map_err(internal)? {
        Some(s) => Ok(Json(s)),
        None => Err(not_found(format!(
            "transaction {hash} is unknown to this node"
        ))),
    }
}

async fn head(AxumState(api): AxumState<Api>) -> Json<Head> {
    let snapshot = api.chain.snapshot();
    let state = &snapshot.state;
    Json(Head {
        chain_id: state.chain_id.clone(),
        genesis_hash: api.chain.genesis_hash(),
        height: state.tip.height,
        hash: state.tip.hash,
        time_ms: state.tip.time_ms,
        state_root: snapshot.state_root,
        beacon: state.tip.beacon,
        tx_fee: state.params.tx_fee,
    })
}

async fn block(
    AxumState(api): AxumState<Api>,
    Path(height): Path<String>,
) -> Result<Json<BlockInfo>, Error> {
    let height: u64 = parse("bad_height", "height", &height)?;
    let store = api.chain.store();
    let block = store
        .block(height)
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("no block at height {height}")))?;
    let (round, signers) = store
        .commit_at(height)
        .map_err(internal)?
        .map(|c| (c.round, c.signers()))
        .unwrap_or_default();
    Ok(Json(BlockInfo::new(&block, signers, round)))
}

/// The block and its commit certificate, borsh-encoded as stored, for followers that check
/// the certificate themselves.
async fn decided_block(
    AxumState(api): AxumState<Api>,
    Path(height): Path<String>,
) -> Result<Response, Error> {
    let height: u64 = parse("bad_height", "height", &height)?;
    let store = api.chain.store();
    let missing = || not_found(format!("no block at height {height}"));
    let block = store.block(height).map_err(internal)?.ok_or_else(missing)?;
    let commit = store
        .commit_at(height)
        .map_err(internal)?
        .ok_or_else(missing)?;
    let bytes = pot_protocol::encoding::encode(&DecidedBlock { block, commit });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

async fn account(
    AxumState(api): AxumState<Api>,
    Path(address): Path<String>,
) -> Result<Json<AccountInfo>, Error> {
    let address: Address = parse("bad_address", "address", &address)?;
    let state = api.chain.state();
    let acct = state.account(&address);
    let stake = |role| {
        state
            .stakes
            .get(&(address, role))
            .cloned()
            .unwrap_or_default()
    };
    let (miner, validator) = (stake(Role::Miner), stake(Role::Validator));
    let mut unbonding = miner.unbonding.clone();
    unbonding.extend(validator.unbonding.iter().cloned());
    Ok(Json(AccountInfo {
        address,
        balance: acct.balance,
        nonce: acct.nonce,
        miner_bond: miner.bonded,
        validator_bond: validator.bonded,
        miner_reserved: miner.reserved,
        validator_reserved: validator.reserved,
        unbonding,
        reputation: state.reputation_of(&address),
    }))
}

#[derive(Deserialize)]
struct TaskFilter {
    state: Option<Phase>,
}

fn task_info(state: &State, id: Hash) -> Option<TaskInfo> {
    let task = state.tasks.get(&id)?;
    Some(TaskInfo {
        id,
        phase: task.phase(state.tip.height + 1),
        task: task.clone(),
    })
}

/// An active task from the state, or one that has ended from the store.
fn any_task_info(chain: &Chain, id: Hash) -> Result<Option<TaskInfo>, StoreError> {
    let state = chain.state();
    if let Some(info) = task_info(&state, id) {
        return Ok(Some(info));
    }
    Ok(chain.store().ended_task(&id)?.map(|task| TaskInfo {
        id,
        phase: task.phase(state.tip.height + 1),
        task,
    }))
}

async fn tasks(
    AxumState(api): AxumState<Api>,
    filter: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskInfo>>, Error> {
    // `state` is the only parameter, so a query that does not parse names a bad state (serde
    // lists the valid ones).
    let Query(filter) = filter.map_err(|e| bad_request("bad_state", e.body_text()))?;
    let state = api.chain.state();
    let list = state
        .tasks
        .keys()
        .filter_map(|id| task_info(&state, *id))
        .filter(|t| filter.state.is_none_or(|wanted| t.phase == wanted))
        .collect();
    Ok(Json(list))
}

async fn task(
    AxumState(api): AxumState<Api>,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, Error> {
    let id = parse("bad_hash", "task id", &id)?;
    any_task_info(&api.chain, id)
        .map_err(internal)?
        .map(Json)
        .ok_or_else(|| not_found(format!("no task {id}")))
}

async fn queue(AxumState(api): AxumState<Api>) -> Json<Queue> {
    let state = api.chain.state();
    let next = state.tip.height + 1;
    let mut by_phase = BTreeMap::new();
    let mut open = 0;
    for task in state.tasks.values() {
        *by_phase.entry(task.phase(next)).or_insert(0) += 1;
        if task.is_active() {
            open += 1;
        }
    }
    Json(Queue {
        height: state.tip.height,
        open,
        by_phase,
    })
}

async fn metrics(AxumState(api): AxumState<Api>) -> impl IntoResponse {
    let (txs, bytes) = api.chain.mempool_size();
    api.metrics.mempool(txs, bytes);
    api.metrics.admission_waiting(api.admitter.waiting());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        Metrics::export(),
    )
}

/// Ready when caught up with its peers and deciding blocks, as this node's engine saw it.
async fn readyz(AxumState(api): AxumState<Api>) -> Result<&'static str, Error> {
    let block_time = api.chain.genesis().params.block_time_ms;
    let stale_after = Duration::from_millis((10 * block_time).max(10_000));
    api.status
        .readiness(Instant::now(), stale_after)
        .map_err(|why| Error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why))?;
    if !api.admitter.is_running() {
        return Err(Error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the admission threads have stopped".into(),
        ));
    }
    Ok("ready")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::{Body, Bytes};
    use axum::http::Request;
    use pot_protocol::SecretKey;
    use tower::ServiceExt;

    use super::*;
    use crate::chain::admission::tests::{chain, transfer};

    fn batch_request(body: Body) -> Request<Body> {
        Request::post("/v1/txs")
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    }

    /// The API of a coordinator of `chain` whose files are under `dir`.
    fn api(chain: &Arc<Chain>, dir: &std::path::Path) -> Api {
        Api {
            admitter: Admitter::start(chain.clone(), |_: &SignedTx| {}).unwrap(),
            chain: chain.clone(),
            metrics: Arc::new(Metrics::register()),
            status: Arc::new(EngineStatus::default()),
            blobs: BlobStore::at(dir.join("artifacts")),
            artifact_net: None,
        }
    }

    /// Poll `f` exactly once.
    async fn pending_after_one_poll<F: Future + Unpin>(f: &mut F) -> bool {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx).is_pending())
        })
        .await
    }

    /// Past [`MAX_CONCURRENT_BATCHES`] requests being judged, another batch waits with its body
    /// unread (a flood of large batches cannot hold more bodies than that in memory), and is
    /// judged once one ends.
    #[tokio::test]
    async fn batches_past_the_limit_wait_with_their_bodies_unread() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<SecretKey> = (0..=MAX_CONCURRENT_BATCHES as u8)
            .map(|i| SecretKey::from_seed([i + 1; 32]))
            .collect();
        let chain = chain(dir.path(), &keys);
        let api = api(&chain, dir.path());
        let router = router(api);
        let body_of =
            |k: &SecretKey| serde_json::to_vec(&SubmitTxs::new([&transfer(&chain, k, 0)])).unwrap();
        // Polled once each on this one thread: each holds its place (and waits for its
        // verdict) until it is polled again.
        let mut in_flight = Vec::new();
        for k in &keys[..MAX_CONCURRENT_BATCHES] {
            let mut answer = Box::pin(
                router
                    .clone()
                    .oneshot(batch_request(Body::from(body_of(k)))),
            );
            assert!(pending_after_one_poll(&mut answer).await);
            in_flight.push(answer);
        }
        let read = Arc::new(AtomicBool::new(false));
        let last_body = {
            let (read, bytes) = (read.clone(), body_of(&keys[MAX_CONCURRENT_BATCHES]));
            Body::from_stream(libp2p::futures::stream::once(async move {
                read.store(true, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
            }))
        };
        let mut last = Box::pin(router.clone().oneshot(batch_request(last_body)));
        // However often it is polled while the others hold their places.
        for _ in 0..50 {
            assert!(pending_after_one_poll(&mut last).await);
            tokio::task::yield_now().await;
        }
        assert!(!read.load(Ordering::SeqCst), "read past the limit");
        for answer in in_flight {
            assert_eq!(answer.await.unwrap().status(), StatusCode::OK);
        }
        assert_eq!(last.await.unwrap().status(), StatusCode::OK);
        assert!(read.load(Ordering::SeqCst));
        assert_eq!(chain.mempool_size().0, MAX_CONCURRENT_BATCHES + 1);
    }

    /// A body of more items than a request may hold is refused as `too_many_txs`, naming how
    /// many it had, having kept only the first [`SubmitTxs::MAX`] of them while reading.
    #[tokio::test]
    async fn a_batch_of_too_many_items_is_counted_not_kept() {
        let items = (MAX_BATCH_BODY_BYTES - 16) / 3;
        let body = format!("{{\"txs\":[{}\"\"]}}", "\"\",".repeat(items - 1));
        assert!(body.len() <= MAX_BATCH_BODY_BYTES);
        let IncomingTxs { txs } = serde_json::from_str(&body).unwrap();
        assert_eq!((txs.kept.len(), txs.count), (SubmitTxs::MAX, items));

        let dir = tempfile::tempdir().unwrap();
        let chain = chain(dir.path(), &[SecretKey::from_seed([9; 32])]);
        let api = api(&chain, dir.path());
        let answer = router(api)
            .oneshot(batch_request(Body::from(body)))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        let error: ApiError = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error.code, "too_many_txs");
        assert!(
            error.message.starts_with(&format!("{items} transactions")),
            "{}",
            error.message
        );
    }

    /// A busy answer says when to try again; a refusal, a stopped admission and a node that
    /// is not ready do not.
    #[test]
    fn busy_answers_carry_retry_after() {
        let signer = SecretKey::from_seed([5; 32]).address();
        let answers = [
            (
                unjudged(Unjudged::Busy),
                StatusCode::SERVICE_UNAVAILABLE,
                true,
            ),
            (
                judged(Ok(Err(AdmitError::SenderFull {
                    signer,
                    count: 512,
                    max: 512,
                })))
                .unwrap_err(),
                StatusCode::TOO_MANY_REQUESTS,
                true,
            ),
            (
                judged(Ok(Err(AdmitError::Full { count: 9, bytes: 9 }))).unwrap_err(),
                StatusCode::SERVICE_UNAVAILABLE,
                true,
            ),
            (
                bad_request("tx_rejected", "bad nonce"),
                StatusCode::BAD_REQUEST,
                false,
            ),
            (
                unjudged(Unjudged::Stopped),
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
            ),
            (
                Error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    "behind".into(),
                ),
                StatusCode::SERVICE_UNAVAILABLE,
                false,
            ),
        ];
        for (error, status, busy) in answers {
            let code = error.1;
            let answer = error.into_response();
            assert_eq!(answer.status(), status, "{code}");
            let retry = answer.headers().get(axum::http::header::RETRY_AFTER);
            assert_eq!(retry.is_some(), busy, "{code}: {retry:?}");
        }
    }
}
