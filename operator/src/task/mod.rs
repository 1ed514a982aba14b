//! The `TrainingTask` controller: sign and submit the task with the publisher's key, exactly
//! once; mirror the chain into the status; reveal the eval set when its window opens; mark a
//! task past `activeDeadlineSeconds` as `Expired`.
//!
//! Exactly once: the nonce the submission is signed with is written to the status before the
//! transaction is sent, and the task's id is `H(publisher ‖ nonce)`. A retry (a crash, a lost
//! answer, a new leader) signs the same transaction again, which the chain applies at most
//! once; a nonce that the publisher used for something else (the account moved past it and no
//! task has that id for a while) is replaced by the next one — never once the task was seen
//! on chain. A task on chain counts as this resource's only if its eval commitment opens with
//! this resource's salt: two tasks of one publisher may pick the same nonce, and one moves on.
//! The salt is written to the status with the nonce, before anything is sent (it is no secret
//! from readers of this resource, whose spec names the eval set; it hides the eval set from
//! the chain until the reveal). The chain id and fee come from the network's genesis, not
//! from whichever coordinator answers.
//!
//! Deleting: the chain has no withdrawal. A submitted task stays escrowed until it finalizes
//! (paying the winner, or refunding the publisher when no claim is valid) or fails, and it
//! fails — burning the bounty — if its eval set is never revealed. So the finalizer holds a
//! deleted `TrainingTask` until its eval set is revealed (or the task ended), and only then
//! lets it go; the rest of the task runs on chain without it.

pub mod data_check;
pub mod mirror;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use pot_protocol::api::TaskInfo;
use pot_protocol::client::{Client, ClientError};
use pot_protocol::state::Phase;
use pot_protocol::task::DatasetRef;
use pot_protocol::tx::{Tx, TxBody, eval_commitment, task_id};
use pot_protocol::{Amount, Hash, SecretKey};
use tracing::info;

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
    if deleting && status.submit_nonce.is_none() {
        // Never signed: nothing on chain.
        return Ok(Action::await_change());
    }
    let Some(net) = ctx.network(&ns, &tt.spec.network_ref.name).await? else {
        let msg = format!("PotNetwork {} does not exist", tt.spec.network_ref.name);
        set_problem(tt, &mut status, "NetworkNotFound", &msg);
        write_status(tt, ctx, status).await?;
        return Err(Error::needs("NetworkNotFound", msg));
    };
    let genesis = match crate::network::identity::genesis_of(&net, &ctx.client).await? {
        Some(g) => g,
        None => {
            let msg = "the network has no genesis yet".to_string();
            set_problem(tt, &mut status, "NetworkNotReady", &msg);
            write_status(tt, ctx, status).await?;
            return Ok(Action::requeue(ctx.resync));
        }
    };
    let publisher = match crate::key_secret::read(
        &ctx.client,
        &ns,
        &tt.spec.publisher_key_secret,
        "TrainingTask",
        "PublisherKeyInvalid",
        status.submit_nonce.and(status.publisher.as_deref()),
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
    let signer = Signer {
        key: &publisher,
        chain_id: &genesis.chain_id,
        fee: genesis.params.tx_fee,
    };
    let old_phase = status.phase;
    let expired = tt.spec.active_deadline_seconds.is_some_and(|d| past(tt, d));
    let outcome = step(
        tt,
        ctx,
        &node,
        &signer,
        &url,
        &mut status,
        deleting || expired,
    )
    .await;
    if let Err(message) = &outcome {
        set_problem(tt, &mut status, "ChainUnavailable", message);
    }
    if expired && !matches!(status.phase, TaskPhase::Finalized | TaskPhase::Failed) {
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
    let revealed = status
        .message
        .as_deref()
        .is_some_and(|m| m.contains("eval set revealed"));
    let done = matches!(outcome, Ok(Onchain::Ended | Onchain::Never)) || revealed;
    write_status(tt, ctx, status).await?;
    if deleting {
        return if done {
            Ok(Action::await_change())
        } else {
            Err(Error::needs(
                "WaitingForEvalReveal",
                "deleting waits until the eval set is revealed on chain: without it the task fails and its bounty is burned (remove the finalizer by hand to accept that)",
            ))
        };
    }
    Ok(match outcome {
        Ok(Onchain::Active) => Action::requeue(ACTIVE_RECHECK),
        _ => Action::requeue(ctx.resync.max(ACTIVE_RECHECK)),
    })
}

/// What signs: the publisher's key, with the chain id and fee of the network's genesis.
struct Signer<'a> {
    key: &'a SecretKey,
    chain_id: &'a str,
    fee: Amount,
}

