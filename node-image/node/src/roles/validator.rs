//! The validator's duties, as a pure function of the chain and of the reports this node keeps
//! on disk, and the report it files, as a pure function of what its verification found.
//! Level triggered like the miner's plan: whether a report commitment or reveal landed is read
//! from the chain every time.

use std::collections::BTreeMap;

use pot_protocol::state::Task;
use pot_protocol::task::MetricKind;
use pot_protocol::tx::{InvalidReason, Report, SegmentResult, TaskId, Verdict, limits};
use pot_protocol::units::Fixed;
use pot_protocol::{Address, Amount, Hash, Height, Phase};
use serde::{Deserialize, Serialize};

use crate::verify::{self, Finding};

/// One claim this validator is assigned to.
pub type Assigned = (TaskId, Address);

/// A report this validator made and must be able to reveal: kept on disk before its commitment
/// is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filed {
    pub report: Report,
    pub salt: Hash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duty {
    /// Fetch the claim's artifacts, replay, evaluate: make the report.
    Check(Assigned),
    /// Send the commitment to the report made.
    Commit(Assigned),
    /// Reveal the committed report.
    Reveal(Assigned),
    /// The task ended: the report is no longer needed.
    Forget(Assigned),
}

/// What a node's validator stake looks like on chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidatorStake {
    pub bonded: Amount,
    /// Bonded and not reserved by an assignment or a committee seat.
    pub free: Amount,
    pub balance: Amount,
}

/// The balance a validating node keeps unbonded: fees for its reports, and a miner's claim
/// deposit.
pub fn balance_to_keep(params: &pot_protocol::Params, mines: bool) -> Amount {
    Amount(2 * params.tx_fee.0 + if mines { params.claim_deposit.0 } else { 0 })
}

/// The transaction that keeps `target` bonded ([`bond_top_up`]), or, while draining, unbonds
/// what is free so that no new claim is assigned (what is reserved comes free as its tasks
/// end). `None`: nothing to do, or nothing the balance pays.
pub fn plan_validator_stake(
    stake: &ValidatorStake,
    target: Amount,
    keep: Amount,
    draining: bool,
) -> Option<pot_protocol::tx::TxBody> {
    use pot_protocol::tx::{Role, TxBody};
    if draining {
        return (stake.free > Amount::ZERO).then_some(TxBody::Unbond {
            role: Role::Validator,
            amount: stake.free,
        });
    }
    bond_top_up(stake.bonded, target, stake.balance, keep).map(|amount| TxBody::Bond {
        role: Role::Validator,
        amount,
    })
}

/// The validator bond to add so that `target` stays bonded (a pod's stake, after a slash or at
/// first start): the whole shortfall when the balance pays it and still keeps `keep` (fees, a
/// miner's claim deposit), else nothing — a part would seat this node on no claim and only
/// lock funds a miner on the same key needs.
pub fn bond_top_up(
    bonded: Amount,
    target: Amount,
    balance: Amount,
    keep: Amount,
) -> Option<Amount> {
    let missing = target.0.checked_sub(bonded.0).filter(|m| *m > 0)?;
    (balance.0.saturating_sub(keep.0) >= missing).then_some(Amount(missing))
}

/// What to do at `height` (transactions sent now land at `height + 1` or later).
pub fn duties(
    me: &Address,
    height: Height,
    tasks: &[&Task],
    filed: &BTreeMap<Assigned, Filed>,
) -> Vec<Duty> {
    let next = height + 1;
    let mut out = Vec::new();
    for t in tasks.iter().filter(|t| t.is_active()) {
        let phase = t.phase(next);
        for (miner, c) in &t.claims {
            if c.assignment(me).is_none() {
                continue;
            }
            let key = (t.id, *miner);
            let on_chain = c.reports.get(me).map(|r| r.report.is_some());
            let duty = match (on_chain, filed.contains_key(&key), phase) {
                // The eval set is revealed: the replay can start before the report window.
                (None, false, Phase::EvalReveal | Phase::ReportCommit) if t.eval_set.is_some() => {
                    Some(Duty::Check(key))
                }
                (None, true, Phase::ReportCommit) => Some(Duty::Commit(key)),
                (Some(false), true, Phase::ReportReveal) => Some(Duty::Reveal(key)),
                _ => None,
            };
            out.extend(duty);
        }
    }
    for key in filed.keys() {
        if !tasks.iter().any(|t| t.id == key.0 && t.is_active()) {
            out.push(Duty::Forget(*key));
        }
    }
    out
}

