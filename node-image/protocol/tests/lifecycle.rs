//! Whole task life cycles through the ledger: the three-miner scenario with exact payouts, the
//! challenge paths, and the ways a task can end without a winner.

mod common;

use common::*;
use pot_protocol::state::{
    ChallengeResult, FailReason, PayoutKind, Phase, SlashReason, TaskStatus,
};
use pot_protocol::tx::{InvalidReason, Role, TxBody};
use pot_protocol::{Amount, Fixed, Params, Ppm};

const W: u32 = 2;

fn scenario_params() -> Params {
    Params {
        validator_share: Ppm(100_000),
        mint_per_task: Amount(50_000),
        miner_slash: Ppm(100_000),
        validator_slash: Ppm(50_000),
        challenger_reward: Ppm(500_000),
        challenge_deposit: Amount(5_000),
        min_miner_bond: Amount(10_000),
        min_validator_bond: Amount(20_000),
        validators_per_claim: 5,
        segments_per_claim: 3,
        ..Params::default()
    }
}

const MINERS: [&str; 3] = ["honest", "lazy", "copycat"];
const VALIDATORS: [&str; 5] = ["v1", "v2", "v3", "v4", "v5"];

fn scenario_chain(params: Params) -> Chain {
    let mut stakes: Vec<(&str, Role, u64)> =
        MINERS.iter().map(|m| (*m, Role::Miner, 10_000)).collect();
    stakes.extend(VALIDATORS.iter().map(|v| (*v, Role::Validator, 20_000)));
    Chain::new(
        params,
        &[("client", 2_000_000), ("challenger", 10_000)],
        &stakes,
    )
}

/// Submit, commit and reveal the three claims; eval set revealed; returns the task id at the
/// start of the report-commit window.
fn up_to_reports(chain: &mut Chain) -> pot_protocol::Hash {
    let id = chain.submit_task("client", 1_000_000, W);
    let s = chain.task(&id).schedule.clone();
    let honest = claim("honest-run");
    let lazy = claim("lazy-run");
    // The copycat obtained the honest miner's artifacts and claims them as its own.
    let copied = claim("honest-run");
    let claims = [("honest", &honest), ("lazy", &lazy), ("copycat", &copied)];
    chain.all_ok(
        claims
            .iter()
            .map(|(m, c)| (*m, chain.commit_body(&id, m, c)))
            .collect(),
    );
    chain.advance_to(s.commit_end);
    chain.all_ok(
        claims
            .iter()
            .map(|(m, c)| (*m, Chain::reveal_body(&id, m, c)))
            .collect(),
    );
    chain.advance_to(s.reveal_end);
    chain.ok("client", Chain::eval_body(&id));
    assert_eq!(chain.task(&id).phase(chain.height()), Phase::EvalReveal);
    chain.advance_to(s.eval_end);
    id
}

