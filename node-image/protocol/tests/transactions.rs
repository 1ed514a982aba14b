//! Every transaction kind: the accepted case and each rejection. `Chain::try_tx` checks on every
//! rejection that the state is exactly as before.

mod common;

use common::*;
use pot_protocol::tx::{HyperValue, InvalidReason, Role, SegmentResult, TxBody, Verdict, limits};
use pot_protocol::{
    Amount, BlockError, Fixed, Hash, Params, Phase, SecretKey, Tx, TxError, build_block,
};

const W: u32 = 20;

fn params() -> Params {
    Params {
        min_miner_bond: Amount(1_000),
        min_validator_bond: Amount(1_000),
        validators_per_claim: 2,
        segments_per_claim: 2,
        unbonding_blocks: 5,
        challenge_deposit: Amount(100),
        max_claims_per_task: 3,
        max_challenges_per_task: 1,
        ..Params::default()
    }
}

/// client with funds; miners m1..m4 bonded; validators v1..v3 bonded; "poor" with little.
fn chain() -> Chain {
    Chain::new(
        params(),
        &[
            ("client", 1_000_000),
            ("alice", 10_000),
            ("poor", 50),
            ("challenger", 1_000),
        ],
        &[
            ("m1", Role::Miner, 2_000),
            ("m2", Role::Miner, 2_000),
            ("m3", Role::Miner, 2_000),
            ("m4", Role::Miner, 2_000),
            ("v1", Role::Validator, 5_000),
            ("v2", Role::Validator, 5_000),
            ("v3", Role::Validator, 5_000),
        ],
    )
}

#[test]
fn transfer() {
    let mut c = chain();
    c.ok(
        "alice",
        TxBody::Transfer {
            to: addr("bob"),
            amount: Amount(400),
        },
    );
    assert_eq!((c.balance("alice"), c.balance("bob")), (9_600, 400));
    assert_eq!(c.state.account(&addr("alice")).nonce, 1);

    assert_eq!(
        c.try_tx(
            "alice",
            TxBody::Transfer {
                to: addr("bob"),
                amount: Amount(0)
            }
        ),
        Err(TxError::ZeroAmount)
    );
    assert_eq!(
        c.try_tx(
            "alice",
            TxBody::Transfer {
                to: addr("bob"),
                amount: Amount(9_601)
            }
        ),
        Err(TxError::InsufficientFunds {
            need: Amount(9_601),
            have: Amount(9_600)
        })
    );
    // An account that never received anything has nothing to send.
    assert!(matches!(
        c.try_tx(
            "nobody",
            TxBody::Transfer {
                to: addr("bob"),
                amount: Amount(1)
            }
        ),
        Err(TxError::InsufficientFunds { .. })
    ));
    c.assert_supply_conserved();
}

#[test]
fn envelope_rejections() {
    let mut c = chain();
    let body = TxBody::Transfer {
        to: addr("bob"),
        amount: Amount(1),
    };

    // Replay: the same signed transaction a second time.
    let stx = c.sign("alice", body.clone());
    c.try_signed(stx.clone()).unwrap();
    assert_eq!(
        c.try_signed(stx),
        Err(TxError::WrongNonce {
            signer: addr("alice"),
            expected: 1,
            got: 0
        })
    );
    // A nonce from the future.
    let mut tx = c.sign("alice", body.clone()).tx;
    tx.nonce = 5;
    assert!(matches!(
        c.try_signed(tx.sign(&key("alice"))),
        Err(TxError::WrongNonce { .. })
    ));

    // Another chain.
    let mut tx = c.sign("alice", body.clone()).tx;
    tx.chain_id = "other-chain".into();
    assert!(matches!(
        c.try_signed(tx.sign(&key("alice"))),
        Err(TxError::WrongChain { .. })
    ));

    // A signature by someone else, and a body changed after signing.
    let tx = c.sign("alice", body.clone()).tx;
    let forged = pot_protocol::SignedTx {
        signature: key("mallory").sign(&tx.signing_bytes()),
        tx,
    };
    assert!(matches!(
        c.try_signed(forged),
        Err(TxError::BadSignature(_))
    ));
    let mut tampered = c.sign("alice", body.clone());
    tampered.tx.body = TxBody::Transfer {
        to: addr("mallory"),
        amount: Amount(1),
    };
    assert!(matches!(
        c.try_signed(tampered),
        Err(TxError::BadSignature(_))
    ));

    // Oversized: a task whose model field alone is over the transaction limit.
    let mut s = spec();
    s.model = "x".repeat(limits::MAX_TX_BYTES);
    let big = TxBody::SubmitTask {
        spec: s,
        bounty: Amount(10),
        eval_commit: Hash::ZERO,
        windows: windows(W),
    };
    assert!(matches!(
        c.try_tx("client", big),
        Err(TxError::TooLarge { .. })
    ));
}