/// The task's metric of a verified model, as the ledger holds it: clamped into what the ledger
/// accepts, and a value that is not a number (a diverged run, a model that did not load) is
/// the worst there is — 0 for accuracy, the largest value for a loss — never the best. Reports
/// and committee votes both use this, so they compare like with like.
pub fn metric_of(found: &verify::Report, kind: MetricKind) -> Fixed {
    let (value, worst) = match kind {
        MetricKind::Accuracy => (found.accuracy, Fixed(0)),
        MetricKind::Loss => (found.loss, Fixed(Fixed::DECIMAL_LIMIT - 1)),
    };
    match value {
        Some(v) if v.is_finite() => {
            Fixed::from_f64(v.clamp(0.0, (Fixed::DECIMAL_LIMIT - 1) as f64 / 1e6))
        }
        _ => worst,
    }
}

/// The report on a claim whose artifacts could not be had (or whose run index does not match
/// the committed root).
pub fn unavailable(assigned_segments: &[u32]) -> Report {
    Report {
        verdict: Verdict::Invalid(InvalidReason::ArtifactsUnavailable),
        metric: Fixed(0),
        init_ok: false,
        final_ok: false,
        segments: assigned_segments
            .iter()
            .map(|&index| SegmentResult { index, ok: false })
            .collect(),
    }
}

