//! The economic rules read as an attacker would: a self-dealing client, a Sybil squatter, a
//! lazy validator and a grinding proposer each lose money or influence. Each test prints what
//! every party ended with (`cargo test -p pot-protocol --test economics -- --nocapture`).

mod common;

use common::*;
use pot_protocol::state::{PayoutKind, SlashReason, TaskStatus};
use pot_protocol::tx::{DatasetRef, InvalidReason, Role, TxBody};
use pot_protocol::{Amount, BlockError, Hash, Params, SecretKey, TxError, build_block};

const W: u32 = 2;

/// Everything `names` hold together: balances and every bond.
fn wealth(chain: &Chain, names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| chain.balance(n) + chain.bonded(n, Role::Miner) + chain.bonded(n, Role::Validator))
        .sum()
}

fn print_parties(title: &str, chain: &Chain, names: &[&str]) {
    println!("{title}");
    for n in names {
        println!(
            "  {:<10} balance {:>9}  miner bond {:>7}  validator bond {:>7}",
            n,
            chain.balance(n),
            chain.bonded(n, Role::Miner),
            chain.bonded(n, Role::Validator)
        );
    }
    println!(
        "  supply: minted {} burned {}",
        chain.state.supply.minted, chain.state.supply.burned
    );
}

/// One task from submission to finalization: `client` posts it, `miner` claims it, and every
/// assigned validator reports it valid.
fn run_task(chain: &mut Chain, client: &str, miner: &str, bounty: u64, validators: &[&str]) {
    let id = chain.submit_task(client, bounty, W);
    let s = chain.task(&id).schedule.clone();
    let c = claim(&format!("{miner}-run-{}", chain.height()));
    chain.ok(miner, chain.commit_body(&id, miner, &c));
    chain.advance_to(s.commit_end);
    chain.ok(miner, Chain::reveal_body(&id, miner, &c));
    chain.advance_to(s.reveal_end);
    chain.ok(client, Chain::eval_body(&id));
    chain.advance_to(s.eval_end);
    let mut reports = Vec::new();
    for v in validators {
        if chain.assigned(&id, miner).contains(&addr(v)) {
            reports.push((
                *v,
                miner,
                valid_report(&chain.segments(&id, v, miner), 900_000),
            ));
        }
    }
    chain.report_round(&id, &reports, &[]);
    chain.advance_to(s.challenge_end + 1);
    assert_eq!(
        chain.outcome(&id).winner,
        Some(addr(miner)),
        "the claim won"
    );
}

#[test]
fn a_self_dealing_client_loses_money_on_every_attempt_at_the_defaults() {
    let p = Params::default();
    assert!(p.mint_rate <= p.task_burn, "the defaults keep mint <= burn");
    // Honest third-party validators, then validators the dealer owns as well.
    for own_validators in [false, true] {
        let validators = if own_validators {
            ["dealer-v1", "dealer-v2", "dealer-v3"]
        } else {
            ["v1", "v2", "v3"]
        };
        let mut stakes = vec![("dealer-miner", Role::Miner, 1_000_000)];
        stakes.extend(validators.iter().map(|v| (*v, Role::Validator, 1_000_000)));
        let mut balances = vec![("dealer", 10_000_000), ("dealer-miner", 100_000)];
        balances.extend(validators.iter().map(|v| (*v, 10_000)));
        let mut chain = Chain::new(Params::default(), &balances, &stakes);
        let mut dealer: Vec<&str> = vec!["dealer", "dealer-miner"];
        if own_validators {
            dealer.extend(validators);
        }
        println!(
            "\nself-dealing, {} validators:",
            if own_validators { "own" } else { "honest" }
        );
        for bounty in [p.min_bounty.0, 10_000, 100_000, 1_000_000] {
            let before = wealth(&chain, &dealer);
            run_task(&mut chain, "dealer", "dealer-miner", bounty, &validators);
            let after = wealth(&chain, &dealer);
            println!(
                "  bounty {bounty:>9}: dealer's accounts {before} -> {after} ({})",
                after as i64 - before as i64
            );
            assert!(
                after < before,
                "posting and winning one's own task must lose money (bounty {bounty})"
            );
            chain.assert_supply_conserved();
        }
        print_parties(
            "  parties at the end:",
            &chain,
            &balances.iter().map(|b| b.0).collect::<Vec<_>>(),
        );
    }
}