#[test]
fn bond_and_unbond() {
    let mut c = chain();
    c.ok(
        "alice",
        TxBody::Bond {
            role: Role::Validator,
            amount: Amount(3_000),
        },
    );
    assert_eq!(
        (c.balance("alice"), c.bonded("alice", Role::Validator)),
        (7_000, 3_000)
    );
    assert_eq!(
        c.try_tx(
            "alice",
            TxBody::Bond {
                role: Role::Miner,
                amount: Amount(0)
            }
        ),
        Err(TxError::ZeroAmount)
    );
    assert!(matches!(
        c.try_tx(
            "poor",
            TxBody::Bond {
                role: Role::Miner,
                amount: Amount(51)
            }
        ),
        Err(TxError::InsufficientFunds { .. })
    ));

    c.ok(
        "alice",
        TxBody::Unbond {
            role: Role::Validator,
            amount: Amount(1_000),
        },
    );
    let release = c.height() + 5;
    assert_eq!(
        c.state.bonded(&addr("alice"), Role::Validator),
        Amount(2_000)
    );
    // Unbonding funds are still stake (slashable) and not yet balance.
    assert_eq!(c.bonded("alice", Role::Validator), 3_000);
    assert_eq!(
        c.try_tx(
            "alice",
            TxBody::Unbond {
                role: Role::Validator,
                amount: Amount(2_001)
            }
        ),
        Err(TxError::InsufficientBond {
            role: Role::Validator,
            need: Amount(2_001),
            have: Amount(2_000)
        })
    );
    assert!(matches!(
        c.try_tx(
            "alice",
            TxBody::Unbond {
                role: Role::Miner,
                amount: Amount(1)
            }
        ),
        Err(TxError::InsufficientBond { .. })
    ));
    c.advance_to(release - 1);
    assert_eq!(c.balance("alice"), 7_000);
    c.advance_to(release);
    assert_eq!(c.balance("alice"), 8_000);
    c.assert_supply_conserved();
}

#[test]
fn too_many_unbondings() {
    let mut c = chain();
    c.ok(
        "alice",
        TxBody::Bond {
            role: Role::Miner,
            amount: Amount(100),
        },
    );
    for _ in 0..32 {
        c.queue(
            "alice",
            TxBody::Unbond {
                role: Role::Miner,
                amount: Amount(1),
            },
        );
    }
    assert!(c.block().is_empty());
    assert_eq!(
        c.try_tx(
            "alice",
            TxBody::Unbond {
                role: Role::Miner,
                amount: Amount(1)
            }
        ),
        Err(TxError::TooManyUnbondings { max: 32 })
    );
}