/// The report a verification supports: the sampled segments in the chain's order, then the
/// other segments it replayed (the largest updates), each with its result; the verdict follows
/// from those facts (artifacts that could not be had or are not checkpoints of this task come
/// first, since nothing else could be checked).
pub fn report(found: &verify::Report, assigned_segments: &[u32], metric: MetricKind) -> Report {
    let artifacts_bad = found.findings.iter().any(|f| {
        matches!(
            f,
            Finding::Unavailable { .. }
                | Finding::NotCommitted { .. }
                | Finding::NotACheckpoint { .. }
                | Finding::WrongStep { .. }
        )
    });
    if artifacts_bad {
        return unavailable(assigned_segments);
    }
    let replayed = |index: u32| found.segments.iter().find(|s| s.index == index);
    // A sampled segment that was not replayed (the run stopped at an earlier finding) is not
    // reported as failing: nothing showed that it fails.
    let mut segments: Vec<SegmentResult> = assigned_segments
        .iter()
        .map(|&index| SegmentResult {
            index,
            ok: replayed(index).is_none_or(|s| s.ok),
        })
        .collect();
    let mut extra: Vec<SegmentResult> = found
        .segments
        .iter()
        .filter(|s| !assigned_segments.contains(&s.index))
        .map(|s| SegmentResult {
            index: s.index,
            ok: s.ok,
        })
        .collect();
    extra.sort_by_key(|s| s.index);
    extra.dedup_by_key(|s| s.index);
    // Keep the failing ones first if there are too many to report.
    if extra.len() > limits::MAX_EXTRA_SEGMENTS {
        extra.sort_by_key(|s| (s.ok, s.index));
        extra.truncate(limits::MAX_EXTRA_SEGMENTS);
        extra.sort_by_key(|s| s.index);
    }
    segments.extend(extra);
    let verdict = if !found.init_ok {
        Verdict::Invalid(InvalidReason::InitMismatch)
    } else if !found.final_ok {
        Verdict::Invalid(InvalidReason::FinalMismatch)
    } else if segments.iter().any(|s| !s.ok) {
        Verdict::Invalid(InvalidReason::SegmentMismatch)
    } else {
        Verdict::Valid
    };
    let metric = metric_of(found, metric);
    Report {
        verdict,
        metric,
        init_ok: found.init_ok,
        final_ok: found.final_ok,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{SegmentCheck, Selected};

    fn check(index: u32, ok: bool) -> SegmentCheck {
        SegmentCheck {
            index,
            selected: Selected::Sampled,
            ok,
            worst: None,
            parameters: 0.0,
            optimizer: 0.0,
        }
    }

    fn found(segments: Vec<SegmentCheck>) -> verify::Report {
        verify::Report {
            init_ok: true,
            final_ok: true,
            segments,
            update_norms: Vec::new(),
            accuracy: Some(0.97),
            loss: Some(0.1),
            findings: Vec::new(),
            valid: true,
            timings: Default::default(),
        }
    }

    #[test]
    fn a_failing_largest_update_segment_outside_the_sample_makes_the_report_invalid() {
        let f = found(vec![check(2, true), check(5, true), check(9, false)]);
        let r = report(&f, &[2, 5], MetricKind::Accuracy);
        assert_eq!(r.verdict, Verdict::Invalid(InvalidReason::SegmentMismatch));
        let indices: Vec<u32> = r.segments.iter().map(|s| s.index).collect();
        assert_eq!(indices, [2, 5, 9]);
        assert!(r.is_consistent());
        assert_eq!(r.metric, Fixed::from_f64(0.97));
    }

    #[test]
    fn an_honest_run_is_valid_with_the_task_metric() {
        let f = found(vec![check(1, true), check(3, true)]);
        let r = report(&f, &[3, 1], MetricKind::Loss);
        assert_eq!(r.verdict, Verdict::Valid);
        // The chain's order of the sampled segments is kept.
        assert_eq!(r.segments[0].index, 3);
        assert_eq!(r.metric, Fixed::from_f64(0.1));
        assert!(r.is_consistent());
    }

    #[test]
    fn the_validator_bond_is_topped_up_whole_or_not_at_all() {
        let a = Amount;
        // Nothing bonded yet: the whole target, paid from the balance.
        assert_eq!(bond_top_up(a(0), a(5000), a(9000), a(100)), Some(a(5000)));
        // After a slash: only the shortfall.
        assert_eq!(
            bond_top_up(a(3500), a(5000), a(9000), a(100)),
            Some(a(1500))
        );
        // Enough bonded (or more, bonded at genesis): nothing.
        assert_eq!(bond_top_up(a(5000), a(5000), a(9000), a(100)), None);
        assert_eq!(bond_top_up(a(8000), a(5000), a(9000), a(100)), None);
        // The balance pays the shortfall only with what it must keep: nothing, not a part.
        assert_eq!(bond_top_up(a(0), a(5000), a(5099), a(100)), None);
        assert_eq!(bond_top_up(a(0), a(5000), a(5100), a(100)), Some(a(5000)));
        assert_eq!(bond_top_up(a(0), a(5000), a(50), a(100)), None);
    }

    #[test]
    fn a_draining_validator_unbonds_what_is_free_and_bonds_nothing() {
        use pot_protocol::tx::{Role, TxBody};
        let a = Amount;
        let stake = |bonded, free, balance| ValidatorStake {
            bonded: a(bonded),
            free: a(free),
            balance: a(balance),
        };
        // Validating: the shortfall is bonded.
        assert_eq!(
            plan_validator_stake(&stake(4000, 4000, 9000), a(5000), a(100), false),
            Some(TxBody::Bond {
                role: Role::Validator,
                amount: a(1000)
            })
        );
        // Draining: the free part is unbonded, however short of the target it is, and the
        // reserved part stays until its tasks end.
        assert_eq!(
            plan_validator_stake(&stake(4000, 1500, 9000), a(5000), a(100), true),
            Some(TxBody::Unbond {
                role: Role::Validator,
                amount: a(1500)
            })
        );
        assert_eq!(
            plan_validator_stake(&stake(2500, 0, 9000), a(5000), a(100), true),
            None
        );
        // A miner keeps its claim deposit out of the validator bond.
        let p = pot_protocol::Params::default();
        assert_eq!(
            balance_to_keep(&p, true).0,
            2 * p.tx_fee.0 + p.claim_deposit.0
        );
        assert_eq!(balance_to_keep(&p, false).0, 2 * p.tx_fee.0);
    }

    #[test]
    fn a_loss_that_is_not_a_number_is_the_worst_loss_not_the_best() {
        let mut f = found(vec![check(1, true)]);
        for bad in [f64::NAN, f64::INFINITY] {
            f.loss = Some(bad);
            assert_eq!(
                metric_of(&f, MetricKind::Loss),
                Fixed(Fixed::DECIMAL_LIMIT - 1)
            );
        }
        f.loss = Some(1e300);
        assert_eq!(
            metric_of(&f, MetricKind::Loss),
            Fixed(Fixed::DECIMAL_LIMIT - 1)
        );
        f.accuracy = None;
        assert_eq!(metric_of(&f, MetricKind::Accuracy), Fixed(0));
    }

    #[test]
    fn artifacts_that_are_not_checkpoints_are_reported_unavailable() {
        let mut f = found(vec![]);
        f.findings.push(Finding::NotACheckpoint {
            checkpoint: 3,
            why: "garbage".into(),
        });
        let r = report(&f, &[0, 4], MetricKind::Accuracy);
        assert_eq!(
            r.verdict,
            Verdict::Invalid(InvalidReason::ArtifactsUnavailable)
        );
        assert!(r.is_consistent());
    }
}
