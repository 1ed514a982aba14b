//! Disputes, as pure functions of the chain and this node's records: what a verifier
//! (`--verify-reports`) re-checks and challenges, and what a validator seated on a challenge
//! committee votes. A committee member's vote and a verifier's dispute are kept on disk before
//! their commitments are sent, like every other commit–reveal secret.

use std::collections::BTreeMap;

use pot_protocol::state::Task;
use pot_protocol::task::MetricKind;
use pot_protocol::tx::{Dispute, Fact, Report, TaskId, Verdict, challenge_commitment};
use pot_protocol::{Address, Hash, Height, Phase};
use serde::{Deserialize, Serialize};

use crate::verify;

/// A claim a verifier re-checked, and what it found wrong in the reports on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rechecked {
    /// One dispute per report that states a fact the re-check contradicts, with its salt.
    pub disputes: Vec<(Dispute, Hash)>,
}

/// A committee member's vote on one challenge, kept until it is revealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub upheld: bool,
    pub salt: Hash,
}

/// A challenge of task `.0`, by its index `.1`.
pub type ChallengeRef = (TaskId, u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Duty {
    /// Re-check the claim `(task, miner)`: its reports are revealed.
    Recheck(TaskId, Address),
    /// Commit to this dispute.
    Challenge(TaskId, Dispute, Hash),
    /// Reveal the dispute behind this challenge.
    RevealChallenge(ChallengeRef, Dispute, Hash),
    /// Replay the disputed fact of a challenge this node sits on, and vote.
    Judge(ChallengeRef),
    CommitVote(ChallengeRef),
    RevealVote(ChallengeRef),
    /// The task ended: forget what was kept for it.
    Forget(TaskId),
}

/// Whether `me` may challenge reports on `miner`'s claim of `t`: not the client, not a claimant,
/// not a validator of that claim.
fn may_challenge(t: &Task, miner: &Address, me: &Address) -> bool {
    t.client != *me
        && !t.claims.contains_key(me)
        && t.claims
            .get(miner)
            .is_some_and(|c| c.assignment(me).is_none())
}

/// The verifier's duties at `height`.
pub fn verifier_duties(
    me: &Address,
    height: Height,
    tasks: &[&Task],
    rechecked: &BTreeMap<(TaskId, Address), Rechecked>,
) -> Vec<Duty> {
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| t.is_active()) {
        let phase = t.phase(height + 1);
        for (miner, c) in &t.claims {
            if !may_challenge(t, miner, me) {
                continue;
            }
            let key = (t.id, *miner);
            let revealed = c.reports.values().filter(|r| r.report.is_some()).count();
            // Every report that will be revealed is: all of them, or the window has closed.
            let all_in =
                (revealed > 0 && revealed == c.assigned.len() && phase == Phase::ReportReveal)
                    || (revealed > 0 && phase == Phase::Challenge);
            match rechecked.get(&key) {
                None if all_in => out.push(Duty::Recheck(t.id, *miner)),
                Some(r) => {
                    for (dispute, salt) in &r.disputes {
                        let commitment = challenge_commitment(&t.id, me, dispute, salt);
                        let index = t.challenges.iter().position(|c| c.commitment == commitment);
                        match (index, phase) {
                            (None, Phase::Challenge) => {
                                out.push(Duty::Challenge(t.id, *dispute, *salt))
                            }
                            (Some(i), Phase::ChallengeReveal)
                                if t.challenges[i].dispute.is_none() =>
                            {
                                out.push(Duty::RevealChallenge((t.id, i as u32), *dispute, *salt))
                            }
                            _ => {}
                        }
                    }
                }
                None => {}
            }
        }
    }
    for key in rechecked.keys() {
        if !tasks.iter().any(|t| t.id == key.0 && t.is_active()) {
            out.push(Duty::Forget(key.0));
        }
    }
    out
}