#[test]
fn submit_task() {
    let mut c = chain();
    let id = c.submit_task("client", 10_000, W);
    assert_eq!(c.balance("client"), 990_000);
    let t = c.task(&id);
    assert_eq!(t.bounty, Amount(10_000));
    assert_eq!(t.phase(c.height()), Phase::Commit);
    assert_eq!(t.schedule.commit_end, t.schedule.submitted + 20);
    c.assert_supply_conserved();

    let submit = |spec, bounty: u64, w| TxBody::SubmitTask {
        spec,
        bounty: Amount(bounty),
        eval_commit: Hash::ZERO,
        windows: w,
    };
    let bad_spec = |f: fn(&mut pot_protocol::tx::TaskSpec)| {
        let mut s = spec();
        f(&mut s);
        submit(s, 10, windows(W))
    };
    let spec_err = |field| {
        move |r: Result<(), TxError>| {
            assert!(
                matches!(r, Err(TxError::InvalidSpec { field: f, .. }) if f == field),
                "{field}: {r:?}"
            )
        }
    };
    spec_err("steps")(c.try_tx("client", bad_spec(|s| s.steps = 0)));
    spec_err("steps")(c.try_tx("client", bad_spec(|s| s.steps = 10_000_001)));
    spec_err("checkpoint_interval")(c.try_tx("client", bad_spec(|s| s.checkpoint_interval = 7)));
    spec_err("checkpoint_interval")(c.try_tx("client", bad_spec(|s| s.checkpoint_interval = 0)));
    spec_err("model")(c.try_tx("client", bad_spec(|s| s.model.clear())));
    spec_err("dataset")(c.try_tx("client", bad_spec(|s| s.dataset.locator.clear())));
    spec_err("hyper")(c.try_tx("client", bad_spec(|s| s.hyper.reverse())));
    spec_err("hyper")(c.try_tx("client", bad_spec(|s| s.hyper[0].min = Fixed(600_000))));
    spec_err("hyper.name")(c.try_tx(
        "client",
        bad_spec(|s| s.hyper[0].name = "Learning Rate".into()),
    ));
    spec_err("replay_tolerance")(c.try_tx("client", bad_spec(|s| s.replay_tolerance = Fixed(-1))));
    assert!(matches!(
        c.try_tx(
            "client",
            bad_spec(|s| s.model = "m".repeat(limits::MAX_MODEL + 1))
        ),
        Err(TxError::FieldTooLarge { field: "model", .. })
    ));
    assert!(matches!(
        c.try_tx(
            "client",
            bad_spec(|s| s.dataset.locator = "l".repeat(limits::MAX_LOCATOR + 1))
        ),
        Err(TxError::FieldTooLarge {
            field: "dataset",
            ..
        })
    ));
    let mut w = windows(W);
    w.challenge = 0;
    assert_eq!(
        c.try_tx("client", submit(spec(), 10, w)),
        Err(TxError::BadWindow {
            name: "challenge",
            value: 0,
            min: 1,
            max: 10_000
        })
    );
    w.challenge = 10_001;
    assert!(matches!(
        c.try_tx("client", submit(spec(), 10, w)),
        Err(TxError::BadWindow { .. })
    ));
    assert_eq!(
        c.try_tx("client", submit(spec(), 0, windows(W))),
        Err(TxError::BountyTooSmall {
            min: Amount(1),
            got: Amount(0)
        })
    );
    assert!(matches!(
        c.try_tx("poor", submit(spec(), 51, windows(W))),
        Err(TxError::InsufficientFunds { .. })
    ));
}

