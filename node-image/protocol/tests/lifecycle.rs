//! Whole task life cycles through the ledger: the three-miner scenario with exact payouts, the
//! challenge paths, and the ways a task can end without a winner.

mod common;

use common::*;
use pot_protocol::state::{
    ChallengeResult, FailReason, PayoutKind, Phase, SlashReason, TaskStatus,
};
use pot_protocol::tx::{Dispute, Fact, InvalidReason, Role, TxBody};
use pot_protocol::{Amount, Fixed, Params, Ppm};

const W: u32 = 2;

/// Fees are zero here so that the payout arithmetic is about the task alone; `economics.rs`
/// runs the default parameters, fees included.
fn scenario_params() -> Params {
    Params {
        tx_fee: Amount(0),
        task_burn: Ppm(50_000),
        mint_rate: Ppm(50_000),
        validator_share: Ppm(100_000),
        validator_slash: Ppm(50_000),
        challenger_reward: Ppm(500_000),
        challenge_deposit: Amount(5_000),
        claim_deposit: Amount(1_000),
        min_miner_bond: Amount(10_000),
        min_validator_bond: Amount(20_000),
        validators_per_claim: 5,
        segments_per_claim: 3,
        ..Params::default()
    }
}

const BOUNTY: u64 = 100_000;
/// Miner collateral per claim: the bounty. Validator collateral per assignment: the bounty
/// over the quorum of 3, rounded up.
const MINER_STAKE: u64 = 150_000;
const VALIDATOR_STAKE: u64 = 120_000;
const V_COLLATERAL: u64 = 33_334;

const MINERS: [&str; 3] = ["honest", "lazy", "copycat"];
const VALIDATORS: [&str; 5] = ["v1", "v2", "v3", "v4", "v5"];

fn scenario_chain(params: Params) -> Chain {
    let mut stakes: Vec<(&str, Role, u64)> = MINERS
        .iter()
        .map(|m| (*m, Role::Miner, MINER_STAKE))
        .collect();
    stakes.extend(
        VALIDATORS
            .iter()
            .map(|v| (*v, Role::Validator, VALIDATOR_STAKE)),
    );
    Chain::new(
        params,
        &[
            ("client", 2_000_000),
            ("challenger", 10_000),
            ("j1", VALIDATOR_STAKE),
            ("j2", VALIDATOR_STAKE),
            ("j3", VALIDATOR_STAKE),
            ("j4", VALIDATOR_STAKE),
            ("j5", VALIDATOR_STAKE),
            ("honest", 10_000),
            ("lazy", 10_000),
            ("copycat", 10_000),
        ],
        &stakes,
    )
}

