//! A task on chain, as a `TrainingTask`'s status shows it (pure): the phase in the resource's
//! terms, the claims with their verdicts, the winner, its model and the payouts, with numbers
//! as people write them.

use pot_protocol::api::TaskInfo;
use pot_protocol::state::{PayoutKind, Phase, TaskStatus};

use crate::crd::task::{ClaimStatus, Payout, TaskPhase, TrainingTaskStatus};

/// The resource's phase for a task at chain phase `phase`.
pub fn phase(info: &TaskInfo) -> TaskPhase {
    match info.phase {
        Phase::Commit if info.task.claims.is_empty() => TaskPhase::Open,
        Phase::Commit | Phase::Reveal => TaskPhase::Training,
        Phase::Finalized => TaskPhase::Finalized,
        Phase::Failed => TaskPhase::Failed,
        _ => TaskPhase::Validating,
    }
}

/// Copy what the chain says about the task into `status` (its phase is set by the caller,
/// which also knows about deadlines). `api` is the network's API, where the model is served.
pub fn mirror(info: &TaskInfo, api: &str, status: &mut TrainingTaskStatus) {
    let task = &info.task;
    let outcome = match &task.status {
        TaskStatus::Finalized(o) => Some(o),
        _ => None,
    };
    status.submitted_height = Some(task.schedule.submitted);
    status.claim_count = task.claims.len() as u32;
    status.claims = task
        .claims
        .iter()
        .map(|(miner, entry)| {
            let judged = outcome.and_then(|o| o.claims.iter().find(|c| c.miner == *miner));
            let (valid, invalid) = match judged {
                Some(c) => (c.valid_reports, c.invalid_reports),
                None => entry.reports.values().fold((0, 0), |(v, i), r| {
                    match r.report.as_ref().map(|r| r.verdict) {
                        Some(pot_protocol::tx::Verdict::Valid) => (v + 1, i),
                        Some(_) => (v, i + 1),
                        None => (v, i),
                    }
                }),
            };
            ClaimStatus {
                miner: miner.to_hex(),
                metric: judged.and_then(|c| c.median_metric).map(|m| m.to_f64()),
                valid_reports: valid,
                invalid_reports: invalid,
                verdict: judged
                    .filter(|c| c.decided)
                    .map(|c| if c.valid { "valid" } else { "invalid" }.to_string()),
            }
        })
        .collect();
    if let Some(o) = outcome {
        status.winner = o.winner.map(|w| w.to_hex());
        status.winner_metric = o.winning_metric.map(|m| m.to_f64());
        let model = o
            .winner
            .and_then(|w| task.claims.get(&w))
            .and_then(|c| c.claim.as_ref())
            .map(|c| c.model_hash);
        status.model_hash = model.map(|h| h.to_string());
        status.model_url = model.map(|h| format!("{api}/v1/artifacts/{h}"));
        status.payouts = o
            .payouts
            .iter()
            .map(|p| Payout {
                address: p.to.to_hex(),
                amount: p.amount.0,
                reason: match p.kind {
                    PayoutKind::Bounty => "winner",
                    PayoutKind::Mint => "mint",
                    PayoutKind::Validation => "validator",
                    PayoutKind::Refund => "refund",
                    PayoutKind::ChallengeWon => "challenge-won",
                    PayoutKind::ChallengeReturned => "challenge-returned",
                    PayoutKind::CommitteeReward => "committee",
                    PayoutKind::DepositReturned => "deposit-returned",
                }
                .to_string(),
            })
            .collect();
    }
    status.message = Some(match &task.status {
        TaskStatus::Active => format!("{:?} on chain; {} claims", info.phase, task.claims.len()),
        TaskStatus::Finalized(o) => match o.winner {
            Some(w) => format!("finalized at height {}: {w} won", o.finalized_at),
            None => format!(
                "finalized at height {} with no valid claim (bounty refunded)",
                o.finalized_at
            ),
        },
        TaskStatus::Failed { reason, at, burned } => {
            format!("failed at height {at}: {reason:?} ({burned} burned)")
        }
    });
}