#[test]
fn commit_claim() {
    let mut c = chain();
    let id = c.submit_task("client", 10_000, W);
    let claim = claim("r");
    c.ok("m1", c.commit_body(&id, "m1", &claim));
    assert_eq!(
        c.try_tx("m1", c.commit_body(&id, "m1", &claim)),
        Err(TxError::Duplicate("claim commitment"))
    );
    assert_eq!(
        c.try_tx("alice", c.commit_body(&id, "alice", &claim)),
        Err(TxError::InsufficientBond {
            role: Role::Miner,
            need: Amount(1_000),
            have: Amount(0)
        })
    );
    assert_eq!(
        c.try_tx("m1", c.commit_body(&Hash::ZERO, "m1", &claim)),
        Err(TxError::UnknownTask(Hash::ZERO))
    );
    // The client cannot mine its own task, even when bonded as a miner.
    c.ok(
        "client",
        TxBody::Bond {
            role: Role::Miner,
            amount: Amount(5_000),
        },
    );
    assert_eq!(
        c.try_tx("client", c.commit_body(&id, "client", &claim)),
        Err(TxError::ClientCannotClaim)
    );
    // max_claims_per_task = 3; the commit window is 3 blocks, so batch the rest.
    c.all_ok(vec![
        ("m2", c.commit_body(&id, "m2", &claim)),
        ("m3", c.commit_body(&id, "m3", &claim)),
    ]);
    let id2 = id;
    c.advance_to(c.task(&id2).schedule.commit_end - 1);
    assert_eq!(
        c.try_tx("m4", c.commit_body(&id, "m4", &claim)),
        Err(TxError::TooManyClaims { max: 3 })
    );
    // The window has closed.
    let r = c.try_tx("m4", c.commit_body(&id, "m4", &claim));
    assert!(
        matches!(
            r,
            Err(TxError::WrongPhase {
                expected: Phase::Commit,
                actual: Phase::Reveal,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn reveal_claim_and_eval_set() {
    let mut c = chain();
    let id = c.submit_task("client", 10_000, W);
    let s = c.task(&id).schedule.clone();
    let claim = claim("r");
    c.ok("m1", c.commit_body(&id, "m1", &claim));
    c.ok("m2", c.commit_body(&id, "m2", &claim));
    // Too early.
    assert!(matches!(
        c.try_tx("m1", Chain::reveal_body(&id, "m1", &claim)),
        Err(TxError::WrongPhase {
            expected: Phase::Reveal,
            actual: Phase::Commit,
            ..
        })
    ));
    c.advance_to(s.commit_end);

    assert_eq!(
        c.try_tx("m3", Chain::reveal_body(&id, "m3", &claim)),
        Err(TxError::NoCommitment("claim"))
    );
    let wrong_salt = TxBody::RevealClaim {
        task: id,
        claim: claim.clone(),
        salt: Hash::ZERO,
    };
    assert_eq!(
        c.try_tx("m1", wrong_salt),
        Err(TxError::RevealMismatch("claim"))
    );
    // m2 tries to reveal as m1's claim with m1's salt: the commitment binds the address.
    let stolen = TxBody::RevealClaim {
        task: id,
        claim: claim.clone(),
        salt: salt("m1"),
    };
    assert_eq!(
        c.try_tx("m2", stolen),
        Err(TxError::RevealMismatch("claim"))
    );

    let mut wrong_steps = claim.clone();
    wrong_steps.steps = 90;
    assert_eq!(
        c.try_tx("m1", Chain::reveal_body(&id, "m1", &wrong_steps)),
        Err(TxError::StepsMismatch {
            expected: 100,
            got: 90
        })
    );
    let mut missing = claim.clone();
    missing.hyper.pop();
    assert!(matches!(
        c.try_tx("m1", Chain::reveal_body(&id, "m1", &missing)),
        Err(TxError::HyperMismatch { .. })
    ));
    let mut out_of_range = claim.clone();
    out_of_range.hyper[0] = HyperValue {
        name: "lr".into(),
        value: Fixed(600_000),
    };
    assert!(matches!(
        c.try_tx("m1", Chain::reveal_body(&id, "m1", &out_of_range)),
        Err(TxError::HyperOutOfRange { .. })
    ));
    let mut long = claim.clone();
    long.artifacts = "a".repeat(limits::MAX_LOCATOR + 1);
    assert!(matches!(
        c.try_tx("m1", Chain::reveal_body(&id, "m1", &long)),
        Err(TxError::FieldTooLarge {
            field: "artifacts",
            ..
        })
    ));

    c.ok("m1", Chain::reveal_body(&id, "m1", &claim));
    assert_eq!(c.task(&id).claims[&addr("m1")].claim.as_ref(), Some(&claim));
    assert_eq!(
        c.try_tx("m1", Chain::reveal_body(&id, "m1", &claim)),
        Err(TxError::Duplicate("claim reveal"))
    );

    // The eval set is revealed only after the claims.
    assert!(matches!(
        c.try_tx("client", Chain::eval_body(&id)),
        Err(TxError::WrongPhase { .. })
    ));
    c.advance_to(s.reveal_end);
    assert_eq!(
        c.try_tx("alice", Chain::eval_body(&id)),
        Err(TxError::NotClient {
            client: addr("client")
        })
    );
    let mut wrong = eval_set();
    wrong.sha256 = Hash::digest(b"a different eval set");
    assert_eq!(
        c.try_tx(
            "client",
            TxBody::RevealEvalSet {
                task: id,
                eval_set: wrong,
                salt: eval_salt()
            }
        ),
        Err(TxError::RevealMismatch("eval set"))
    );
    c.ok("client", Chain::eval_body(&id));
    assert_eq!(c.task(&id).eval_set, Some(eval_set()));
    assert_eq!(
        c.try_tx("client", Chain::eval_body(&id)),
        Err(TxError::Duplicate("eval set reveal"))
    );
    // m2 never revealed: it gets no validators.
    assert!(c.assigned(&id, "m2").is_empty());
    assert_eq!(c.assigned(&id, "m1").len(), 2);
}

/// A task with m1's claim revealed and the eval set revealed; the tip is at the end of the
/// eval-reveal window.
fn at_report_commit() -> (Chain, Hash) {
    let mut c = chain();
    let id = c.submit_task("client", 10_000, W);
    let s = c.task(&id).schedule.clone();
    let claim = claim("r");
    c.ok("m1", c.commit_body(&id, "m1", &claim));
    c.advance_to(s.commit_end);
    c.ok("m1", Chain::reveal_body(&id, "m1", &claim));
    c.advance_to(s.reveal_end);
    c.ok("client", Chain::eval_body(&id));
    c.advance_to(s.eval_end);
    (c, id)
}

fn validator_name(a: &pot_protocol::Address) -> &'static str {
    ["v1", "v2", "v3"]
        .into_iter()
        .find(|v| addr(v) == *a)
        .unwrap()
}

#[test]
fn commit_and_reveal_reports() {
    let (mut c, id) = at_report_commit();
    let s = c.task(&id).schedule.clone();
    let assigned = c.assigned(&id, "m1");
    let (va, vb) = (validator_name(&assigned[0]), validator_name(&assigned[1]));
    let outsider = ["v1", "v2", "v3"]
        .into_iter()
        .find(|v| *v != va && *v != vb)
        .unwrap();
    let segs = c.segments(&id, "m1");
    assert_eq!(segs.len(), 2);
    let report = valid_report(&segs, 950_000);

    assert_eq!(
        c.try_tx(
            outsider,
            Chain::report_commit_body(&id, outsider, "m1", &report)
        ),
        Err(TxError::NotAssigned {
            validator: addr(outsider),
            miner: addr("m1")
        })
    );
    assert_eq!(
        c.try_tx(va, Chain::report_commit_body(&id, va, "m2", &report)),
        Err(TxError::UnknownClaim(addr("m2")))
    );
    c.ok(va, Chain::report_commit_body(&id, va, "m1", &report));
    assert_eq!(
        c.try_tx(va, Chain::report_commit_body(&id, va, "m1", &report)),
        Err(TxError::Duplicate("report commitment"))
    );
    // Reveals wait for the commit window to close.
    assert!(matches!(
        c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &report)),
        Err(TxError::WrongPhase {
            expected: Phase::ReportReveal,
            ..
        })
    ));
    c.advance_to(s.report_commit_end);
    assert!(matches!(
        c.try_tx(vb, Chain::report_commit_body(&id, vb, "m1", &report)),
        Err(TxError::WrongPhase {
            expected: Phase::ReportCommit,
            ..
        })
    ));

    assert_eq!(
        c.try_tx(vb, Chain::report_reveal_body(&id, vb, "m1", &report)),
        Err(TxError::NoCommitment("report"))
    );
    let mut wrong_segments = report.clone();
    wrong_segments.segments[0].index += 1;
    if segs.contains(&wrong_segments.segments[0].index) {
        wrong_segments.segments[0].index = u32::MAX;
    }
    assert_eq!(
        c.try_tx(
            va,
            Chain::report_reveal_body(&id, va, "m1", &wrong_segments)
        ),
        Err(TxError::WrongSegments {
            expected: segs.clone()
        })
    );
    let mut inconsistent = report.clone();
    inconsistent.segments[0] = SegmentResult {
        index: segs[0],
        ok: false,
    };
    assert_eq!(
        c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &inconsistent)),
        Err(TxError::InconsistentReport)
    );
    let mut wrong_reason = invalid_report(&segs, InvalidReason::SegmentMismatch);
    wrong_reason.verdict = Verdict::Invalid(InvalidReason::InitMismatch);
    assert_eq!(
        c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &wrong_reason)),
        Err(TxError::InconsistentReport)
    );
    // A different (consistent) report than the one committed: a validator cannot change its
    // mind after seeing the others.
    let changed = invalid_report(&segs, InvalidReason::SegmentMismatch);
    assert_eq!(
        c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &changed)),
        Err(TxError::RevealMismatch("report"))
    );
    c.ok(va, Chain::report_reveal_body(&id, va, "m1", &report));
    assert_eq!(
        c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &report)),
        Err(TxError::Duplicate("report reveal"))
    );
}