/// Submit, commit and reveal the three claims; eval set revealed; returns the task id at the
/// start of the report-commit window.
fn up_to_reports(chain: &mut Chain) -> pot_protocol::Hash {
    let id = chain.submit_task("client", BOUNTY, W);
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

    // Every validator is assigned to every claim (v = 5 of 5; none is a miner or the client),
    // each with its own segments and 33,334 of its stake reserved per claim.
    for m in MINERS {
        let mut all: Vec<_> = VALIDATORS.iter().map(|v| addr(v)).collect();
        all.sort();
        assert_eq!(chain.assigned(&id, m), all);
        for v in VALIDATORS {
            assert_eq!(chain.segments(&id, v, m).len(), 3);
        }
    }
    for v in VALIDATORS {
        assert_eq!(
            chain.state.free_stake(&addr(v), Role::Validator).0,
            VALIDATOR_STAKE - 3 * V_COLLATERAL
        );
    }

    // What each validator finds. v4 is sloppy and passes the lazy claim; v5 commits and vanishes.
    let metrics = [971_200, 970_500, 972_000, 970_800];
    let mut reports = Vec::new();
    for (i, v) in VALIDATORS.iter().enumerate() {
        let honest = valid_report(
            &chain.segments(&id, v, "honest"),
            *metrics.get(i).unwrap_or(&0),
        );
        let lazy_segs = chain.segments(&id, v, "lazy");
        let lazy = if *v == "v4" {
            valid_report(&lazy_segs, 990_000)
        } else {
            invalid_report(&lazy_segs, InvalidReason::SegmentMismatch)
        };
        let copy = invalid_report(
            &chain.segments(&id, v, "copycat"),
            InvalidReason::InitMismatch,
        );
        reports.extend([
            (*v, "honest", honest),
            (*v, "lazy", lazy),
            (*v, "copycat", copy),
        ]);
    }
    chain.report_round(&id, &reports, &["v5"]);
    chain.advance_to(s.challenge_end + 1);

    let outcome = chain.outcome(&id).clone();
    print_payout_table(&chain, &outcome);

    // The honest miner wins with the conservative median of four accuracies.
    assert_eq!(outcome.winner, Some(addr("honest")));
    assert_eq!(outcome.winning_metric, Some(Fixed(970_800)));
    let judged: Vec<_> = outcome
        .claims
        .iter()
        .map(|c| (c.miner, c.decided, c.valid))
        .collect();
    assert!(judged.contains(&(addr("honest"), true, true)));
    assert!(judged.contains(&(addr("lazy"), true, false)));
    assert!(judged.contains(&(addr("copycat"), true, false)));

    // Pool = 10% of 100,000 = 10,000 over 11 matching reports (v4 missed the lazy one):
    // v1..v3 get 10,000*3/11 = 2,727; v4 gets 10,000*2/11 = 1,818; the winner gets the other
    // 90,001, the 5% mint (5,000) and its claim deposit back.
    assert_eq!(chain.balance("honest"), 10_000 + 90_001 + 5_000);
    for v in ["v1", "v2", "v3"] {
        assert_eq!(chain.balance(v), 2_727, "{v}");
    }
    assert_eq!(chain.balance("v4"), 1_818);
    assert_eq!(chain.balance("v5"), 0);
    // The client paid the bounty and the 5% burn.
    assert_eq!(chain.balance("client"), 2_000_000 - BOUNTY - 5_000);
    // Revealed claims get their deposits back, even invalid ones.
    assert_eq!(chain.balance("lazy"), 10_000);

    // Slashes: each invalid claim loses its whole collateral (the bounty); v5 loses 5% of each
    // of its three assignments' collateral (1,666 each).
    assert_eq!(chain.bonded("lazy", Role::Miner), MINER_STAKE - BOUNTY);
    assert_eq!(chain.bonded("copycat", Role::Miner), MINER_STAKE - BOUNTY);
    assert_eq!(chain.bonded("honest", Role::Miner), MINER_STAKE);
    assert_eq!(
        chain.bonded("v5", Role::Validator),
        VALIDATOR_STAKE - 3 * 1_666
    );
    for v in ["v1", "v2", "v3", "v4"] {
        assert_eq!(chain.bonded(v, Role::Validator), VALIDATOR_STAKE);
    }
    // Every reservation is released.
    for stake in chain.state.stakes.values() {
        assert_eq!(stake.reserved, Amount::ZERO);
    }
    let slashed: Vec<_> = outcome
        .slashes
        .iter()
        .map(|s| (s.who, s.amount.0, s.reason))
        .collect();
    assert_eq!(slashed.len(), 5, "{slashed:?}");
    assert!(slashed.contains(&(addr("lazy"), BOUNTY, SlashReason::InvalidClaim)));
    assert!(slashed.contains(&(addr("copycat"), BOUNTY, SlashReason::InvalidClaim)));
    assert_eq!(
        slashed
            .iter()
            .filter(|s| *s == &(addr("v5"), 1_666, SlashReason::ReportNotRevealed))
            .count(),
        3
    );

    assert_eq!(chain.state.supply.minted, Amount(5_000));
    assert_eq!(
        chain.state.supply.burned,
        Amount(5_000 + 2 * BOUNTY + 3 * 1_666)
    );
    assert_eq!(outcome.minted, Amount(5_000));
    assert_eq!(outcome.burned, Amount(2 * BOUNTY + 3 * 1_666));
    chain.assert_supply_conserved();

    let rep = |n: &str| chain.state.reputation_of(&addr(n));
    assert_eq!(rep("honest").tasks_won, 1);
    assert_eq!(rep("lazy").claims_rejected, 1);
    assert_eq!(rep("copycat").claims_rejected, 1);
    assert_eq!(rep("v4").reports_against_majority, 1);
    assert_eq!(rep("v1").reports_against_majority, 0);
    assert_eq!(rep("v5").reports_missed, 3);

    // A finalized task has left the state; late transactions are refused.
    assert!(!chain.state.tasks.contains_key(&id));
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
    assert_eq!(late, Err(pot_protocol::TxError::UnknownTask(id)));
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
    run_reports_with(chain, id, liar, colluders, &[])
}