impl Signer<'_> {
    fn sign(&self, nonce: u64, body: TxBody) -> pot_protocol::SignedTx {
        Tx {
            chain_id: self.chain_id.to_string(),
            signer: self.key.address(),
            nonce,
            fee: self.fee,
            body,
        }
        .sign(self.key)
    }
}

/// Where the task stands on chain after a pass.
#[derive(Debug, PartialEq, Eq)]
enum Onchain {
    /// Not ended (or not there yet).
    Active,
    /// Finalized or failed.
    Ended,
    /// It will not be there: impossible, or given up while deleting or expired.
    Never,
}

/// Move the task on: record a nonce and salt, submit, mirror, reveal. `quiet` (deleting or
/// expired): nothing new is submitted. An `Err` when the chain could not be asked.
async fn step(
    tt: &TrainingTask,
    ctx: &Context,
    node: &Client,
    signer: &Signer<'_>,
    url: &str,
    status: &mut TrainingTaskStatus,
    quiet: bool,
) -> std::result::Result<Onchain, String> {
    let me = signer.key.address();
    status.publisher = Some(me.to_hex());
    let eval = spec::dataset(&tt.spec.eval_set)?;
    let (Some(nonce), Some(salt)) = (
        status.submit_nonce,
        status
            .eval_salt
            .as_ref()
            .and_then(|s| s.parse::<Hash>().ok()),
    ) else {
        if quiet || status.phase == TaskPhase::Failed {
            // Failed before anything was signed: its data did not match (the spec is
            // immutable, so it never will).
            return Ok(Onchain::Never);
        }
        // First the nonce and salt (the caller writes them), then the submission on the next
        // pass.
        // Checked once per generation: a pass that fails later (the chain unreachable) does not
        // download the data again.
        let this_generation = |reason: &str| {
            status.conditions.iter().any(|c| {
                c.type_ == "DataVerified"
                    && c.reason == reason
                    && c.observed_generation == tt.meta().generation
            })
        };
        let checked = ["HashesMatch", "NotChecked"]
            .iter()
            .any(|r| this_generation(r));
        if !checked {
            // A download may take minutes: first say so (the caller writes it), then check on
            // the next pass.
            if data_check::downloads(&tt.spec, ctx.data_check) && !this_generation(CHECKING) {
                checking(tt, status);
                return Ok(Onchain::Active);
            }
            if !data_verified(tt, ctx, status).await {
                return Ok(Onchain::Never);
            }
        }
        // The nonce after the check, which may have taken a while.
        let account = account_nonce(node, &me).await?;
        record_nonce(status, &me, account);
        status.eval_salt = Some(Hash(SecretKey::generate().seed()).to_string());
        status.phase = TaskPhase::Pending;
        return Ok(Onchain::Active);
    };
    let id = task_id(&me, nonce);
    let missing_key = format!("trainingtask/{}/nonce-missing/{nonce}", key_of(tt));
    let found = match node.task(&id).await {
        Ok(info) => Some(info),
        Err(ClientError::Api { status: 404, .. }) => None,
        Err(e) => return Err(e.to_string()),
    };
    if let Some(info) = found {
        ctx.forget(&missing_key);
        if info.task.eval_commit != eval_commitment(&eval, &salt) {
            if status.submitted_at.is_some() {
                return Err(format!(
                    "task {id} on chain is not this resource's (its eval commitment differs)"
                ));
            }
            if quiet {
                return Ok(Onchain::Never);
            }
            // Another task of this publisher took the nonce (its salt differs).
            let account = account_nonce(node, &me).await?;
            record_nonce(status, &me, account.max(nonce + 1));
            status.message = Some(format!(
                "nonce {nonce} went to another task of {me}; moving on"
            ));
            return Ok(Onchain::Active);
        }
        status.phase = mirror::phase(&info);
        mirror::mirror(&info, url, status);
        if status.submitted_at.is_none() {
            status.submitted_at = Some(now());
        }
        if matches!(info.phase, Phase::Finalized) && status.finalized_at.is_none() {
            status.finalized_at = Some(now());
        }
        reveal_if_due(node, signer, &eval, &salt, &info, status).await?;
        return Ok(if info.task.is_active() {
            Onchain::Active
        } else {
            Onchain::Ended
        });
    }
    if status.submitted_at.is_some() {
        // Seen on chain before: a node that does not know it now is behind or lying, and the
        // nonce is never given up for it.
        return Err(format!(
            "the network's API does not know task {id}, which was on chain"
        ));
    }
    let missing_long = ctx.held_for(missing_key) >= NONCE_TAKEN_AFTER;
    if quiet {
        // Deleting or expired: send nothing; let go once a sent submission had time to land
        // (or none was ever accepted).
        let never_accepted = status.phase == TaskPhase::Pending;
        return Ok(if never_accepted || missing_long {
            Onchain::Never
        } else {
            Onchain::Active
        });
    }
    let account = account_nonce(node, &me).await?;
    if account > nonce {
        if missing_long {
            // The nonce went to another transaction of this key (the task would exist
            // otherwise): take the next one; the old signature can never apply now.
            record_nonce(status, &me, account);
            status.message = Some(format!(
                "nonce {nonce} was used by another transaction of {me}; will submit with {account}"
            ));
        }
        return Ok(Onchain::Active);
    }
    submit(tt, node, signer, &eval, &salt, nonce, status).await
}