#[test]
fn three_miners_five_validators_exact_payouts() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    let s = chain.task(&id).schedule.clone();

    // Every validator is assigned to every claim (v = 5 of 5; none is a miner or the client).
    for m in MINERS {
        let mut assigned = chain.assigned(&id, m);
        assigned.sort();
        let mut all: Vec<_> = VALIDATORS.iter().map(|v| addr(v)).collect();
        all.sort();
        assert_eq!(assigned, all);
        assert_eq!(chain.segments(&id, m).len(), 3);
    }

    // What each validator finds. v4 is sloppy and passes the lazy claim; v5 commits and vanishes.
    let metrics = [971_200, 970_500, 972_000, 970_800];
    let mut reports = Vec::new();
    for (i, v) in VALIDATORS.iter().enumerate() {
        let honest = valid_report(
            &chain.segments(&id, "honest"),
            *metrics.get(i).unwrap_or(&0),
        );
        let lazy_segs = chain.segments(&id, "lazy");
        let lazy = if *v == "v4" {
            valid_report(&lazy_segs, 990_000)
        } else {
            invalid_report(&lazy_segs, InvalidReason::SegmentMismatch)
        };
        let copy = invalid_report(&chain.segments(&id, "copycat"), InvalidReason::InitMismatch);
        reports.extend([
            (*v, "honest", honest),
            (*v, "lazy", lazy),
            (*v, "copycat", copy),
        ]);
    }
    chain.report_round(&id, &reports, &["v5"]);
    chain.advance_to(s.challenge_end + 1);

    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!("task not finalized: {:?}", chain.task(&id).status);
    };
    print_payout_table(&chain, outcome);

    // The honest miner wins with the conservative median of four accuracies.
    assert_eq!(outcome.winner, Some(addr("honest")));
    assert_eq!(outcome.winning_metric, Some(Fixed(970_800)));
    let valid: Vec<_> = outcome.claims.iter().map(|c| (c.miner, c.valid)).collect();
    assert!(valid.contains(&(addr("honest"), true)));
    assert!(valid.contains(&(addr("lazy"), false)));
    assert!(valid.contains(&(addr("copycat"), false)));

    // Pool = 10% of 1,000,000 = 100,000 over 11 matching reports (v4 missed the lazy one):
    // v1..v3 get 100,000*3/11 = 27,272; v4 gets 100,000*2/11 = 18,181; 3 left over go to the
    // winner, who gets 1,000,000 - 99,997 = 900,003 plus the 50,000 mint.
    assert_eq!(chain.balance("honest"), 950_003);
    for v in ["v1", "v2", "v3"] {
        assert_eq!(chain.balance(v), 27_272, "{v}");
    }
    assert_eq!(chain.balance("v4"), 18_181);
    assert_eq!(chain.balance("v5"), 0);
    assert_eq!(chain.balance("client"), 1_000_000);

    // Slashes: 10% of each bad miner's 10,000; v5 loses 5% once per unrevealed report,
    // compounding: 1,000 + 950 + 902.
    assert_eq!(chain.bonded("lazy", Role::Miner), 9_000);
    assert_eq!(chain.bonded("copycat", Role::Miner), 9_000);
    assert_eq!(chain.bonded("honest", Role::Miner), 10_000);
    assert_eq!(chain.bonded("v5", Role::Validator), 17_148);
    for v in ["v1", "v2", "v3", "v4"] {
        assert_eq!(chain.bonded(v, Role::Validator), 20_000);
    }
    let slashed: Vec<_> = outcome
        .slashes
        .iter()
        .map(|s| (s.who, s.amount.0, s.reason))
        .collect();
    assert_eq!(slashed.iter().map(|s| s.1).sum::<u64>(), 4_852);
    assert!(slashed.contains(&(addr("lazy"), 1_000, SlashReason::InvalidClaim)));
    assert!(slashed.contains(&(addr("copycat"), 1_000, SlashReason::InvalidClaim)));
    assert!(slashed.contains(&(addr("v5"), 902, SlashReason::ReportNotRevealed)));

    assert_eq!(chain.state.supply.minted, Amount(50_000));
    assert_eq!(chain.state.supply.burned, Amount(4_852));
    chain.assert_supply_conserved();

    let rep = |n: &str| chain.state.reputation_of(&addr(n));
    assert_eq!(rep("honest").tasks_won, 1);
    assert_eq!(rep("lazy").claims_rejected, 1);
    assert_eq!(rep("copycat").claims_rejected, 1);
    assert_eq!(rep("v4").reports_against_majority, 1);
    assert_eq!(rep("v1").reports_against_majority, 0);
    assert_eq!(rep("v5").reports_missed, 3);

    // Finalized stays finalized; late transactions are refused.
    let late = chain.try_tx(
        "v5",
        Chain::report_reveal_body(
            &id,
            "v5",
            "honest",
            &reports
                .iter()
                .find(|(v, m, _)| *v == "v5" && *m == "honest")
                .unwrap()
                .2,
        ),
    );
    assert!(matches!(
        late,
        Err(pot_protocol::TxError::WrongPhase {
            actual: Phase::Finalized,
            ..
        })
    ));
}