#[test]
fn fees_are_burned_and_a_rejected_transaction_pays_none() {
    let mut chain = Chain::new(
        Params::default(),
        &[("alice", 1_000), ("bob", 5), ("carol", 5)],
        &[],
    );
    let fee = chain.state.params.tx_fee.0;
    chain.ok(
        "alice",
        TxBody::Transfer {
            to: addr("bob"),
            amount: Amount(100),
        },
    );
    assert_eq!(chain.balance("alice"), 1_000 - 100 - fee);
    assert_eq!(chain.state.supply.burned, Amount(fee));
    chain.assert_supply_conserved();

    // A fee below the chain's minimum is refused (and `try_signed` checks nothing changed).
    let mut cheap = chain.sign(
        "alice",
        TxBody::Transfer {
            to: addr("bob"),
            amount: Amount(1),
        },
    );
    cheap.tx.fee = Amount(fee - 1);
    let cheap = cheap.tx.sign(&key("alice"));
    assert_eq!(
        chain.try_signed(cheap),
        Err(TxError::FeeTooLow {
            min: Amount(fee),
            got: Amount(fee - 1)
        })
    );
    // The fee comes first: a body that cannot pay after it is refused, and keeps its fee.
    assert_eq!(
        chain.try_tx(
            "alice",
            TxBody::Transfer {
                to: addr("bob"),
                amount: Amount(1_000 - 100 - fee),
            }
        ),
        Err(TxError::InsufficientFunds {
            need: Amount(1_000 - 100 - fee),
            have: Amount(1_000 - 100 - 2 * fee),
        })
    );
    // An account that cannot pay the fee cannot send anything, even to itself.
    assert!(matches!(
        chain.try_tx(
            "carol",
            TxBody::Transfer {
                to: addr("carol"),
                amount: Amount(1),
            }
        ),
        Err(TxError::InsufficientFunds { .. })
    ));
    assert_eq!(chain.state.supply.burned, Amount(fee));
    // A higher fee is allowed, and all of it is burned.
    let mut generous = chain.sign(
        "alice",
        TxBody::Transfer {
            to: addr("bob"),
            amount: Amount(1),
        },
    );
    generous.tx.fee = Amount(3 * fee);
    chain.try_signed(generous.tx.sign(&key("alice"))).unwrap();
    assert_eq!(chain.state.supply.burned, Amount(4 * fee));
    chain.assert_supply_conserved();
}

/// Parameters for the judging tests: no fees (the arithmetic is about judging), v validators.
fn judging_params(v: u32) -> Params {
    Params {
        tx_fee: Amount(0),
        claim_deposit: Amount(100),
        validators_per_claim: v,
        segments_per_claim: 2,
        ..Params::default()
    }
}

/// A task with one revealed claim of "miner", at the start of the report-commit window.
fn claimed_task(chain: &mut Chain, bounty: u64) -> Hash {
    let id = chain.submit_task("client", bounty, W);
    let s = chain.task(&id).schedule.clone();
    let c = claim("miner-run");
    chain.ok("miner", chain.commit_body(&id, "miner", &c));
    chain.advance_to(s.commit_end);
    chain.ok("miner", Chain::reveal_body(&id, "miner", &c));
    chain.advance_to(s.reveal_end);
    chain.ok("client", Chain::eval_body(&id));
    chain.advance_to(s.eval_end);
    id
}

fn judging_chain(v: u32, validators: &[&str]) -> Chain {
    let mut stakes = vec![("miner", Role::Miner, 50_000)];
    stakes.extend(validators.iter().map(|v| (*v, Role::Validator, 50_000)));
    Chain::new(
        judging_params(v),
        &[("client", 1_000_000), ("miner", 1_000)],
        &stakes,
    )
}