/// The `DataVerified` reason while the task's data is being downloaded.
const CHECKING: &str = "Checking";

/// Say, before it starts, that the task's data is being downloaded to check it.
fn checking(tt: &TrainingTask, status: &mut TrainingTaskStatus) {
    conditions::set_unknown(
        &mut status.conditions,
        Fact {
            type_: "DataVerified",
            holds: false,
            reason: CHECKING,
            message: "downloading the task's data to check its SHA-256 before submitting".into(),
        },
        tt.meta().generation,
        &now(),
    );
    status.message = Some("checking the task's data".into());
}

/// Check the task's data against its hashes before anything is signed (`data_check`), and
/// say so in the `DataVerified` condition; a mismatch fails the task here.
async fn data_verified(tt: &TrainingTask, ctx: &Context, status: &mut TrainingTaskStatus) -> bool {
    let report = data_check::check(&tt.spec, ctx.data_check).await;
    let (holds, reason) = match (report.mismatches.is_empty(), report.unchecked.is_empty()) {
        (false, _) => (false, "HashMismatch"),
        (true, false) => (false, "NotChecked"),
        (true, true) => (true, "HashesMatch"),
    };
    conditions::set(
        &mut status.conditions,
        Fact {
            type_: "DataVerified",
            holds,
            reason,
            message: report.message(),
        },
        tt.meta().generation,
        &now(),
    );
    if report.mismatches.is_empty() {
        return true;
    }
    status.phase = TaskPhase::Failed;
    status.message = Some(report.message());
    false
}

fn record_nonce(status: &mut TrainingTaskStatus, me: &pot_protocol::Address, nonce: u64) {
    status.submit_nonce = Some(nonce);
    status.task_id = Some(task_id(me, nonce).to_string());
    status.message = Some(format!("will submit with nonce {nonce}"));
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
    signer: &Signer<'_>,
    eval: &DatasetRef,
    salt: &Hash,
    nonce: u64,
    status: &mut TrainingTaskStatus,
) -> std::result::Result<Onchain, String> {
    let task = match spec::task_spec(&tt.spec.task) {
        Ok(t) => t,
        Err(e) => {
            status.phase = TaskPhase::Failed;
            status.message = Some(format!("the task cannot go on chain: {e}"));
            return Ok(Onchain::Never);
        }
    };
    let stx = signer.sign(
        nonce,
        TxBody::SubmitTask {
            spec: task,
            bounty: Amount(tt.spec.bounty),
            eval_commit: eval_commitment(eval, salt),
            windows: spec::windows(&tt.spec.windows),
        },
    );
    match node.submit(&stx).await {
        Ok(hash) => {
            status.phase = TaskPhase::Submitted;
            status.message = Some(format!("submitted in transaction {hash}"));
            Ok(Onchain::Active)
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
            Ok(Onchain::Active)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reveal the eval set once the chain's phase is `EvalReveal` and it is not revealed yet.
async fn reveal_if_due(
    node: &Client,
    signer: &Signer<'_>,
    eval: &DatasetRef,
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
    let nonce = account_nonce(node, &signer.key.address()).await?;
    let tx = signer.sign(
        nonce,
        TxBody::RevealEvalSet {
            task: info.id,
            eval_set: eval.clone(),
            salt: *salt,
        },
    );
    node.submit(&tx)
        .await
        .map_err(|e| format!("revealing the eval set: {e}"))?;
    status.message = Some("revealing the eval set".into());
    Ok(())
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
    crate::apply::apply_status(&ctx.client, tt, &status).await?;
    Ok(())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