/// A committee member's duties at `height`.
pub fn committee_duties(
    me: &Address,
    height: Height,
    tasks: &[&Task],
    votes: &BTreeMap<ChallengeRef, Vote>,
) -> Vec<Duty> {
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| t.is_active()) {
        let phase = t.phase(height + 1);
        for (i, ch) in t.challenges.iter().enumerate() {
            if !ch.committee.iter().any(|s| s.member == *me) || ch.dispute.is_none() {
                continue;
            }
            let key = (t.id, i as u32);
            let on_chain = ch.votes.get(me).map(|v| v.upheld.is_some());
            let duty = match (on_chain, votes.contains_key(&key), phase) {
                (None, false, Phase::Vote) => Some(Duty::Judge(key)),
                (None, true, Phase::Vote) => Some(Duty::CommitVote(key)),
                (Some(false), true, Phase::VoteReveal) => Some(Duty::RevealVote(key)),
                _ => None,
            };
            out.extend(duty);
        }
    }
    for key in votes.keys() {
        if !tasks.iter().any(|t| t.id == key.0 && t.is_active()) {
            out.push(Duty::Forget(key.0));
        }
    }
    out
}

/// The segments a re-check of a claim replays: every one some report states.
pub fn stated_segments(t: &Task, miner: &Address) -> Vec<u32> {
    let mut all: Vec<u32> = t.claims[miner]
        .reports
        .values()
        .filter_map(|r| r.report.as_ref())
        .flat_map(|r| r.segments.iter().map(|s| s.index))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// What a replay found about `fact`: passed or not (`None` when the replay did not reach it).
fn found(fact: Fact, r: &verify::Report) -> Option<bool> {
    match fact {
        Fact::Segment(i) => r.segments.iter().find(|s| s.index == i).map(|s| s.ok),
        Fact::Init => Some(r.init_ok),
        Fact::Final => Some(r.final_ok),
        Fact::Artifacts | Fact::Metric => None,
    }
}

/// The disputes a re-check supports: for each revealed report, the first fact it states that
/// the replay contradicts (one challenge per report: each costs a deposit).
pub fn disputes(t: &Task, miner: &Address, r: &verify::Report) -> Vec<Dispute> {
    let mut out = Vec::new();
    for (validator, entry) in &t.claims[miner].reports {
        let Some(report) = &entry.report else {
            continue;
        };
        if report.verdict == Verdict::Invalid(pot_protocol::tx::InvalidReason::ArtifactsUnavailable)
        {
            continue;
        }
        let facts = std::iter::once(Fact::Init)
            .chain(std::iter::once(Fact::Final))
            .chain(report.segments.iter().map(|s| Fact::Segment(s.index)));
        let wrong = facts.into_iter().find(
            |f| matches!((f.passed_in(report), found(*f, r)), (Some(said), Some(is)) if said != is),
        );
        if let Some(fact) = wrong {
            out.push(Dispute {
                miner: *miner,
                validator: *validator,
                fact,
            });
        }
    }
    out
}

/// A committee vote: upheld when the replay finds the disputed fact other than the report
/// says; for the metric (both as `validator::metric_of` maps them), when the model's metric
/// differs from the reported one by more than one millionth (exact CPU tasks) or a thousandth
/// of it (tasks with a replay tolerance).
pub fn vote(
    fact: Fact,
    report: &Report,
    r: &verify::Report,
    metric: MetricKind,
    exact: bool,
) -> bool {
    match fact {
        Fact::Metric => {
            let is = i128::from(super::validator::metric_of(r, metric).0);
            let said = i128::from(report.metric.0);
            let tol = if exact { 1 } else { (said.abs() / 1000).max(1) };
            (is - said).abs() > tol
        }
        f => match (f.passed_in(report), found(f, r)) {
            (Some(said), Some(is)) => said != is,
            // The replay could not reach the fact: the committed artifacts themselves are
            // broken, and the report's "passed" is not supported.
            (Some(said), None) => said,
            (None, _) => false,
        },
    }
}