#[test]
fn with_no_validators_a_claim_is_neither_paid_nor_slashed_and_the_bounty_is_burned() {
    let mut chain = judging_chain(3, &[]);
    let id = claimed_task(&mut chain, 10_000);
    assert!(chain.assigned(&id, "miner").is_empty());
    let s = chain.task(&id).schedule.clone();
    chain.advance_to(s.challenge_end + 1);
    let o = chain.outcome(&id);
    assert!(!o.claims[0].decided && !o.claims[0].valid);
    assert_eq!(o.winner, None);
    assert!(o.slashes.is_empty());
    print_parties("no validators:", &chain, &["client", "miner"]);
    // The miner keeps its stake and deposit; nothing is minted. The client does not get the
    // bounty back: it has seen the revealed claim, and a client that could post where no
    // validator can be assigned would otherwise get the work for the 5% burn.
    assert_eq!(chain.balance("client"), 1_000_000 - 10_000 - 500);
    assert_eq!(chain.state.supply.burned, Amount(10_000 + 500));
    assert_eq!(chain.bonded("miner", Role::Miner), 50_000);
    assert_eq!(chain.balance("miner"), 1_000);
    assert_eq!(chain.state.supply.minted, Amount::ZERO);
    assert_eq!(
        chain.state.stakes[&(addr("miner"), Role::Miner)].reserved,
        Amount::ZERO
    );
    chain.assert_supply_conserved();
}

#[test]
fn one_report_is_no_quorum_and_lazy_validators_are_slashed() {
    let vs = ["v1", "v2", "v3"];
    let mut chain = judging_chain(3, &vs);
    let id = claimed_task(&mut chain, 10_000);
    let s = chain.task(&id).schedule.clone();
    // v1 reports; v2 commits and never reveals; v3 never commits.
    let r1 = valid_report(&chain.segments(&id, "v1", "miner"), 950_000);
    let r2 = valid_report(&chain.segments(&id, "v2", "miner"), 950_000);
    chain.report_round(&id, &[("v1", "miner", r1), ("v2", "miner", r2)], &["v2"]);
    chain.advance_to(s.challenge_end + 1);
    let o = chain.outcome(&id).clone();
    print_parties(
        "one report of three:",
        &chain,
        &["client", "miner", "v1", "v2", "v3"],
    );
    // One valid report of a quorum of two: undecided, so the honest-looking miner is neither
    // paid nor slashed, and v1 (whose claim was not decided) earns nothing.
    assert!(!o.claims[0].decided);
    assert_eq!(o.winner, None);
    assert_eq!(chain.bonded("miner", Role::Miner), 50_000);
    assert_eq!(chain.balance("v1"), 0);
    assert_eq!(chain.balance("client"), 1_000_000 - 10_000 - 500);
    // The lazy validators lose 10% of their 5,000 collateral (10,000 over the quorum of 2).
    let slashed: Vec<_> = o
        .slashes
        .iter()
        .map(|s| (s.who, s.amount.0, s.reason))
        .collect();
    assert_eq!(slashed.len(), 2, "{slashed:?}");
    assert!(slashed.contains(&(addr("v2"), 500, SlashReason::ReportNotRevealed)));
    assert!(slashed.contains(&(addr("v3"), 500, SlashReason::ReportNotCommitted)));
    assert_eq!(chain.bonded("v3", Role::Validator), 49_500);
    assert_eq!(chain.state.reputation_of(&addr("v3")).reports_missed, 1);
    chain.assert_supply_conserved();
}