/// As `run_reports`, with `unavailable` finding the lazy claim's artifacts unavailable.
fn run_reports_with(
    chain: &mut Chain,
    id: &pot_protocol::Hash,
    liar: Option<&str>,
    colluders: &[&str],
    unavailable: &[&str],
) {
    let s = chain.task(id).schedule.clone();
    let mut all = Vec::new();
    for v in VALIDATORS {
        for m in MINERS {
            let segs = chain.segments(id, v, m);
            let r = match m {
                "honest" if Some(v) == liar => {
                    invalid_report(&segs, InvalidReason::SegmentMismatch)
                }
                "honest" => valid_report(&segs, 970_000),
                "lazy" if colluders.contains(&v) => valid_report(&segs, 999_000),
                "lazy" if unavailable.contains(&v) => {
                    invalid_report(&segs, InvalidReason::ArtifactsUnavailable)
                }
                "lazy" => invalid_report(&segs, InvalidReason::SegmentMismatch),
                _ => invalid_report(&segs, InvalidReason::InitMismatch),
            };
            all.push((v, m, r));
        }
    }
    chain.report_round(id, &all, &[]);
    chain.advance_to(s.report_reveal_end);
}

/// Validators bonded after the claims were assigned, so none of them validates a claim: they
/// sit on challenge committees.
const JUDGES: [&str; 5] = ["j1", "j2", "j3", "j4", "j5"];

fn bond_judges(chain: &mut Chain) {
    chain.all_ok(
        JUDGES
            .iter()
            .map(|j| {
                (
                    *j,
                    TxBody::Bond {
                        role: Role::Validator,
                        amount: Amount(VALIDATOR_STAKE),
                    },
                )
            })
            .collect(),
    );
}

fn dispute(miner: &str, validator: &str, fact: Fact) -> Dispute {
    Dispute {
        miner: addr(miner),
        validator: addr(validator),
        fact,
    }
}

/// Every member of challenge `i`'s committee votes `upheld`.
fn all_vote(chain: &mut Chain, id: &pot_protocol::Hash, i: u32, upheld: bool) {
    let seated = chain.task(id).schedule.challenge_reveal_end + 1;
    if chain.height() < seated {
        chain.advance_to(seated);
    }
    let committee = chain.committee(id, i, &JUDGES);
    assert!(!committee.is_empty());
    let votes: Vec<(&str, bool)> = committee.iter().map(|m| (*m, upheld)).collect();
    chain.vote_round(id, i, &votes, &[]);
}

