//! The `TrainingTask` controller: sign and submit the task with the publisher's key, exactly
//! once; mirror the chain into the status; reveal the eval set when its window opens; mark a
//! task past `activeDeadlineSeconds` as `Expired`.
//!
//! Exactly once: the nonce the submission is signed with is written to the status before the
//! transaction is sent, and the task's id is `H(publisher ‖ nonce)`. A retry (a crash, a lost
//! answer, a new leader) signs the same transaction again, which the chain applies at most
//! once; a nonce that the publisher used for something else (the account moved past it and no
//! task has that id) is replaced by the next one. The eval set's salt is kept in a Secret,
//! made before the submission, so the commitment on chain can always be opened.
//!
//! Deleting: the chain has no withdrawal. A submitted task stays escrowed until it finalizes
//! (paying the winner, or refunding the publisher when no claim is valid) or fails, and it
//! fails — burning the bounty — if its eval set is never revealed. So the finalizer holds a
//! deleted `TrainingTask` until its eval set is revealed (or the task ended), and only then
//! lets it go; the rest of the task runs on chain without it.

pub mod mirror;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use pot_protocol::api::TaskInfo;
use pot_protocol::client::{Client, ClientError};
use pot_protocol::state::Phase;
use pot_protocol::tx::{Tx, TxBody, eval_commitment, task_id};
use pot_protocol::{Amount, Hash, SecretKey};
use serde_json::json;
use tracing::info;

use crate::apply::FIELD_MANAGER;
use crate::conditions::{self, Fact};
use crate::context::{Context, NODE_API_TIMEOUT, key_of};
use crate::crd::task::{TaskPhase, TrainingTask, TrainingTaskStatus};
use crate::error::{Error, Result};

pub const FINALIZER: &str = "pot.dev/eval-reveal";
/// How often an active task is looked at (blocks are short; phases move by height).
const ACTIVE_RECHECK: Duration = Duration::from_secs(2);
/// How long a signed task must be missing from a chain whose account nonce moved past it
/// before its nonce is given up.
const NONCE_TAKEN_AFTER: Duration = Duration::from_secs(15);

pub async fn reconcile(tt: Arc<TrainingTask>, ctx: Arc<Context>) -> Result<Action> {
    let ns = tt.namespace().unwrap_or_default();
    let api: Api<TrainingTask> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, tt, |event| async {
        match event {
            Finalizer::Apply(tt) => drive(&tt, &ctx, false).await,
            Finalizer::Cleanup(tt) => drive(&tt, &ctx, true).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::needs("FinalizerFailed", other.to_string()),
    })
}

/// One pass. While `deleting`, succeed (so the finalizer goes) only once nothing is left for
/// this resource to do on chain.
async fn drive(tt: &TrainingTask, ctx: &Context, deleting: bool) -> Result<Action> {
    let ns = tt.namespace().unwrap_or_default();
    let mut status = tt.status.clone().unwrap_or_default();
    if status.submit_nonce.is_none() {
        // The watch's copy may lag the last status write: before a nonce is chosen, the
        // API server's word on whether one was.
        let fresh = Api::<TrainingTask>::namespaced(ctx.client.clone(), &ns)
            .get_status(&tt.name_any())
            .await?;
        status = fresh.status.unwrap_or_default();
    }
    status.observed_generation = tt.meta().generation;
    let Some(net) = ctx.network(&ns, &tt.spec.network_ref.name).await? else {
        if deleting && status.submit_nonce.is_none() {
            return Ok(Action::await_change());
        }
        let msg = format!("PotNetwork {} does not exist", tt.spec.network_ref.name);
        set_problem(tt, &mut status, "NetworkNotFound", &msg);
        write_status(tt, ctx, status).await?;
        return Err(Error::needs("NetworkNotFound", msg));
    };
    if deleting && status.submit_nonce.is_none() {
        // Never sent: nothing on chain.
        return Ok(Action::await_change());
    }
    let publisher = match crate::key_secret::read(
        &ctx.client,
        &ns,
        &tt.spec.publisher_key_secret,
        "PublisherKeyInvalid",
    )
    .await
    {
        Ok(k) => k,
        Err(Error::Needs { reason, message }) => {
            set_problem(tt, &mut status, reason, &message);
            write_status(tt, ctx, status).await?;
            return Err(Error::Needs { reason, message });
        }
        Err(e) => return Err(e),
    };
    let url = ctx.api_url(&net);
    let node = Client::with_timeout(&url, NODE_API_TIMEOUT);
    let salt = eval_salt(tt, ctx).await?;
    let old_phase = status.phase;
    let outcome = step(tt, ctx, &node, &publisher, &salt, &url, &mut status).await;
    if let Err(message) = &outcome {
        set_problem(tt, &mut status, "ChainUnavailable", message);
    }
    if let Some(deadline) = tt.spec.active_deadline_seconds
        && !matches!(status.phase, TaskPhase::Finalized | TaskPhase::Failed)
        && past(tt, deadline)
    {
        status.phase = TaskPhase::Expired;
    }
    if status.phase != old_phase {
        info!(task = %key_of(tt), from = ?old_phase, to = ?status.phase, "task phase");
        ctx.event(
            tt,
            matches!(status.phase, TaskPhase::Failed | TaskPhase::Expired),
            &format!("{:?}", status.phase),
            status.message.clone().unwrap_or_default(),
        )
        .await;
    }
    let ended = matches!(status.phase, TaskPhase::Finalized | TaskPhase::Failed)
        || status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("eval set revealed"));
    write_status(tt, ctx, status).await?;
    if deleting {
        return if ended {
            Ok(Action::await_change())
        } else {
            Err(Error::needs(
                "WaitingForEvalReveal",
                "deleting waits until the eval set is revealed on chain: without it the task fails and its bounty is burned (remove the finalizer by hand to accept that)",
            ))
        };
    }
    Ok(match outcome {
        Ok(true) => Action::requeue(ACTIVE_RECHECK),
        _ => Action::requeue(ctx.resync.max(ACTIVE_RECHECK)),
    })
}