fn print_payout_table(chain: &Chain, outcome: &pot_protocol::state::Outcome) {
    let name = |a: &pot_protocol::Address| {
        [
            "client",
            "honest",
            "lazy",
            "copycat",
            "v1",
            "v2",
            "v3",
            "v4",
            "v5",
            "challenger",
        ]
        .into_iter()
        .find(|n| addr(n) == *a)
        .unwrap_or("?")
    };
    println!("\nclaims:");
    println!(
        "  {:<8} {:>5} {:>6} {:>8} {:>10}",
        "miner", "valid", "valid#", "invalid#", "median"
    );
    for c in &outcome.claims {
        let median = c
            .median_metric
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<8} {:>5} {:>6} {:>8} {:>10}",
            name(&c.miner),
            c.valid,
            c.valid_reports,
            c.invalid_reports,
            median
        );
    }
    println!("payouts:");
    for p in &outcome.payouts {
        println!("  {:<8} {:>10} {:?}", name(&p.to), p.amount.0, p.kind);
    }
    println!("slashes:");
    for s in &outcome.slashes {
        println!(
            "  {:<8} {:>10} {:?} {:?}",
            name(&s.who),
            s.amount.0,
            s.role,
            s.reason
        );
    }
    println!("balances and bonds after finalization:");
    for n in [
        "client", "honest", "lazy", "copycat", "v1", "v2", "v3", "v4", "v5",
    ] {
        println!(
            "  {:<8} balance {:>9}  miner bond {:>6}  validator bond {:>6}",
            n,
            chain.balance(n),
            chain.bonded(n, Role::Miner),
            chain.bonded(n, Role::Validator)
        );
    }
    println!("supply: {:?}\n", chain.state.supply);
}

/// All reveal honestly except `liar`, who reports honest's first segment as failing.
fn run_reports(chain: &mut Chain, id: &pot_protocol::Hash, liar: Option<&str>, colluders: &[&str]) {
    let s = chain.task(id).schedule.clone();
    let mut all = Vec::new();
    for v in VALIDATORS {
        for m in MINERS {
            let segs = chain.segments(id, m);
            let r = match m {
                "honest" if Some(v) == liar => {
                    invalid_report(&segs, InvalidReason::SegmentMismatch)
                }
                "honest" => valid_report(&segs, 970_000),
                "lazy" if colluders.contains(&v) => valid_report(&segs, 999_000),
                "lazy" => invalid_report(&segs, InvalidReason::SegmentMismatch),
                _ => invalid_report(&segs, InvalidReason::InitMismatch),
            };
            all.push((v, m, r));
        }
    }
    chain.report_round(id, &all, &[]);
    chain.advance_to(s.report_reveal_end);
}

/// Committee members of challenge `i` vote `ok` on the disputed segment.
fn committee_votes(chain: &mut Chain, id: &pot_protocol::Hash, i: u32, ok: bool) {
    let committee = chain.task(id).challenges[i as usize].committee.clone();
    assert!(!committee.is_empty());
    let votes = committee
        .iter()
        .map(|member| {
            let name = VALIDATORS.into_iter().find(|v| addr(v) == *member).unwrap();
            (
                name,
                TxBody::ChallengeVote {
                    task: *id,
                    challenge: i,
                    segment_ok: ok,
                },
            )
        })
        .collect();
    chain.all_ok(votes);
}

#[test]
fn a_lying_validator_loses_a_challenge() {
    let mut params = scenario_params();
    params.validators_per_claim = 3;
    let mut chain = scenario_chain(params.clone());
    let id = up_to_reports(&mut chain);
    // With v = 3 of 5 the liar must be one of honest's assigned validators.
    let liar_addr = chain.assigned(&id, "honest")[0];
    let liar = VALIDATORS
        .into_iter()
        .find(|v| addr(v) == liar_addr)
        .unwrap();
    // Only assigned validators report: rebuild the report set for v = 3.
    let s = chain.task(&id).schedule.clone();
    let mut reveals = Vec::new();
    for m in MINERS {
        let segs = chain.segments(&id, m);
        for v_addr in chain.assigned(&id, m) {
            let v = VALIDATORS.into_iter().find(|v| addr(v) == v_addr).unwrap();
            let r = match m {
                "honest" if v == liar => invalid_report(&segs, InvalidReason::SegmentMismatch),
                "honest" => valid_report(&segs, 970_000),
                "lazy" => invalid_report(&segs, InvalidReason::SegmentMismatch),
                _ => invalid_report(&segs, InvalidReason::InitMismatch),
            };
            reveals.push((v, m, r));
        }
    }
    chain.report_round(&id, &reveals, &[]);
    chain.advance_to(s.report_reveal_end);

    let disputed = chain.segments(&id, "honest")[0];
    let before = chain.bonded(liar, Role::Validator);
    chain.ok(
        "challenger",
        TxBody::Challenge {
            task: id,
            miner: addr("honest"),
            validator: liar_addr,
            segment: disputed,
        },
    );
    assert_eq!(chain.balance("challenger"), 5_000);
    chain.advance_to(s.challenge_end + 1);
    let committee = chain.task(&id).challenges[0].committee.clone();
    assert_eq!(committee.len(), 3);
    assert!(!committee.contains(&liar_addr) && !committee.contains(&addr("honest")));
    committee_votes(&mut chain, &id, 0, true);
    chain.advance_to(s.resolution_end + 1);

    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!("not finalized")
    };
    assert_eq!(outcome.challenges, vec![ChallengeResult::Upheld]);
    assert_eq!(outcome.winner, Some(addr("honest")));
    // 5% of 20,000 = 1,000 slashed; half to the challenger with its deposit back.
    assert_eq!(chain.bonded(liar, Role::Validator), before - 1_000);
    assert_eq!(chain.balance("challenger"), 10_000 + 500);
    // The liar's discarded report earns nothing for the honest claim.
    assert!(
        outcome
            .payouts
            .iter()
            .all(|p| p.to != liar_addr || p.kind == PayoutKind::Validation)
    );
    chain.assert_supply_conserved();
}

