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
    /// all submitted, then each waited for. Duties that fall due together (reveals on several
    /// tasks in one short window) land in one block or two instead of one block each. A
    /// transaction the node refuses stops the rest, which are not sent: their nonces would
    /// wait on one that never comes. One result per body, in order.
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
        let mut submitted = Vec::new();
        let mut refused = None;
        for (i, body) in bodies.into_iter().enumerate() {
            let tx = Tx {
                chain_id: head.chain_id.clone(),
                signer: self.key.address(),
                nonce: account.nonce + i as u64,
                fee: self.fee.unwrap_or(head.tx_fee),
                body,
            };
            match self.client.submit(&tx.sign(&self.key)).await {
                Ok(hash) => submitted.push(hash),
                Err(e) => {
                    refused = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(n);
        for hash in submitted {
            out.push(match self.client.wait_included(&hash, wait).await {
                Ok(TxStatus::Rejected { reason }) => {
                    Err(anyhow::anyhow!("transaction {hash} was rejected: {reason}"))
                }
                Ok(status) => Ok((hash, status)),
                Err(e) => Err(e.into()),
            });
        }
        if let Some(why) = refused {
            out.push(Err(anyhow::anyhow!("refused: {why}")));
        }
        while out.len() < n {
            out.push(Err(anyhow::anyhow!(
                "not sent: an earlier transaction of the batch was refused"
            )));
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