/// Move the task on: record a nonce, submit, mirror, reveal. `Ok(true)` while the task is
/// still active on chain (or not yet there); an `Err` when the chain could not be asked.
async fn step(
    tt: &TrainingTask,
    ctx: &Context,
    node: &Client,
    publisher: &SecretKey,
    salt: &Hash,
    url: &str,
    status: &mut TrainingTaskStatus,
) -> std::result::Result<bool, String> {
    let me = publisher.address();
    status.publisher = Some(me.to_hex());
    let Some(nonce) = status.submit_nonce else {
        // First record the nonce (the caller writes the status), then send on the next pass.
        let account = account_nonce(node, &me).await?;
        status.submit_nonce = Some(account);
        status.task_id = Some(task_id(&me, account).to_string());
        status.phase = TaskPhase::Pending;
        status.message = Some(format!("will submit with nonce {account}"));
        return Ok(true);
    };
    let id = task_id(&me, nonce);
    match node.task(&id).await {
        Ok(info) => {
            status.phase = mirror::phase(&info);
            mirror::mirror(&info, url, status);
            if status.submitted_at.is_none() {
                status.submitted_at = Some(now());
            }
            if matches!(info.phase, Phase::Finalized) && status.finalized_at.is_none() {
                status.finalized_at = Some(now());
            }
            reveal_if_due(tt, node, publisher, salt, &info, status).await?;
            Ok(info.task.is_active())
        }
        Err(ClientError::Api { status: 404, .. }) => {
            let account = account_nonce(node, &me).await?;
            // Nodes behind an API Service may differ by a few blocks: a nonce is only taken
            // for used elsewhere once the account moved past it and the task was missing for
            // a while, so a task that landed on a node ahead is never submitted twice.
            let key = format!("nonce-taken/{}/{nonce}", key_of(tt));
            let since = *ctx
                .status_written
                .lock()
                .expect("status_written lock")
                .entry(key)
                .or_insert_with(std::time::Instant::now);
            if account > nonce && since.elapsed() >= NONCE_TAKEN_AFTER {
                // The nonce went to another transaction of this key (the task would exist
                // otherwise): take the next one; the old signature can never apply now.
                status.submit_nonce = Some(account);
                status.task_id = Some(task_id(&me, account).to_string());
                status.message = Some(format!(
                    "nonce {nonce} was used by another transaction of {me}; will submit with {account}"
                ));
                return Ok(true);
            }
            if account > nonce {
                return Ok(true);
            }
            submit(tt, node, publisher, salt, nonce, status).await
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn account_nonce(
    node: &Client,
    me: &pot_protocol::Address,
) -> std::result::Result<u64, String> {
    match node.account(me).await {
        Ok(a) => Ok(a.nonce),
        Err(ClientError::Api { status: 404, .. }) => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Send the submission signed with `nonce` (the same bytes every time).
async fn submit(
    tt: &TrainingTask,
    node: &Client,
    publisher: &SecretKey,
    salt: &Hash,
    nonce: u64,
    status: &mut TrainingTaskStatus,
) -> std::result::Result<bool, String> {
    let (task, eval) = match (
        spec::task_spec(&tt.spec.task),
        spec::dataset(&tt.spec.eval_set),
    ) {
        (Ok(t), Ok(e)) => (t, e),
        (Err(e), _) | (_, Err(e)) => {
            status.phase = TaskPhase::Failed;
            status.message = Some(format!("the task cannot go on chain: {e}"));
            return Ok(false);
        }
    };
    let head = node.head().await.map_err(|e| e.to_string())?;
    let tx = Tx {
        chain_id: head.chain_id,
        signer: publisher.address(),
        nonce,
        fee: head.tx_fee,
        body: TxBody::SubmitTask {
            spec: task,
            bounty: Amount(tt.spec.bounty),
            eval_commit: eval_commitment(&eval, salt),
            windows: spec::windows(&tt.spec.windows),
        },
    };
    match node.submit(&tx.sign(publisher)).await {
        Ok(hash) => {
            status.phase = TaskPhase::Submitted;
            status.message = Some(format!("submitted in transaction {hash}"));
            Ok(true)
        }
        // Refused as it stands (no funds, a spec the chain's parameters refuse): say why and
        // try again later with the same nonce — funds may arrive.
        Err(
            e @ ClientError::Api {
                status: 400..=499, ..
            },
        ) => {
            status.phase = TaskPhase::Pending;
            status.message = Some(format!("the chain refused the submission: {e}"));
            Ok(true)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reveal the eval set once the chain's phase is `EvalReveal` and it is not revealed yet.
async fn reveal_if_due(
    tt: &TrainingTask,
    node: &Client,
    publisher: &SecretKey,
    salt: &Hash,
    info: &TaskInfo,
    status: &mut TrainingTaskStatus,
) -> std::result::Result<(), String> {
    if info.task.eval_set.is_some() {
        if info.task.is_active() {
            status.message = Some(format!(
                "{:?} on chain; {} claims; eval set revealed",
                info.phase,
                info.task.claims.len()
            ));
        }
        return Ok(());
    }
    if info.phase != Phase::EvalReveal {
        return Ok(());
    }
    let eval = spec::dataset(&tt.spec.eval_set)?;
    let head = node.head().await.map_err(|e| e.to_string())?;
    let nonce = account_nonce(node, &publisher.address()).await?;
    let tx = Tx {
        chain_id: head.chain_id,
        signer: publisher.address(),
        nonce,
        fee: head.tx_fee,
        body: TxBody::RevealEvalSet {
            task: info.id,
            eval_set: eval,
            salt: *salt,
        },
    };
    node.submit(&tx.sign(publisher))
        .await
        .map_err(|e| format!("revealing the eval set: {e}"))?;
    status.message = Some("revealing the eval set".into());
    Ok(())
}

/// The eval set's salt: kept in Secret `<task>-eval-salt` (owned by the task: the finalizer
/// keeps the task, and so the Secret, until the reveal is on chain), made before the first
/// submission.
async fn eval_salt(tt: &TrainingTask, ctx: &Context) -> Result<Hash> {
    let ns = tt.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("{}-eval-salt", tt.name_any());
    let read = |s: &Secret| -> Result<Hash> {
        let text = s
            .data
            .as_ref()
            .and_then(|d| d.get("salt"))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .unwrap_or_default();
        text.parse().map_err(|_| {
            Error::needs(
                "EvalSaltLost",
                format!("Secret {name} has no readable `salt`: restore it, or the eval set cannot be revealed"),
            )
        })
    };
    if let Some(s) = secrets.get_opt(&name).await? {
        return read(&s);
    }
    if tt.status.as_ref().is_some_and(|s| s.submit_nonce.is_some()) {
        return Err(Error::needs(
            "EvalSaltLost",
            format!("Secret {name} is gone after the task was signed; restore it from a backup"),
        ));
    }
    let salt = Hash(SecretKey::generate().seed());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "pot-operator".to_string(),
                    ),
                    ("pot.dev/task".to_string(), tt.name_any()),
                ]
                .into(),
            ),
            owner_references: Some(vec![
                tt.controller_owner_ref(&())
                    .expect("a task read from the API has a uid"),
            ]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [(
                "salt".to_string(),
                ByteString(salt.to_string().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(salt),
        Err(kube::Error::Api(e)) if e.code == 409 => read(&secrets.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

fn past(tt: &TrainingTask, deadline_seconds: i64) -> bool {
    tt.creation_timestamp().is_some_and(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
        age > deadline_seconds
    })
}

fn set_problem(tt: &TrainingTask, status: &mut TrainingTaskStatus, reason: &str, message: &str) {
    status.message = Some(message.to_string());
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Degraded",
            holds: true,
            reason,
            message: message.to_string(),
        },
        tt.meta().generation,
        &now(),
    );
}

/// Write `status` unless it is the stored one.
async fn write_status(
    tt: &TrainingTask,
    ctx: &Context,
    mut status: TrainingTaskStatus,
) -> Result<()> {
    let problem = status.conditions.iter().any(|c| {
        c.type_ == "Degraded" && c.status == "True" && Some(&c.message) == status.message.as_ref()
    });
    if !problem {
        conditions::set(
            &mut status.conditions,
            Fact {
                type_: "Degraded",
                holds: false,
                reason: "AsExpected",
                message: "no problem seen".into(),
            },
            tt.meta().generation,
            &now(),
        );
    }
    let done = matches!(status.phase, TaskPhase::Finalized);
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "Succeeded",
            holds: done,
            reason: if done { "Finalized" } else { "NotFinalized" },
            message: format!("{:?}", status.phase),
        },
        tt.meta().generation,
        &now(),
    );
    if tt.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<TrainingTask> =
        Api::namespaced(ctx.client.clone(), &tt.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "pot.dev/v1alpha1", "kind": "TrainingTask", "status": status});
    api.patch_status(
        &tt.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