#[test]
fn a_wrong_challenge_forfeits_the_deposit() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    run_reports(&mut chain, &id, None, &[]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "honest")[1];
    chain.ok(
        "challenger",
        TxBody::Challenge {
            task: id,
            miner: addr("honest"),
            validator: addr("v2"),
            segment,
        },
    );
    chain.advance_to(s.challenge_end + 1);
    // v = 5 but three are excluded (miner is not a validator; v2 is): committee of 4.
    assert_eq!(chain.task(&id).challenges[0].committee.len(), 4);
    committee_votes(&mut chain, &id, 0, true);
    let v2_before = chain.balance("v2");
    chain.advance_to(s.resolution_end + 1);
    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!()
    };
    assert_eq!(outcome.challenges, vec![ChallengeResult::Rejected]);
    assert_eq!(chain.balance("challenger"), 5_000);
    let forfeit = outcome
        .payouts
        .iter()
        .find(|p| p.kind == PayoutKind::ChallengeForfeit)
        .unwrap();
    assert_eq!((forfeit.to, forfeit.amount), (addr("v2"), Amount(5_000)));
    assert!(chain.balance("v2") >= v2_before + 5_000);
    chain.assert_supply_conserved();
}

#[test]
fn a_challenge_proves_fraud_that_a_colluding_majority_passed() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    // v1..v3 collude to pass the lazy claim (3 of 5 say valid), and it has the best metric.
    run_reports(&mut chain, &id, None, &["v1", "v2", "v3"]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "lazy")[0];
    chain.ok(
        "challenger",
        TxBody::Challenge {
            task: id,
            miner: addr("lazy"),
            validator: addr("v1"),
            segment,
        },
    );
    chain.advance_to(s.challenge_end + 1);
    committee_votes(&mut chain, &id, 0, false);
    chain.advance_to(s.resolution_end + 1);
    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!()
    };
    assert_eq!(outcome.challenges, vec![ChallengeResult::Upheld]);
    let lazy = outcome
        .claims
        .iter()
        .find(|c| c.miner == addr("lazy"))
        .unwrap();
    assert!(lazy.fraud_proven && !lazy.valid);
    assert_eq!(outcome.winner, Some(addr("honest")));
    assert_eq!(chain.bonded("lazy", Role::Miner), 9_000);
    chain.assert_supply_conserved();
}

#[test]
fn a_void_challenge_returns_the_deposit() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    run_reports(&mut chain, &id, None, &[]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "honest")[0];
    chain.ok(
        "challenger",
        TxBody::Challenge {
            task: id,
            miner: addr("honest"),
            validator: addr("v1"),
            segment,
        },
    );
    // Nobody on the committee votes.
    chain.advance_to(s.resolution_end + 1);
    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!()
    };
    assert_eq!(outcome.challenges, vec![ChallengeResult::Void]);
    assert_eq!(chain.balance("challenger"), 10_000);
    chain.assert_supply_conserved();
}

#[test]
fn no_claims_refunds_the_bounty() {
    let mut chain = scenario_chain(scenario_params());
    let id = chain.submit_task("client", 1_000_000, W);
    let s = chain.task(&id).schedule.clone();
    assert_eq!(chain.balance("client"), 1_000_000);
    chain.advance_to(s.reveal_end + 1);
    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!()
    };
    assert_eq!(outcome.winner, None);
    assert_eq!(chain.balance("client"), 2_000_000);
    assert_eq!(chain.state.supply.minted, Amount(0));
    chain.assert_supply_conserved();
}

