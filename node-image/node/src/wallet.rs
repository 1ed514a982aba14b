//! The client side of `pot-node tx ...`: build a transaction, sign it with a key file, submit it
//! to a node, and wait until it is in a block. The nonce and chain id come from the node.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pot_protocol::api::TxStatus;
use pot_protocol::client::Client;
use pot_protocol::tx::{DatasetRef, Tx, TxBody, eval_commitment, task_id};
use pot_protocol::{Amount, Hash, SecretKey, SignedTx};
use serde::{Deserialize, Serialize};

use crate::train::task::TaskFile;

/// What the client must keep to reveal its eval set later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSecret {
    pub task: Hash,
    pub eval_set: DatasetRef,
    pub salt: Hash,
}

pub struct Wallet {
    pub client: Client,
    pub key: SecretKey,
    /// The fee to offer; `None` offers the chain's minimum.
    pub fee: Option<Amount>,
}

impl Wallet {
    /// Sign `body` with the next nonce, submit it, and wait for its block.
    pub async fn send(&self, body: TxBody, wait: Duration) -> anyhow::Result<(Hash, TxStatus)> {
        let (stx, _) = self.sign(body).await?;
        self.submit_and_wait(&stx, wait).await
    }

    /// Send `bodies` in one go: signed with consecutive nonces from the account's next one,
    /// all submitted, then waited for under one deadline. Duties that fall due together
    /// (reveals on several tasks in one short window) land in one block or two instead of one
    /// block each. A body the node refuses (a 4xx: it would not apply) does not use up its
    /// nonce: the next body is signed with it, so one duty that keeps failing never holds up
    /// the others. Anything else (no answer, a 5xx) stops the rest, which are not sent: the
    /// node may hold the transaction, and later nonces would wait on it. One result per body,
    /// in order.
    pub async fn send_all(
        &self,
        bodies: Vec<TxBody>,
        wait: Duration,
    ) -> Vec<anyhow::Result<(Hash, TxStatus)>> {
        let n = bodies.len();
        let fail_all = |e: String| (0..n).map(|_| Err(anyhow::anyhow!("{e}"))).collect();
        let head = match self.client.head().await {
            Ok(h) => h,
            Err(e) => return fail_all(format!("{e:#}")),
        };
        let account = match self.client.account(&self.key.address()).await {
            Ok(a) => a,
            Err(e) => return fail_all(format!("{e:#}")),
        };
        // Per body: the submitted transaction's hash, or why it was not sent.
        let mut sent: Vec<Result<Hash, String>> = Vec::with_capacity(n);
        let mut nonce = account.nonce;
        let mut stopped = false;
        for body in bodies {
            if stopped {
                sent.push(Err(
                    "not sent: the node did not answer for an earlier transaction of the batch"
                        .into(),
                ));
                continue;
            }
            let tx = Tx {
                chain_id: head.chain_id.clone(),
                signer: self.key.address(),
                nonce,
                fee: self.fee.unwrap_or(head.tx_fee),
                body,
            };
            match self.client.submit(&tx.sign(&self.key)).await {
                Ok(hash) => {
                    sent.push(Ok(hash));
                    nonce += 1;
                }
                // Refused: the nonce is free for the next one. Anything else (a timeout, a
                // lost answer) may have been admitted, so nothing more is sent on that nonce.
                Err(e) if e.is_refusal() => {
                    sent.push(Err(format!("refused: {e}")));
                }
                Err(e) => {
                    sent.push(Err(format!("{e:#}")));
                    stopped = true;
                }
            }
        }
        // One deadline for the batch; once one fails to land, the later ones (queued behind its
        // nonce) are looked at once, not waited for.
        let deadline = tokio::time::Instant::now() + wait;
        let mut landed_so_far = true;
        let mut out = Vec::with_capacity(n);
        for s in sent {
            let hash = match s {
                Ok(hash) => hash,
                Err(why) => {
                    out.push(Err(anyhow::anyhow!("{why}")));
                    continue;
                }
            };
            let left = if landed_so_far {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::ZERO
            };
            let result = match self.client.wait_included(&hash, left).await {
                Ok(TxStatus::Rejected { reason }) => {
                    Err(anyhow::anyhow!("transaction {hash} was rejected: {reason}"))
                }
                Ok(status) => Ok((hash, status)),
                Err(e) => Err(e.into()),
            };
            landed_so_far &= result.is_ok();
            out.push(result);
        }
        out
    }

    /// Submit a signed transaction and wait until it is in a block; a rejection is an error.
    async fn submit_and_wait(
        &self,
        stx: &SignedTx,
        wait: Duration,
    ) -> anyhow::Result<(Hash, TxStatus)> {
        let hash = self.client.submit(stx).await?;
        let status = self.client.wait_included(&hash, wait).await?;
        if let TxStatus::Rejected { reason } = &status {
            bail!("transaction {hash} was rejected: {reason}");
        }
        Ok((hash, status))
    }

    /// Sign `body` with the account's next nonce; also returns that nonce.
    pub async fn sign(&self, body: TxBody) -> anyhow::Result<(SignedTx, u64)> {
        let head = self.client.head().await?;
        let account = self.client.account(&self.key.address()).await?;
        let tx = Tx {
            chain_id: head.chain_id,
            signer: self.key.address(),
            nonce: account.nonce,
            fee: self.fee.unwrap_or(head.tx_fee),
            body,
        };
        Ok((tx.sign(&self.key), account.nonce))
    }

    /// Submit the task in `file`; returns its id. The secret needed to reveal the eval set is
    /// written to `secret_out` before the transaction is sent, so that a timeout or a crash
    /// after sending never loses it (an existing file is never overwritten).
    pub async fn submit_task(
        &self,
        file: &TaskFile,
        secret_out: &Path,
        wait: Duration,
    ) -> anyhow::Result<Hash> {
        let (bounty, eval_set, windows) = file.submission()?;
        let salt = Hash(SecretKey::generate().seed());
        let body = TxBody::SubmitTask {
            spec: file.spec.clone(),
            bounty,
            eval_commit: eval_commitment(&eval_set, &salt),
            windows,
        };
        let (stx, nonce) = self.sign(body).await?;
        let task = task_id(&self.key.address(), nonce);
        // A directory keeps each task's secret as `<task id>.json`.
        let secret_out = if secret_out.is_dir() {
            secret_out.join(format!("{task}.json"))
        } else {
            secret_out.to_path_buf()
        };
        let secret_out = secret_out.as_path();
        let secret = EvalSecret {
            task,
            eval_set,
            salt,
        };
        write_new_private(secret_out, &serde_json::to_vec_pretty(&secret)?)?;
        self.submit_and_wait(&stx, wait).await?;
        Ok(task)
    }
}

/// Write `bytes` to a new file `path` readable only by its owner, durably; refuse to replace
/// an existing one (it may be the secret of an earlier task).
fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
