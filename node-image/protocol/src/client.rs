//! A typed client for a node's HTTP API: the only module of this crate that does I/O. The CLI,
//! the operator and the tests talk to nodes through it.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{
    AccountInfo, ApiError, BlockInfo, DecidedBlock, Head, NodeStatus, Queue, SubmitTx, SubmitTxs,
    Submitted, SubmittedTxs, TaskInfo, TxStatus, TxVerdict,
};
use crate::crypto::Address;
use crate::hash::Hash;
use crate::state::Phase;
use crate::tx::{SignedTx, TaskId};
use crate::units::Height;

/// Why a call failed: the node said no (with its code and message), or it could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {}: {}", .error.code, .error.message)]
    Api { status: u16, error: ApiError },
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{url} answered with something that does not decode: {error}")]
    Undecodable { url: String, error: String },
    #[error("artifact {blob} arrived with SHA-256 {actual}; it was not used")]
    Corrupt { blob: Hash, actual: Hash },
}

/// The error a node answered with `status` and `body` (its `{code, message}`, or the body as
/// text when it is not one).
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    let error = serde_json::from_slice::<ApiError>(body).unwrap_or_else(|_| ApiError {
        code: "http".into(),
        message: String::from_utf8_lossy(body).into_owned(),
    });
    ClientError::Api {
        status: status.as_u16(),
        error,
    }
}