#[test]
fn a_lying_validator_loses_a_challenge() {
    let mut params = scenario_params();
    params.validators_per_claim = 3;
    let mut chain = scenario_chain(params.clone());
    let id = up_to_reports(&mut chain);
    bond_judges(&mut chain);
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
        for v_addr in chain.assigned(&id, m) {
            let v = VALIDATORS.into_iter().find(|v| addr(v) == v_addr).unwrap();
            let segs = chain.segments(&id, v, m);
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

    let disputed = chain.segments(&id, liar, "honest")[0];
    let before = chain.bonded(liar, Role::Validator);
    let judges_before: u64 = JUDGES.iter().map(|j| chain.balance(j)).sum();
    chain.challenge_round(
        &id,
        "challenger",
        &[dispute("honest", liar, Fact::Segment(disputed))],
    );
    assert_eq!(chain.balance("challenger"), 5_000);
    chain.advance_to(s.challenge_reveal_end + 1);
    let committee = chain.committee(&id, 0, &JUDGES);
    assert_eq!(committee.len(), 3, "a committee of v = 3, all judges");
    all_vote(&mut chain, &id, 0, true);
    chain.advance_to(s.vote_reveal_end + 1);

    let outcome = chain.outcome(&id).clone();
    assert_eq!(outcome.challenges, vec![ChallengeResult::Upheld]);
    assert_eq!(outcome.winner, Some(addr("honest")));
    // The liar loses that assignment's whole collateral (100,000 over the quorum of 2); half
    // goes to the challenger with its deposit back, a fifth of the deposit to the three judges
    // who voted (as much as a rejected challenge would have paid them).
    let collateral = 50_000;
    assert_eq!(chain.bonded(liar, Role::Validator), before - collateral);
    // Its deposit back less the judges' fifth of it, and half the liar's loss.
    assert_eq!(
        chain.balance("challenger"),
        10_000 + collateral / 2 - 3 * (5_000 / 5 / 3)
    );
    let judges_after: u64 = JUDGES.iter().map(|j| chain.balance(j)).sum();
    assert_eq!(judges_after - judges_before, 3 * (5_000 / 5 / 3));
    let slashed: Vec<_> = outcome
        .slashes
        .iter()
        .filter(|s| s.role == Role::Validator)
        .map(|s| (s.who, s.amount.0, s.reason))
        .collect();
    assert_eq!(
        slashed,
        vec![(liar_addr, collateral, SlashReason::LostChallenge)]
    );
    // The liar's discarded report earns nothing for the honest claim: it is paid only for its
    // matching reports on the other claims.
    let liar_pay: Vec<_> = outcome
        .payouts
        .iter()
        .filter(|p| p.to == liar_addr)
        .map(|p| p.kind)
        .collect();
    assert!(liar_pay.iter().all(|k| *k == PayoutKind::Validation));
    let liar_reports = MINERS
        .iter()
        .filter(|m| chain.assigned(&id, m).contains(&liar_addr))
        .count();
    let matching_total = MINERS
        .iter()
        .map(|m| chain.assigned(&id, m).len())
        .sum::<usize>()
        - 1;
    let liar_earned: u64 = outcome
        .payouts
        .iter()
        .filter(|p| p.to == liar_addr)
        .map(|p| p.amount.0)
        .sum();
    assert_eq!(
        liar_earned,
        10_000 * (liar_reports as u64 - 1) / matching_total as u64
    );
    for stake in chain.state.stakes.values() {
        assert_eq!(
            stake.reserved,
            Amount::ZERO,
            "every seat and assignment released"
        );
    }
    chain.assert_supply_conserved();
}

#[test]
fn a_wrong_challenge_pays_the_committee_and_burns_the_rest() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    bond_judges(&mut chain);
    run_reports(&mut chain, &id, None, &[]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "v2", "honest")[1];
    chain.challenge_round(
        &id,
        "challenger",
        &[dispute("honest", "v2", Fact::Segment(segment))],
    );
    chain.advance_to(s.challenge_reveal_end + 1);
    assert_eq!(chain.committee(&id, 0, &JUDGES).len(), 5);
    let v2_before = chain.balance("v2");
    all_vote(&mut chain, &id, 0, false);
    chain.advance_to(s.vote_reveal_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(outcome.challenges, vec![ChallengeResult::Rejected]);
    assert_eq!(chain.balance("challenger"), 5_000);
    // A fifth of the 5,000 deposit to the five judges, the rest burned; nothing to the accused
    // (who could be the challenger's own).
    for j in JUDGES {
        assert_eq!(chain.balance(j), 200, "{j}");
    }
    assert!(
        outcome
            .payouts
            .iter()
            .all(|p| p.to != addr("v2") || p.kind == PayoutKind::Validation)
    );
    assert!(chain.balance("v2") >= v2_before);
    assert!(outcome.burned >= Amount(4_000));
    chain.assert_supply_conserved();
}

#[test]
fn a_challenge_proves_fraud_and_slashes_everyone_who_passed_the_fact() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    bond_judges(&mut chain);
    // v1..v3 collude to pass the lazy claim (3 of 5 say valid), and it has the best metric. v5
    // could not fetch its artifacts: its report states nothing about segments (they are
    // placeholders saying "ok").
    run_reports_with(&mut chain, &id, None, &["v1", "v2", "v3"], &["v5"]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "v1", "lazy")[0];
    chain.challenge_round(
        &id,
        "challenger",
        &[dispute("lazy", "v1", Fact::Segment(segment))],
    );
    all_vote(&mut chain, &id, 0, true);
    chain.advance_to(s.vote_reveal_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(outcome.challenges, vec![ChallengeResult::Upheld]);
    let lazy = outcome
        .claims
        .iter()
        .find(|c| c.miner == addr("lazy"))
        .unwrap();
    assert!(lazy.fraud_proven && lazy.decided && !lazy.valid);
    assert_eq!(outcome.winner, Some(addr("honest")));
    assert_eq!(chain.bonded("lazy", Role::Miner), MINER_STAKE - BOUNTY);
    // Every validator whose report said that segment replays is slashed, not only v1.
    let passed: Vec<_> = VALIDATORS
        .iter()
        .filter(|v| {
            let r = chain.task(&id).claims[&addr("lazy")].reports[&addr(v)]
                .report
                .clone()
                .unwrap();
            Fact::Segment(segment).stated_in(&r) == Some(true)
        })
        .map(|v| addr(v))
        .collect();
    assert!(passed.contains(&addr("v1")));
    let lost: Vec<_> = outcome
        .slashes
        .iter()
        .filter(|s| s.reason == SlashReason::LostChallenge)
        .map(|s| s.who)
        .collect();
    assert_eq!(lost, passed);
    assert!(
        !lost.contains(&addr("v5")),
        "a report that states nothing is not co-slashed"
    );
    chain.assert_supply_conserved();
}

#[test]
fn a_single_committee_vote_is_no_quorum_and_returns_the_deposit() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    bond_judges(&mut chain);
    run_reports(&mut chain, &id, None, &[]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "v1", "honest")[0];
    chain.challenge_round(
        &id,
        "challenger",
        &[dispute("honest", "v1", Fact::Segment(segment))],
    );
    // One committee member of five votes: a single vote is no quorum (three of five).
    chain.advance_to(s.challenge_reveal_end + 1);
    let member = chain.committee(&id, 0, &JUDGES)[0];
    chain.vote_round(&id, 0, &[(member, true)], &[]);
    chain.advance_to(s.vote_reveal_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(outcome.challenges, vec![ChallengeResult::Void]);
    // The honest claim still wins: one vote proved nothing.
    assert_eq!(outcome.winner, Some(addr("honest")));
    assert_eq!(chain.balance("challenger"), 10_000);
    // The four members who did not vote lose `validator_slash` (5%) of their seat's collateral.
    let silent: Vec<_> = outcome
        .slashes
        .iter()
        .filter(|s| s.reason == SlashReason::CommitteeVote)
        .map(|s| s.who)
        .collect();
    assert_eq!(silent.len(), 4);
    assert!(!silent.contains(&addr(member)));
    chain.assert_supply_conserved();
}

#[test]
fn duplicate_and_unrevealed_challenges() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    bond_judges(&mut chain);
    run_reports(&mut chain, &id, None, &[]);
    let s = chain.task(&id).schedule.clone();
    let segment = chain.segments(&id, "v1", "honest")[0];
    let d = dispute("honest", "v1", Fact::Segment(segment));
    // The challenger commits twice to the same dispute and once to one it never reveals.
    let c = |i: u32, d: &Dispute| {
        pot_protocol::tx::challenge_commitment(
            &id,
            &addr("challenger"),
            d,
            &salt(&format!("challenger challenge {i}")),
        )
    };
    let hidden = dispute("honest", "v2", Fact::Final);
    chain.ok(
        "client",
        TxBody::Transfer {
            to: addr("challenger"),
            amount: Amount(40_000),
        },
    );
    chain.all_ok(vec![
        (
            "challenger",
            TxBody::Challenge {
                task: id,
                commitment: c(0, &d),
            },
        ),
        (
            "challenger",
            TxBody::Challenge {
                task: id,
                commitment: c(1, &d),
            },
        ),
        (
            "challenger",
            TxBody::Challenge {
                task: id,
                commitment: c(2, &hidden),
            },
        ),
    ]);
    // 5,000 + 10,000 + 20,000 escrowed: each costs twice the one before.
    assert_eq!(chain.balance("challenger"), 10_000 + 40_000 - 35_000);
    chain.advance_to(s.challenge_end);
    chain.all_ok(
        [0, 1]
            .into_iter()
            .map(|i| {
                (
                    "challenger",
                    TxBody::RevealChallenge {
                        task: id,
                        challenge: i,
                        dispute: d,
                        salt: salt(&format!("challenger challenge {i}")),
                    },
                )
            })
            .collect(),
    );
    chain.advance_to(s.challenge_reveal_end + 1);
    let t = chain.task(&id);
    assert_eq!(t.challenges[0].committee.len(), 5);
    assert!(
        t.challenges[1].committee.is_empty(),
        "no second committee for the same fact"
    );
    assert!(t.challenges[2].committee.is_empty());
    all_vote(&mut chain, &id, 0, false);
    chain.advance_to(s.vote_reveal_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(
        outcome.challenges,
        vec![
            ChallengeResult::Rejected,
            ChallengeResult::Duplicate,
            ChallengeResult::Unrevealed
        ]
    );
    // Of the duplicate's 10,000 only the 5,000 base comes back; the rejected 5,000 and the
    // unrevealed 20,000 do not.
    assert_eq!(chain.balance("challenger"), 50_000 - 5_000 - 5_000 - 20_000);
    chain.assert_supply_conserved();
}

#[test]
fn no_challenger_of_the_task_sits_on_a_committee() {
    let mut chain = scenario_chain(scenario_params());
    let id = up_to_reports(&mut chain);
    bond_judges(&mut chain);
    run_reports(&mut chain, &id, None, &[]);
    let s = chain.task(&id).schedule.clone();
    // j1, a bonded validator with no assignment on the task, challenges v1 too (another
    // fact): it would share the reward if v1 lost, so it must not judge the other challenge.
    chain.ok(
        "client",
        TxBody::Transfer {
            to: addr("j1"),
            amount: Amount(50_000),
        },
    );
    let segment = chain.segments(&id, "v1", "honest")[0];
    let disputes = [
        (
            "challenger",
            dispute("honest", "v1", Fact::Segment(segment)),
        ),
        ("j1", dispute("honest", "v1", Fact::Init)),
    ];
    let c = |i: usize| {
        let (who, d) = disputes[i];
        pot_protocol::tx::challenge_commitment(
            &id,
            &addr(who),
            &d,
            &salt(&format!("{who} challenge {i}")),
        )
    };
    chain.all_ok(
        (0..2)
            .map(|i| {
                (
                    disputes[i].0,
                    TxBody::Challenge {
                        task: id,
                        commitment: c(i),
                    },
                )
            })
            .collect(),
    );
    chain.advance_to(s.challenge_end);
    chain.all_ok(
        (0..2)
            .map(|i| {
                let (who, d) = disputes[i];
                (
                    who,
                    TxBody::RevealChallenge {
                        task: id,
                        challenge: i as u32,
                        dispute: d,
                        salt: salt(&format!("{who} challenge {i}")),
                    },
                )
            })
            .collect(),
    );
    chain.advance_to(s.challenge_reveal_end + 1);
    for i in 0..2 {
        let committee = chain.committee(&id, i, &JUDGES);
        assert_eq!(committee.len(), 4, "challenge {i}: {committee:?}");
        assert!(!committee.contains(&"j1"), "challenge {i}: {committee:?}");
    }
}

#[test]
fn no_claims_refunds_the_bounty() {
    let mut chain = scenario_chain(scenario_params());
    let id = chain.submit_task("client", BOUNTY, W);
    let s = chain.task(&id).schedule.clone();
    assert_eq!(chain.balance("client"), 2_000_000 - BOUNTY - 5_000);
    chain.advance_to(s.reveal_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(outcome.winner, None);
    // The bounty comes back; the 5% burned at submission does not.
    assert_eq!(chain.balance("client"), 2_000_000 - 5_000);
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
            let r = invalid_report(
                &chain.segments(&id, v, m),
                InvalidReason::ArtifactsUnavailable,
            );
            reveals.push((v, m, r));
        }
    }
    chain.report_round(&id, &reveals, &[]);
    chain.advance_to(s.challenge_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(outcome.winner, None);
    for m in MINERS {
        assert_eq!(chain.bonded(m, Role::Miner), MINER_STAKE - BOUNTY);
    }
    // Validators are paid for their work without a winner too: 10,000 over 15 matching
    // reports, 3 each: 2,000 each. The client gets the rest of the bounty back.
    for v in VALIDATORS {
        assert_eq!(chain.balance(v), 2_000, "{v}");
    }
    assert_eq!(chain.balance("client"), 2_000_000 - 5_000 - 10_000);
    chain.assert_supply_conserved();
}

#[test]
fn a_withheld_eval_set_fails_the_task_and_burns_the_bounty() {
    let mut chain = scenario_chain(scenario_params());
    let id = chain.submit_task("client", BOUNTY, W);
    let s = chain.task(&id).schedule.clone();
    let c = claim("honest-run");
    chain.ok("honest", chain.commit_body(&id, "honest", &c));
    chain.advance_to(s.commit_end);
    chain.ok("honest", Chain::reveal_body(&id, "honest", &c));
    chain.advance_to(s.eval_end + 1);
    assert!(matches!(
        chain.ended_task(&id).status,
        TaskStatus::Failed {
            reason: FailReason::EvalSetNotRevealed,
            burned: Amount(BOUNTY),
            ..
        }
    ));
    assert_eq!(chain.ended_task(&id).phase(chain.height()), Phase::Failed);
    assert_eq!(chain.balance("client"), 2_000_000 - BOUNTY - 5_000);
    assert_eq!(chain.state.supply.burned, Amount(BOUNTY + 5_000));
    // The miner did nothing wrong: its deposit and collateral are back.
    assert_eq!(chain.balance("honest"), 10_000);
    assert_eq!(
        chain.state.free_stake(&addr("honest"), Role::Miner),
        Amount(MINER_STAKE)
    );
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
            bounty: Amount(BOUNTY),
            eval_commit: pot_protocol::tx::eval_commitment(&eval_set(), &eval_salt()),
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
            let r = valid_report(&chain.segments(&id, v, m), loss(m, i));
            reveals.push((*v, *m, r));
        }
    }
    chain.report_round(&id, &reveals, &[]);
    chain.advance_to(s.challenge_end + 1);
    let outcome = chain.outcome(&id).clone();
    assert_eq!(
        outcome.winner,
        Some(addr("lazy")),
        "tie goes to the earlier commitment"
    );
    assert_eq!(outcome.winning_metric, Some(Fixed(200_000)));
    chain.assert_supply_conserved();
}