#[test]
fn a_tie_is_no_quorum() {
    let vs = ["v1", "v2", "v3", "v4"];
    let mut chain = judging_chain(4, &vs);
    let id = claimed_task(&mut chain, 10_000);
    let s = chain.task(&id).schedule.clone();
    let reports: Vec<_> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let segs = chain.segments(&id, v, "miner");
            let r = if i < 2 {
                valid_report(&segs, 950_000)
            } else {
                invalid_report(&segs, InvalidReason::SegmentMismatch)
            };
            (*v, "miner", r)
        })
        .collect();
    chain.report_round(&id, &reports, &[]);
    chain.advance_to(s.challenge_end + 1);
    let o = chain.outcome(&id);
    // Two against two of four, quorum three: undecided, nobody slashed.
    assert_eq!(
        (o.claims[0].valid_reports, o.claims[0].invalid_reports),
        (2, 2)
    );
    assert!(!o.claims[0].decided);
    assert!(o.slashes.is_empty());
    assert_eq!(chain.bonded("miner", Role::Miner), 50_000);
    chain.assert_supply_conserved();
}

#[test]
fn each_validator_replays_its_own_segments() {
    let vs = ["v1", "v2", "v3"];
    let mut chain = judging_chain(3, &vs);
    let id = claimed_task(&mut chain, 10_000);
    let samples: Vec<Vec<u32>> = vs.iter().map(|v| chain.segments(&id, v, "miner")).collect();
    assert!(
        samples.windows(2).any(|w| w[0] != w[1]),
        "three validators drew {samples:?}"
    );
    // A validator cannot report on another's sample.
    let (a, b) = (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .find(|(i, j)| samples[*i] != samples[*j])
        .unwrap();
    let borrowed = valid_report(&samples[b], 950_000);
    chain.ok(
        vs[a],
        Chain::report_commit_body(&id, vs[a], "miner", &borrowed),
    );
    let s = chain.task(&id).schedule.clone();
    chain.advance_to(s.report_commit_end);
    assert_eq!(
        chain.try_tx(
            vs[a],
            Chain::report_reveal_body(&id, vs[a], "miner", &borrowed)
        ),
        Err(TxError::WrongSegments {
            expected: samples[a].clone()
        })
    );
}

#[test]
fn assigned_stake_is_locked_until_the_task_ends() {
    let vs = ["v1", "v2", "v3"];
    let mut chain = judging_chain(3, &vs);
    let id = claimed_task(&mut chain, 10_000);
    // 5,000 of each validator's 50,000 is reserved for its assignment.
    assert_eq!(
        chain.try_tx(
            "v1",
            TxBody::Unbond {
                role: Role::Validator,
                amount: Amount(45_001)
            }
        ),
        Err(TxError::StakeLocked {
            role: Role::Validator,
            asked: Amount(45_001),
            free: Amount(45_000),
            bonded: Amount(50_000),
        })
    );
    // The miner's claim reserves the bounty.
    assert!(matches!(
        chain.try_tx(
            "miner",
            TxBody::Unbond {
                role: Role::Miner,
                amount: Amount(40_001)
            }
        ),
        Err(TxError::StakeLocked { .. })
    ));
    let s = chain.task(&id).schedule.clone();
    chain.advance_to(s.challenge_end + 1);
    // Once the task has ended, everything is free again (less v1's slash for not reporting).
    assert_eq!(chain.bonded("v1", Role::Validator), 49_500);
    chain.ok(
        "v1",
        TxBody::Unbond {
            role: Role::Validator,
            amount: Amount(49_500),
        },
    );
}

#[test]
fn a_squatter_that_never_reveals_loses_its_deposits() {
    let mut stakes = vec![("miner", Role::Miner, 50_000)];
    let squatters = ["sybil1", "sybil2", "sybil3"];
    stakes.extend(squatters.iter().map(|s| (*s, Role::Miner, 50_000)));
    stakes.push(("v1", Role::Validator, 50_000));
    let mut balances = vec![("client", 1_000_000), ("miner", 1_000)];
    balances.extend(squatters.iter().map(|s| (*s, 1_000)));
    let mut chain = Chain::new(judging_params(1), &balances, &stakes);
    let id = chain.submit_task("client", 10_000, W);
    let s = chain.task(&id).schedule.clone();
    let c = claim("honest");
    let mut commits: Vec<_> = squatters
        .iter()
        .map(|sq| (*sq, chain.commit_body(&id, sq, &claim(sq))))
        .collect();
    commits.push(("miner", chain.commit_body(&id, "miner", &c)));
    chain.all_ok(commits);
    // Committed slots hold collateral: a squatter needs the bounty in free stake per slot.
    for sq in squatters {
        assert_eq!(
            chain.state.free_stake(&addr(sq), Role::Miner),
            Amount(40_000)
        );
    }
    chain.advance_to(s.commit_end);
    chain.ok("miner", Chain::reveal_body(&id, "miner", &c));
    chain.advance_to(s.reveal_end);
    chain.ok("client", Chain::eval_body(&id));
    chain.advance_to(s.eval_end);
    let r = valid_report(&chain.segments(&id, "v1", "miner"), 950_000);
    chain.report_round(&id, &[("v1", "miner", r)], &[]);
    chain.advance_to(s.challenge_end + 1);
    let mut names = vec!["client", "miner", "v1"];
    names.extend(squatters);
    print_parties("squatters who never reveal:", &chain, &names);
    assert_eq!(chain.outcome(&id).winner, Some(addr("miner")));
    // The deposit is the bounty over the 32 claim slots (313), more than the 100 minimum.
    for sq in squatters {
        assert_eq!(chain.balance(sq), 1_000 - 313, "{sq} lost its deposit");
        assert_eq!(chain.bonded(sq, Role::Miner), 50_000);
        assert_eq!(
            chain.state.free_stake(&addr(sq), Role::Miner),
            Amount(50_000),
            "collateral released"
        );
    }
    let returned: Vec<_> = chain
        .outcome(&id)
        .payouts
        .iter()
        .filter(|p| p.kind == PayoutKind::DepositReturned)
        .map(|p| p.to)
        .collect();
    assert_eq!(returned, vec![addr("miner")]);
    chain.assert_supply_conserved();
}

#[test]
fn the_eval_commitment_binds_the_locator() {
    let mut chain = judging_chain(1, &["v1"]);
    let id = chain.submit_task("client", 10_000, W);
    let s = chain.task(&id).schedule.clone();
    let c = claim("r");
    chain.ok("miner", chain.commit_body(&id, "miner", &c));
    chain.advance_to(s.commit_end);
    chain.ok("miner", Chain::reveal_body(&id, "miner", &c));
    chain.advance_to(s.reveal_end);
    // The same bytes' hash at a dead locator: refused.
    let dead = DatasetRef {
        locator: "https://gone.invalid/eval.safetensors".into(),
        ..eval_set()
    };
    assert_eq!(
        chain.try_tx(
            "client",
            TxBody::RevealEvalSet {
                task: id,
                eval_set: dead,
                salt: eval_salt(),
            }
        ),
        Err(TxError::RevealMismatch("eval set"))
    );
    chain.ok("client", Chain::eval_body(&id));
}

#[test]
fn a_proposer_cannot_grind_the_beacon_by_ordering_or_time() {
    let names = ["a", "b", "c", "d"];
    let balances: Vec<(&str, u64)> = names.iter().map(|n| (*n, 10_000)).collect();
    let mut chain = Chain::new(Params::default(), &balances, &[]);
    chain.advance_to(3);
    let txs: Vec<_> = names
        .iter()
        .map(|n| {
            chain.sign(
                n,
                TxBody::Transfer {
                    to: addr("z"),
                    amount: Amount(1),
                },
            )
        })
        .collect();
    let mut beacons = std::collections::BTreeSet::new();
    let mut hashes = std::collections::BTreeSet::new();
    let orders: [[usize; 4]; 5] = [
        [0, 1, 2, 3],
        [3, 2, 1, 0],
        [1, 3, 0, 2],
        [2, 0, 3, 1],
        [0, 1, 2, 3],
    ];
    for (i, order) in orders.iter().enumerate() {
        let time = chain.time_ms + 1_000 + 37 * i as u64;
        let built = build_block(
            &chain.state,
            &proposer(),
            time,
            order.iter().map(|&k| txs[k].clone()),
        );
        assert!(built.rejected.is_empty());
        beacons.insert(built.block.header.beacon);
        hashes.insert(built.block.hash());
    }
    println!(
        "grinding proposer: {} different blocks, {} beacon(s): {:?}",
        hashes.len(),
        beacons.len(),
        beacons
    );
    assert!(
        hashes.len() >= 4,
        "the orderings and times made different blocks"
    );
    assert_eq!(
        beacons.len(),
        1,
        "every ordering and time gives the same beacon"
    );

    // A header whose beacon or proof was tampered with, or whose proposer is no coordinator,
    // is refused.
    let good = build_block(
        &chain.state,
        &proposer(),
        chain.time_ms + 1_000,
        txs.clone(),
    )
    .block;
    let mut b = good.clone();
    b.header.beacon = Hash::digest(b"a beacon the proposer liked better");
    assert!(matches!(
        pot_protocol::apply_block(&chain.state, &b),
        Err(BlockError::WrongBeacon { .. })
    ));
    let mut b = good.clone();
    b.header.vrf_proof.0[50] ^= 1;
    assert!(matches!(
        pot_protocol::apply_block(&chain.state, &b),
        Err(BlockError::BadBeacon(_))
    ));
    let stranger = pot_protocol::ProposerKey::new(&SecretKey::from_seed([0x51; 32]));
    let b = build_block(&chain.state, &stranger, chain.time_ms + 1_000, txs).block;
    assert_eq!(
        pot_protocol::apply_block(&chain.state, &b),
        Err(BlockError::UnknownProposer(stranger.address))
    );
    assert!(pot_protocol::apply_block(&chain.state, &good).is_ok());
}

#[test]
fn ended_tasks_leave_the_state() {
    let vs = ["v1", "v2", "v3"];
    let mut chain = judging_chain(3, &vs);
    run_task(&mut chain, "client", "miner", 10_000, &vs);
    chain.block();
    let size_after_one = pot_protocol::encoding::encode(&chain.state).len();
    for _ in 0..5 {
        run_task(&mut chain, "client", "miner", 10_000, &vs);
    }
    chain.block();
    assert!(chain.state.tasks.is_empty());
    assert!(chain.state.ended.is_empty());
    assert_eq!(
        pot_protocol::encoding::encode(&chain.state).len(),
        size_after_one,
        "state does not grow with finished tasks"
    );
    // Every outcome is still there for whoever kept the blocks' `ended` lists.
    assert_eq!(
        chain
            .archive
            .values()
            .filter(|t| matches!(t.status, TaskStatus::Finalized(_)))
            .count(),
        6
    );
}

#[test]
fn each_challenge_on_a_task_costs_twice_the_one_before() {
    let vs = ["v1", "v2", "v3"];
    let mut p = judging_params(3);
    p.max_challenges_per_task = 4;
    let mut stakes = vec![("miner", Role::Miner, 50_000)];
    stakes.extend(vs.iter().map(|v| (*v, Role::Validator, 50_000)));
    let mut chain = Chain::new(
        p,
        &[
            ("client", 1_000_000),
            ("miner", 1_000),
            ("squatter", 10_000),
        ],
        &stakes,
    );
    let id = claimed_task(&mut chain, 10_000);
    let s = chain.task(&id).schedule.clone();
    let reports: Vec<_> = vs
        .iter()
        .map(|v| {
            (
                *v,
                "miner",
                valid_report(&chain.segments(&id, v, "miner"), 950_000),
            )
        })
        .collect();
    chain.report_round(&id, &reports, &[]);
    chain.advance_to(s.report_reveal_end);
    let deposit = chain.state.params.challenge_deposit.0;
    let before = chain.balance("squatter");
    let challenges: Vec<_> = (0..3u8)
        .map(|i| {
            (
                "squatter",
                TxBody::Challenge {
                    task: id,
                    commitment: Hash::digest(&[i]),
                },
            )
        })
        .collect();
    chain.all_ok(challenges);
    let deposits: Vec<u64> = chain
        .task(&id)
        .challenges
        .iter()
        .map(|c| c.deposit.0)
        .collect();
    assert_eq!(deposits, vec![deposit, 2 * deposit, 4 * deposit]);
    assert_eq!(before - chain.balance("squatter"), 7 * deposit);
    // Never revealed, all three are burned.
    chain.advance_to(s.challenge_reveal_end + 1);
    assert_eq!(chain.balance("squatter"), before - 7 * deposit);
    chain.assert_supply_conserved();
}

#[test]
fn what_a_challenge_cannot_dispute() {
    use pot_protocol::tx::{Dispute, Fact, challenge_commitment};
    let vs = ["v1", "v2", "v3"];
    let mut chain = judging_chain(3, &vs);
    chain.all_ok(
        ["challenger", "v3"]
            .into_iter()
            .map(|n| {
                (
                    "client",
                    TxBody::Transfer {
                        to: addr(n),
                        amount: Amount(10_000),
                    },
                )
            })
            .collect(),
    );
    let id = claimed_task(&mut chain, 10_000);
    let s = chain.task(&id).schedule.clone();
    // v1 judges the claim invalid on a segment, v2 finds the artifacts unavailable, v3 valid.
    let r1 = invalid_report(
        &chain.segments(&id, "v1", "miner"),
        InvalidReason::SegmentMismatch,
    );
    let r2 = invalid_report(
        &chain.segments(&id, "v2", "miner"),
        InvalidReason::ArtifactsUnavailable,
    );
    let r3 = valid_report(&chain.segments(&id, "v3", "miner"), 900_000);
    chain.report_round(
        &id,
        &[
            ("v1", "miner", r1),
            ("v2", "miner", r2),
            ("v3", "miner", r3),
        ],
        &[],
    );
    chain.advance_to(s.report_reveal_end);
    let d = |v: &str, fact| Dispute {
        miner: addr("miner"),
        validator: addr(v),
        fact,
    };
    let cases = [
        // An invalid report's metric is a placeholder.
        ("challenger", d("v1", Fact::Metric)),
        // A report that found the artifacts unavailable states nothing else.
        ("challenger", d("v2", Fact::Init)),
        // Availability is the miner's to control.
        ("challenger", d("v3", Fact::Artifacts)),
        // v3 validates this claim: it may not challenge a fellow validator of it.
        ("v3", d("v1", Fact::Init)),
    ];
    let commitment = |i: usize, who: &str, dispute: &Dispute| {
        challenge_commitment(&id, &addr(who), dispute, &salt(&i.to_string()))
    };
    chain.all_ok(
        cases
            .iter()
            .enumerate()
            .map(|(i, (who, dispute))| {
                (
                    *who,
                    TxBody::Challenge {
                        task: id,
                        commitment: commitment(i, who, dispute),
                    },
                )
            })
            .collect(),
    );
    chain.advance_to(s.challenge_end);
    let reveal = |i: usize| {
        let (who, dispute) = cases[i];
        (
            who,
            TxBody::RevealChallenge {
                task: id,
                challenge: i as u32,
                dispute,
                salt: salt(&i.to_string()),
            },
        )
    };
    let errors: Vec<_> = (0..cases.len())
        .map(|i| {
            let (who, body) = reveal(i);
            chain.probe(who, body).unwrap_err()
        })
        .collect();
    assert!(matches!(
        errors[0],
        TxError::NotDisputable {
            fact: Fact::Metric,
            ..
        }
    ));
    assert!(matches!(
        errors[1],
        TxError::NotDisputable {
            fact: Fact::Init,
            ..
        }
    ));
    assert!(matches!(
        errors[2],
        TxError::NotDisputable {
            fact: Fact::Artifacts,
            ..
        }
    ));
    assert_eq!(errors[3], TxError::ChallengerAssigned(addr("v3")));
}