impl ClientError {
    /// Whether the node said it did not take the submission (a 4xx verdict): its nonce is
    /// free for the next one. A request that timed out (408) may still have been admitted, so
    /// it is not a refusal, and neither is an answer that never came.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ClientError::Api {
                status: 400..=499,
                ..
            }
        ) && !matches!(self, ClientError::Api { status: 408, .. })
    }

    /// The API's error code, when the node answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the node's API address, e.g. `http://127.0.0.1:26657`.
    pub fn new(base: impl Into<String>) -> Client {
        Client::with_timeout(base, Duration::from_secs(30))
    }

    /// A client whose every request gives up after `timeout` (a controller that must not
    /// hang on one unreachable network).
    pub fn with_timeout(base: impl Into<String>, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("a client without TLS options builds");
        Client {
            base: base.into().trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(http);
        }
        let bytes = resp.bytes().await.map_err(http)?;
        Err(api_error(status, &bytes))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(url.clone(), self.http.get(&url)).await
    }

    /// Submit a signed transaction; returns its hash once the node's mempool admitted it.
    pub async fn submit(&self, stx: &SignedTx) -> Result<Hash, ClientError> {
        let url = format!("{}/v1/tx", self.base);
        let req = self.http.post(&url).json(&SubmitTx::new(stx));
        let s: Submitted = self.send(url, req).await?;
        Ok(s.hash)
    }

    /// Submit up to [`SubmitTxs::MAX`] signed transactions in one request, judged in order:
    /// each one's hash or the error `submit` would have returned for it. The outer error is the
    /// request's own (nothing was judged, or its answer never came).
    pub async fn submit_many(
        &self,
        txs: &[SignedTx],
    ) -> Result<Vec<Result<Hash, ClientError>>, ClientError> {
        let url = format!("{}/v1/txs", self.base);
        let req = self.http.post(&url).json(&SubmitTxs::new(txs));
        let answer: SubmittedTxs = self.send(url.clone(), req).await?;
        if answer.results.len() != txs.len() {
            return Err(ClientError::Undecodable {
                url,
                error: format!(
                    "{} verdicts for {} transactions",
                    answer.results.len(),
                    txs.len()
                ),
            });
        }
        Ok(answer
            .results
            .into_iter()
            .map(|v| match v {
                TxVerdict::Admitted { hash } => Ok(hash),
                TxVerdict::Refused { status, error } => Err(ClientError::Api { status, error }),
            })
            .collect())
    }

    pub async fn tx(&self, hash: &Hash) -> Result<TxStatus, ClientError> {
        self.get(&format!("/v1/tx/{hash}")).await
    }

    pub async fn head(&self) -> Result<Head, ClientError> {
        self.get("/v1/chain/head").await
    }

    pub async fn block(&self, height: Height) -> Result<BlockInfo, ClientError> {
        self.get(&format!("/v1/blocks/{height}")).await
    }

    /// The block at `height` with its commit certificate, as stored (borsh). Nothing about it
    /// is believed here: the caller checks the certificate.
    pub async fn decided(&self, height: Height) -> Result<DecidedBlock, ClientError> {
        let url = format!("{}/v1/blocks/{height}/decided", self.base);
        let bytes = self.bytes(&url).await?;
        crate::encoding::decode_limited(&bytes, DecidedBlock::MAX_BYTES).map_err(|e| {
            ClientError::Undecodable {
                url,
                error: e.to_string(),
            }
        })
    }

    /// The body of a successful GET (at most `DecidedBlock::MAX_BYTES` of it is read).
    async fn bytes(&self, url: &str) -> Result<Vec<u8>, ClientError> {
        let http = |source| ClientError::Http {
            url: url.to_string(),
            source,
        };
        let mut resp = self.http.get(url).send().await.map_err(http)?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            body.extend_from_slice(&chunk);
            if body.len() > DecidedBlock::MAX_BYTES {
                return Err(ClientError::Undecodable {
                    url: url.to_string(),
                    error: format!("the answer is over {} bytes", DecidedBlock::MAX_BYTES),
                });
            }
        }
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        Ok(body)
    }

    /// A miner's or validator's own status (`GET /v1/node/status`).
    pub async fn node_status(&self) -> Result<NodeStatus, ClientError> {
        self.get("/v1/node/status").await
    }

    /// Ask a miner to take no new task and finish those it has (`POST /v1/node/drain` with
    /// the node's drain token); returns its status.
    pub async fn drain(&self, token: &str) -> Result<NodeStatus, ClientError> {
        let url = format!("{}/v1/node/drain", self.base);
        let req = self.http.post(&url).bearer_auth(token);
        self.send(url, req).await
    }

    /// Cancel a drain (`DELETE /v1/node/drain`): the node takes new tasks again.
    pub async fn resume(&self, token: &str) -> Result<NodeStatus, ClientError> {
        let url = format!("{}/v1/node/drain", self.base);
        let req = self.http.delete(&url).bearer_auth(token);
        self.send(url, req).await
    }

    pub async fn account(&self, address: &Address) -> Result<AccountInfo, ClientError> {
        self.get(&format!("/v1/accounts/{address}")).await
    }

    /// Tasks, optionally only those in `phase`.
    pub async fn tasks(&self, phase: Option<Phase>) -> Result<Vec<TaskInfo>, ClientError> {
        let url = format!("{}/v1/tasks", self.base);
        let req = self.http.get(&url).query(&[("state", phase)]);
        self.send(url, req).await
    }

    /// The blob with SHA-256 `blob`, checked against it (`GET /v1/artifacts/{blob}`).
    pub async fn artifact(&self, blob: &Hash) -> Result<Vec<u8>, ClientError> {
        self.fetch_artifact(format!("{}/v1/artifacts/{blob}", self.base), blob)
            .await
    }

    /// The blob with SHA-256 `blob` that task `task` names (its dataset, eval set or a claimed
    /// model), checked against it; works for a task that has ended too.
    pub async fn task_artifact(&self, blob: &Hash, task: &TaskId) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}/v1/artifacts/{blob}?task={task}", self.base);
        self.fetch_artifact(url, blob).await
    }

    async fn fetch_artifact(&self, url: String, blob: &Hash) -> Result<Vec<u8>, ClientError> {
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let resp = self.http.get(&url).send().await.map_err(http)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(http)?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let actual = Hash::digest(&bytes);
        if actual != *blob {
            return Err(ClientError::Corrupt {
                blob: *blob,
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    pub async fn task(&self, id: &TaskId) -> Result<TaskInfo, ClientError> {
        self.get(&format!("/v1/tasks/{id}")).await
    }

    pub async fn queue(&self) -> Result<Queue, ClientError> {
        self.get("/v1/queue").await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base);
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let resp = self.http.get(&url).send().await.map_err(http)?;
        resp.text().await.map_err(http)
    }

    /// Poll until the transaction is in a block (or rejected, or `timeout` passes).
    pub async fn wait_included(
        &self,
        hash: &Hash,
        timeout: Duration,
    ) -> Result<TxStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.tx(hash).await {
                Ok(s @ (TxStatus::Included { .. } | TxStatus::Rejected { .. })) => return Ok(s),
                Ok(TxStatus::Pending | TxStatus::Queued { .. }) => {}
                Err(e) if e.code() == Some("not_found") => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout, format!("transaction {hash}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll until the chain is at least at `height`.
    pub async fn wait_height(
        &self,
        height: Height,
        timeout: Duration,
    ) -> Result<Head, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A node that is still starting may not answer yet; only the last error counts.
            let head = self.head().await;
            match head {
                Ok(h) if h.height >= height => return Ok(h),
                _ if tokio::time::Instant::now() < deadline => {}
                Ok(_) => return Err(ClientError::Timeout(timeout, format!("height {height}"))),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> ClientError {
        ClientError::Api {
            status,
            error: ApiError {
                code: "x".into(),
                message: "y".into(),
            },
        }
    }

    /// A timed-out submission may have been admitted: its nonce must not be used again.
    #[test]
    fn only_a_verdict_is_a_refusal() {
        assert!(answered(400).is_refusal());
        assert!(answered(429).is_refusal());
        assert!(!answered(408).is_refusal());
        assert!(!answered(503).is_refusal());
        assert!(!ClientError::Timeout(Duration::from_secs(1), "x".into()).is_refusal());
    }
}
