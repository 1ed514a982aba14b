//! The client side of `pot-node tx ...`: build a transaction, sign it with a key file, submit it
//! to a node, and wait until it is in a block. The nonce and chain id come from the node.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pot_protocol::api::TxStatus;
use pot_protocol::client::Client;
use pot_protocol::tx::{DatasetRef, TaskSpec, Tx, TxBody, Windows, eval_commitment, task_id};
use pot_protocol::{Amount, Hash, SecretKey, SignedTx};
use serde::{Deserialize, Serialize};

/// A task as a client submits it (YAML): the on-chain spec, the bounty, the eval set it commits
/// to now and reveals later, and the phase windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSubmission {
    pub spec: TaskSpec,
    pub bounty: Amount,
    pub eval_set: DatasetRef,
    pub windows: Windows,
}

impl TaskSubmission {
    pub fn read(path: &Path) -> anyhow::Result<TaskSubmission> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading task submission {}", path.display()))?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("task submission {} is malformed", path.display()))
    }
}

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

    /// Submit a task; returns its id and the secret needed to reveal the eval set.
    pub async fn submit_task(
        &self,
        sub: TaskSubmission,
        wait: Duration,
    ) -> anyhow::Result<(Hash, EvalSecret)> {
        let salt = Hash(SecretKey::generate().seed());
        let body = TxBody::SubmitTask {
            spec: sub.spec,
            bounty: sub.bounty,
            eval_commit: eval_commitment(&sub.eval_set, &salt),
            windows: sub.windows,
        };
        let (stx, nonce) = self.sign(body).await?;
        self.submit_and_wait(&stx, wait).await?;
        let task = task_id(&self.key.address(), nonce);
        Ok((
            task,
            EvalSecret {
                task,
                eval_set: sub.eval_set,
                salt,
            },
        ))
    }
}