#[test]
fn no_valid_claim_refunds_the_bounty_and_slashes_the_miners() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    // Every validator finds every claim invalid, including the honest one's (say its
    // artifacts were unreachable).
    let s = chain.task(&id).schedule.clone();
    let mut reveals = Vec::new();
    for v in VALIDATORS {
        for m in MINERS {
            let r = invalid_report(&chain.segments(&id, m), InvalidReason::ArtifactsUnavailable);
            reveals.push((v, m, r));
        }
    }
    chain.report_round(&id, &reveals, &[]);
    chain.advance_to(s.challenge_end + 1);
    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!()
    };
    assert_eq!(outcome.winner, None);
    assert_eq!(chain.balance("client"), 2_000_000);
    for m in MINERS {
        assert_eq!(chain.bonded(m, Role::Miner), 9_000);
    }
    // Validators are not paid from a refunded bounty.
    assert_eq!(chain.balance("v1"), 0);
    chain.assert_supply_conserved();
}

#[test]
fn a_withheld_eval_set_fails_the_task_and_burns_the_bounty() {
    let mut chain = scenario_chain(scenario_params());
    let id = chain.submit_task("client", 1_000_000, W);
    let s = chain.task(&id).schedule.clone();
    let c = claim("honest-run");
    chain.ok("honest", chain.commit_body(&id, "honest", &c));
    chain.advance_to(s.commit_end);
    chain.ok("honest", Chain::reveal_body(&id, "honest", &c));
    chain.advance_to(s.eval_end + 1);
    assert!(matches!(
        chain.task(&id).status,
        TaskStatus::Failed {
            reason: FailReason::EvalSetNotRevealed,
            burned: Amount(1_000_000),
            ..
        }
    ));
    assert_eq!(chain.task(&id).phase(chain.height()), Phase::Failed);
    assert_eq!(chain.balance("client"), 1_000_000);
    assert_eq!(chain.state.supply.burned, Amount(1_000_000));
    chain.assert_supply_conserved();
}

#[test]
fn loss_metric_prefers_the_lower_median_and_ties_go_to_the_earlier_commit() {
    let mut chain = scenario_chain(scenario_params());
    let mut spec = spec();
    spec.metric = pot_protocol::tx::MetricKind::Loss;
    let nonce = chain.state.account(&addr("client")).nonce;
    chain.ok(
        "client",
        TxBody::SubmitTask {
            spec,
            bounty: Amount(1_000_000),
            eval_commit: pot_protocol::tx::eval_commitment(&eval_set().sha256, &eval_salt()),
            windows: windows(W),
        },
    );
    let id = pot_protocol::tx::task_id(&addr("client"), nonce);
    let s = chain.task(&id).schedule.clone();
    // "lazy" commits first, "honest" second, "copycat" third: three distinct honest runs here.
    let runs = [
        ("lazy", claim("a")),
        ("honest", claim("b")),
        ("copycat", claim("c")),
    ];
    for (m, c) in &runs {
        chain.queue(m, chain.commit_body(&id, m, c));
    }
    assert!(chain.block().is_empty());
    chain.advance_to(s.commit_end);
    chain.all_ok(
        runs.iter()
            .map(|(m, c)| (*m, Chain::reveal_body(&id, m, c)))
            .collect(),
    );
    chain.advance_to(s.reveal_end);
    chain.ok("client", Chain::eval_body(&id));
    chain.advance_to(s.eval_end);
    // Losses: lazy and honest tie at 0.2 (medians), copycat is worse at 0.3.
    let loss = |m: &str, i: usize| -> i64 {
        match m {
            "lazy" => [100_000, 200_000, 200_000, 300_000, 900_000][i],
            "honest" => [200_000, 200_000, 200_000, 200_000, 200_000][i],
            _ => 300_000,
        }
    };
    let mut reveals = Vec::new();
    for (i, v) in VALIDATORS.iter().enumerate() {
        for (m, _) in &runs {
            let r = valid_report(&chain.segments(&id, m), loss(m, i));
            reveals.push((*v, *m, r));
        }
    }
    chain.report_round(&id, &reveals, &[]);
    chain.advance_to(s.challenge_end + 1);
    let TaskStatus::Finalized(outcome) = &chain.task(&id).status else {
        panic!()
    };
    assert_eq!(
        outcome.winner,
        Some(addr("lazy")),
        "tie goes to the earlier commitment"
    );
    assert_eq!(outcome.winning_metric, Some(Fixed(200_000)));
    chain.assert_supply_conserved();
}