#[test]
fn challenges_and_votes() {
    let (mut c, id) = at_report_commit();
    let s = c.task(&id).schedule.clone();
    let assigned = c.assigned(&id, "m1");
    let (va, vb) = (validator_name(&assigned[0]), validator_name(&assigned[1]));
    let segs = c.segments(&id, "m1");
    let report = valid_report(&segs, 950_000);
    c.all_ok(vec![(
        va,
        Chain::report_commit_body(&id, va, "m1", &report),
    )]);
    c.advance_to(s.report_commit_end);
    c.ok(va, Chain::report_reveal_body(&id, va, "m1", &report));

    let challenge = |validator: &str, segment| TxBody::Challenge {
        task: id,
        miner: addr("m1"),
        validator: addr(validator),
        segment,
    };
    // Too early: the challenge window opens after the report reveals.
    assert!(matches!(
        c.try_tx("challenger", challenge(va, segs[0])),
        Err(TxError::WrongPhase {
            expected: Phase::Challenge,
            ..
        })
    ));
    c.advance_to(s.report_reveal_end);
    assert_eq!(
        c.try_tx(va, challenge(va, segs[0])),
        Err(TxError::SelfChallenge)
    );
    assert_eq!(
        c.try_tx("challenger", challenge(vb, segs[0])),
        Err(TxError::UnknownReport {
            validator: addr(vb),
            miner: addr("m1")
        })
    );
    let unsampled = (0..10).find(|i| !segs.contains(i)).unwrap();
    assert_eq!(
        c.try_tx("challenger", challenge(va, unsampled)),
        Err(TxError::SegmentNotReported(unsampled))
    );
    assert!(matches!(
        c.try_tx("poor", challenge(va, segs[0])),
        Err(TxError::InsufficientFunds { .. })
    ));
    c.ok("challenger", challenge(va, segs[0]));
    assert_eq!(c.balance("challenger"), 900);
    assert_eq!(
        c.try_tx("challenger", challenge(va, segs[0])),
        Err(TxError::Duplicate("challenge"))
    );
    assert_eq!(
        c.try_tx("challenger", challenge(va, segs[1])),
        Err(TxError::TooManyChallenges { max: 1 })
    );
    c.assert_supply_conserved();

    // Votes: only during resolution, only by the committee, once each.
    let vote = |i, ok| TxBody::ChallengeVote {
        task: id,
        challenge: i,
        segment_ok: ok,
    };
    assert!(matches!(
        c.try_tx(vb, vote(0, true)),
        Err(TxError::WrongPhase { .. })
    ));
    c.advance_to(s.challenge_end + 1);
    let committee = c.task(&id).challenges[0].committee.clone();
    // Excludes the challenged validator; the remaining two bonded validators form it.
    assert!(!committee.contains(&addr(va)));
    assert_eq!(committee.len(), 2);
    let member = validator_name(&committee[0]);
    assert_eq!(
        c.try_tx(va, vote(0, true)),
        Err(TxError::NotOnCommittee(addr(va)))
    );
    assert_eq!(
        c.try_tx(member, vote(7, true)),
        Err(TxError::UnknownChallenge(7))
    );
    c.ok(member, vote(0, true));
    assert_eq!(
        c.try_tx(member, vote(0, false)),
        Err(TxError::Duplicate("challenge vote"))
    );
    c.assert_supply_conserved();
}

#[test]
fn engaged_stake_cannot_be_unbonded_below_the_minimum() {
    let mut c = chain();
    let id = c.submit_task("client", 10_000, W);
    c.ok("m1", c.commit_body(&id, "m1", &claim("r")));
    assert_eq!(
        c.try_tx(
            "m1",
            TxBody::Unbond {
                role: Role::Miner,
                amount: Amount(1_001)
            }
        ),
        Err(TxError::StakeLocked {
            role: Role::Miner,
            remaining: Amount(999),
            min: Amount(1_000)
        })
    );
    // Above the minimum is fine.
    c.ok(
        "m1",
        TxBody::Unbond {
            role: Role::Miner,
            amount: Amount(1_000),
        },
    );
    // A miner with no claim may leave entirely.
    c.ok(
        "m2",
        TxBody::Unbond {
            role: Role::Miner,
            amount: Amount(2_000),
        },
    );
}

#[test]
fn block_rejections_leave_the_state_unchanged() {
    let mut c = chain();
    c.ok(
        "alice",
        TxBody::Transfer {
            to: addr("bob"),
            amount: Amount(1),
        },
    );
    let good = build_block(
        &c.state,
        addr("coordinator"),
        c.time_ms + 1_000,
        [c.sign(
            "alice",
            TxBody::Transfer {
                to: addr("bob"),
                amount: Amount(5),
            },
        )],
    )
    .block;
    let before = c.state.clone();
    let check = |block: &pot_protocol::Block| {
        let err = pot_protocol::apply_block(&c.state, block).unwrap_err();
        let mut s = c.state.clone();
        assert!(s.apply_block(block).is_err());
        assert_eq!(s, before);
        err
    };

    let mut b = good.clone();
    b.header.height += 1;
    assert!(matches!(check(&b), BlockError::WrongHeight { .. }));
    let mut b = good.clone();
    b.header.prev_hash = Hash::ZERO;
    assert!(matches!(check(&b), BlockError::WrongPrevHash { .. }));
    let mut b = good.clone();
    b.header.time_ms = c.state.tip.time_ms;
    assert!(matches!(check(&b), BlockError::TimeNotIncreasing { .. }));
    let mut b = good.clone();
    b.txs.clear();
    assert!(matches!(check(&b), BlockError::TxRootMismatch { .. }));
    let mut b = good.clone();
    b.header.state_root = Hash::ZERO;
    assert!(matches!(check(&b), BlockError::StateRootMismatch { .. }));
    // A block carrying an invalid transaction (with a matching tx root) is refused whole.
    let mut b = good.clone();
    let bad = Tx {
        chain_id: CHAIN.into(),
        signer: addr("poor"),
        nonce: 0,
        body: TxBody::Transfer {
            to: addr("bob"),
            amount: Amount(1_000_000),
        },
    }
    .sign(&key("poor"));
    b.txs.push(bad);
    b.header.tx_root = pot_protocol::block::tx_root(&b.txs);
    assert!(matches!(
        check(&b),
        BlockError::Tx {
            index: 1,
            error: TxError::InsufficientFunds { .. },
            ..
        }
    ));
    // A forged transaction is refused by a node that knows (has checked) only the others:
    // skipping checks is only for what was really checked.
    let mut b = good.clone();
    let mut forged = b.txs[0].clone();
    forged.tx.nonce += 1;
    b.txs.push(forged);
    b.header.tx_root = pot_protocol::block::tx_root(&b.txs);
    let known = b.txs[0].hash();
    assert!(matches!(
        pot_protocol::apply_block_known(&c.state, &b, |h| *h == known),
        Err(BlockError::Tx {
            index: 1,
            error: TxError::BadSignature(_),
            ..
        })
    ));
    // And the good block applies.
    c.state.apply_block(&good).unwrap();
    assert_eq!(c.balance("bob"), 6);
    let _ = SecretKey::generate();
}

#[test]
fn a_miner_who_also_validates_is_never_assigned_to_its_own_claim() {
    // m1 and m2 are bonded as validators too, and v is larger than the validator set, so every
    // eligible validator is assigned: the only one left out of a claim is its own miner.
    let mut p = params();
    p.validators_per_claim = 10;
    let mut c = Chain::new(
        p,
        &[("client", 1_000_000)],
        &[
            ("m1", Role::Miner, 2_000),
            ("m2", Role::Miner, 2_000),
            ("m1", Role::Validator, 2_000),
            ("m2", Role::Validator, 2_000),
            ("v1", Role::Validator, 2_000),
            // Below the minimum validator bond: never assigned.
            ("v2", Role::Validator, 999),
        ],
    );
    let id = c.submit_task("client", 10_000, W);
    let s = c.task(&id).schedule.clone();
    c.all_ok(vec![
        ("m1", c.commit_body(&id, "m1", &claim("a"))),
        ("m2", c.commit_body(&id, "m2", &claim("b"))),
    ]);
    c.advance_to(s.commit_end);
    c.all_ok(vec![
        ("m1", Chain::reveal_body(&id, "m1", &claim("a"))),
        ("m2", Chain::reveal_body(&id, "m2", &claim("b"))),
    ]);
    c.advance_to(s.reveal_end + 1);
    let mut expect_m1 = vec![addr("m2"), addr("v1")];
    expect_m1.sort();
    let mut expect_m2 = vec![addr("m1"), addr("v1")];
    expect_m2.sort();
    assert_eq!(c.assigned(&id, "m1"), expect_m1);
    assert_eq!(c.assigned(&id, "m2"), expect_m2);
    // s = 2 distinct segments of the 10.
    let segs = c.segments(&id, "m1");
    assert_eq!(segs.len(), 2);
    assert!(segs[0] < segs[1] && segs[1] < 10);
}
