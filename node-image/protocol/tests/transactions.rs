//! Every transaction kind: the accepted case and each rejection. `Chain::try_tx` checks on every
//! rejection that the state is exactly as before.

mod common;

use common::*;
use pot_protocol::tx::{HyperValue, InvalidReason, Role, SegmentResult, TxBody, Verdict, limits};
use pot_protocol::{
    Amount, BlockError, Fixed, Hash, Params, Phase, SecretKey, Tx, TxError, build_block,
};

const W: u32 = 20;

/// Fees and claim deposits are zero here so that each test is about its transaction alone;
/// `economics.rs` covers them.
fn params() -> Params {
    Params {
        tx_fee: Amount(0),
        claim_deposit: Amount(0),
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
            // Claim deposits: a third of a 10,000 bounty, with 3 claim slots.
            ("m1", 10_000),
            ("m2", 10_000),
            ("m3", 10_000),
            ("m4", 10_000),
        ],
        &[
            ("m1", Role::Miner, 20_000),
            ("m2", Role::Miner, 20_000),
            ("m3", Role::Miner, 20_000),
            ("m4", Role::Miner, 20_000),
            ("v1", Role::Validator, 50_000),
            ("v2", Role::Validator, 50_000),
            ("v3", Role::Validator, 50_000),
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
    // The bounty is escrowed and 5% of it burned.
    assert_eq!(c.balance("client"), 1_000_000 - 10_000 - 500);
    assert_eq!(c.state.supply.burned, Amount(500));
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
    // Below the chain's minimum work (100 steps), even with a checkpoint interval that divides.
    spec_err("steps")(c.try_tx(
        "client",
        bad_spec(|s| {
            s.steps = 50;
            s.checkpoint_interval = 10;
        }),
    ));
    spec_err("steps")(c.try_tx("client", bad_spec(|s| s.steps = 10_000_001)));
    spec_err("checkpoint_interval")(c.try_tx("client", bad_spec(|s| s.checkpoint_interval = 7)));
    spec_err("checkpoint_interval")(c.try_tx("client", bad_spec(|s| s.checkpoint_interval = 0)));
    spec_err("model")(c.try_tx("client", bad_spec(|s| s.model.clear())));
    spec_err("dataset")(c.try_tx("client", bad_spec(|s| s.dataset.locator.clear())));
    spec_err("hyper")(c.try_tx("client", bad_spec(|s| s.hyper.reverse())));
    spec_err("hyper")(c.try_tx("client", bad_spec(|s| s.hyper[0].min = Fixed(600_000))));
    spec_err("hyper")(c.try_tx(
        "client",
        bad_spec(|s| s.hyper[0].name = "Learning Rate".into()),
    ));
    spec_err("hyper")(c.try_tx("client", bad_spec(|s| s.hyper[0].default = Fixed(0))));
    spec_err("replay_tolerance")(c.try_tx(
        "client",
        bad_spec(|s| s.verification.replay_tolerance = Fixed(-1)),
    ));
    spec_err("batch_size")(c.try_tx("client", bad_spec(|s| s.batch_size = 0)));
    spec_err("top_q")(c.try_tx("client", bad_spec(|s| s.verification.top_q = 65)));
    spec_err("samples")(c.try_tx("client", bad_spec(|s| s.verification.samples = 65)));
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
            min: Amount(1_000),
            got: Amount(0)
        })
    );
    assert!(matches!(
        c.try_tx("poor", submit(spec(), 1_000, windows(W))),
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
        // A claim reserves the bounty as collateral.
        Err(TxError::InsufficientBond {
            role: Role::Miner,
            need: Amount(10_000),
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
    let segs = c.segments(&id, va, "m1");
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
    // A metric no view of the chain could show exactly (an API reader would fail on it).
    for metric in [Fixed(i64::MIN), Fixed(-1), Fixed(1 << 50)] {
        let mut unreadable = report.clone();
        unreadable.metric = metric;
        assert_eq!(
            c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &unreadable)),
            Err(TxError::MetricOutOfRange(metric))
        );
    }
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

/// A validator reports the largest-update segments it replayed besides its sample, so a
/// splice that only the top-Q check catches can be reported (and challenged) on chain.
#[test]
fn a_report_may_add_the_largest_update_segments_after_its_sample() {
    let (mut c, id) = at_report_commit();
    let s = c.task(&id).schedule.clone();
    let va = validator_name(&c.assigned(&id, "m1")[0]);
    let segs = c.segments(&id, va, "m1");
    let n = c.task(&id).spec.segments() as u32;
    let others: Vec<u32> = (0..n).filter(|i| !segs.contains(i)).collect();
    let mut report = valid_report(&segs, 950_000);
    report.segments.push(SegmentResult {
        index: others[0],
        ok: true,
    });
    report.segments.push(SegmentResult {
        index: others[1],
        ok: false,
    });
    report.verdict = Verdict::Invalid(InvalidReason::SegmentMismatch);
    assert!(report.is_consistent());
    c.ok(va, Chain::report_commit_body(&id, va, "m1", &report));
    c.advance_to(s.report_commit_end);

    let wrong = |f: &dyn Fn(&mut Vec<SegmentResult>)| {
        let mut r = report.clone();
        f(&mut r.segments);
        r
    };
    let k = segs.len();
    for bad in [
        // Not ascending.
        wrong(&|v| v.swap(k, k + 1)),
        // A sampled segment again.
        wrong(&|v| v[k].index = segs[0]),
        // Beyond the run.
        wrong(&|v| v[k + 1].index = n),
        // The sample cut short.
        wrong(&|v| {
            v.remove(0);
        }),
    ] {
        assert_eq!(
            c.try_tx(va, Chain::report_reveal_body(&id, va, "m1", &bad)),
            Err(TxError::WrongSegments {
                expected: segs.clone()
            })
        );
    }
    c.ok(va, Chain::report_reveal_body(&id, va, "m1", &report));
}

#[test]
fn challenges_and_votes() {
    use pot_protocol::tx::{Dispute, Fact, challenge_commitment, vote_commitment};
    let (mut c, id) = at_report_commit();
    let s = c.task(&id).schedule.clone();
    let assigned = c.assigned(&id, "m1");
    let (va, vb) = (validator_name(&assigned[0]), validator_name(&assigned[1]));
    let outsider = ["v1", "v2", "v3"]
        .into_iter()
        .find(|v| *v != va && *v != vb)
        .unwrap();
    let segs = c.segments(&id, va, "m1");
    let report = valid_report(&segs, 950_000);
    c.all_ok(vec![(
        va,
        Chain::report_commit_body(&id, va, "m1", &report),
    )]);
    c.advance_to(s.report_commit_end);
    c.ok(va, Chain::report_reveal_body(&id, va, "m1", &report));

    let dispute = |validator: &str, fact| Dispute {
        miner: addr("m1"),
        validator: addr(validator),
        fact,
    };
    let d = dispute(va, Fact::Segment(segs[0]));
    let commit = |who: &str, d: &Dispute, salt: &Hash| TxBody::Challenge {
        task: id,
        commitment: challenge_commitment(&id, &addr(who), d, salt),
    };
    let salt1 = Hash::digest(b"challenge salt");
    // Too early: the challenge window opens after the report reveals.
    assert!(matches!(
        c.try_tx("challenger", commit("challenger", &d, &salt1)),
        Err(TxError::WrongPhase {
            expected: Phase::Challenge,
            ..
        })
    ));
    c.advance_to(s.report_reveal_end);
    assert!(matches!(
        c.try_tx("poor", commit("poor", &d, &salt1)),
        Err(TxError::InsufficientFunds { .. })
    ));
    c.ok("challenger", commit("challenger", &d, &salt1));
    assert_eq!(c.balance("challenger"), 900);
    assert_eq!(
        c.try_tx("challenger", commit("challenger", &d, &salt1)),
        Err(TxError::Duplicate("challenge commitment"))
    );
    assert_eq!(
        c.try_tx("challenger", commit("challenger", &d, &Hash::ZERO)),
        Err(TxError::TooManyChallenges { max: 1 })
    );

    // Reveals: only in their window, only by the challenger, only of a fact a revealed report
    // states, only as committed, once.
    let reveal = |index, d: Dispute, salt| TxBody::RevealChallenge {
        task: id,
        challenge: index,
        dispute: d,
        salt,
    };
    assert!(matches!(
        c.try_tx("challenger", reveal(0, d, salt1)),
        Err(TxError::WrongPhase {
            expected: Phase::ChallengeReveal,
            ..
        })
    ));
    c.advance_to(s.challenge_end);
    assert_eq!(
        c.try_tx("alice", reveal(0, d, salt1)),
        Err(TxError::NotYourChallenge {
            challenge: 0,
            challenger: addr("challenger")
        })
    );
    assert_eq!(
        c.try_tx("challenger", reveal(7, d, salt1)),
        Err(TxError::UnknownChallenge(7))
    );
    assert_eq!(
        c.try_tx("challenger", reveal(0, dispute(vb, Fact::Init), salt1)),
        Err(TxError::UnknownReport {
            validator: addr(vb),
            miner: addr("m1")
        })
    );
    let unsampled = (0..10).find(|i| !segs.contains(i)).unwrap();
    assert_eq!(
        c.try_tx(
            "challenger",
            reveal(0, dispute(va, Fact::Segment(unsampled)), salt1)
        ),
        Err(TxError::FactNotReported(Fact::Segment(unsampled)))
    );
    assert_eq!(
        c.try_tx("challenger", reveal(0, dispute(va, Fact::Final), salt1)),
        Err(TxError::RevealMismatch("challenge"))
    );
    // Artifact availability is not disputable (the miner controls it).
    assert!(matches!(
        c.try_tx("challenger", reveal(0, dispute(va, Fact::Artifacts), salt1)),
        Err(TxError::NotDisputable {
            fact: Fact::Artifacts,
            ..
        })
    ));
    c.ok("challenger", reveal(0, d, salt1));
    assert_eq!(
        c.try_tx("challenger", reveal(0, d, salt1)),
        Err(TxError::Duplicate("challenge reveal"))
    );
    c.assert_supply_conserved();

    // Votes: committed then revealed, only by the committee, once each.
    let vsalt = Hash::digest(b"vote salt");
    let commit_vote = |who: &str, index, upheld| TxBody::CommitVote {
        task: id,
        challenge: index,
        commitment: vote_commitment(&id, index, &addr(who), upheld, &vsalt),
    };
    let reveal_vote = |index, upheld| TxBody::RevealVote {
        task: id,
        challenge: index,
        upheld,
        salt: vsalt,
    };
    assert!(matches!(
        c.try_tx(outsider, commit_vote(outsider, 0, false)),
        Err(TxError::WrongPhase { .. })
    ));
    c.advance_to(s.challenge_reveal_end + 1);
    // Neither of the claim's validators sits, nor the miner or the challenger: the one
    // validator left forms it.
    let committee: Vec<_> = c.task(&id).challenges[0]
        .committee
        .iter()
        .map(|seat| seat.member)
        .collect();
    assert_eq!(committee, vec![addr(outsider)]);
    assert_eq!(
        c.try_tx(va, commit_vote(va, 0, false)),
        Err(TxError::NotOnCommittee(addr(va)))
    );
    assert_eq!(
        c.try_tx(outsider, commit_vote(outsider, 7, false)),
        Err(TxError::UnknownChallenge(7))
    );
    c.ok(outsider, commit_vote(outsider, 0, false));
    assert_eq!(
        c.try_tx(outsider, commit_vote(outsider, 0, false)),
        Err(TxError::Duplicate("vote commitment"))
    );
    assert!(matches!(
        c.try_tx(outsider, reveal_vote(0, false)),
        Err(TxError::WrongPhase {
            expected: Phase::VoteReveal,
            ..
        })
    ));
    c.advance_to(s.vote_end);
    assert_eq!(
        c.try_tx(outsider, reveal_vote(0, true)),
        Err(TxError::RevealMismatch("vote"))
    );
    c.ok(outsider, reveal_vote(0, false));
    assert_eq!(
        c.try_tx(outsider, reveal_vote(0, false)),
        Err(TxError::Duplicate("vote reveal"))
    );
    c.assert_supply_conserved();
}

#[test]
fn reserved_stake_cannot_be_unbonded() {
    let mut c = chain();
    let id = c.submit_task("client", 10_000, W);
    // The claim reserves 10,000 (the bounty) of m1's 20,000.
    c.ok("m1", c.commit_body(&id, "m1", &claim("r")));
    assert_eq!(
        c.try_tx(
            "m1",
            TxBody::Unbond {
                role: Role::Miner,
                amount: Amount(10_001)
            }
        ),
        Err(TxError::StakeLocked {
            role: Role::Miner,
            asked: Amount(10_001),
            free: Amount(10_000),
            bonded: Amount(20_000),
        })
    );
    // The free part may go.
    c.ok(
        "m1",
        TxBody::Unbond {
            role: Role::Miner,
            amount: Amount(10_000),
        },
    );
    // A miner with no claim may leave entirely.
    c.ok(
        "m2",
        TxBody::Unbond {
            role: Role::Miner,
            amount: Amount(20_000),
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
        &proposer(),
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
        fee: Amount(0),
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
fn miners_competing_for_a_task_never_validate_each_other() {
    // m1 and m2 are bonded as validators too, and v is larger than the validator set, so every
    // eligible validator is assigned: a miner with a claim on the task judges no claim of it.
    let mut p = params();
    p.validators_per_claim = 10;
    let mut c = Chain::new(
        p,
        &[("client", 1_000_000), ("m1", 10_000), ("m2", 10_000)],
        &[
            ("m1", Role::Miner, 20_000),
            ("m2", Role::Miner, 20_000),
            ("m1", Role::Validator, 20_000),
            ("m2", Role::Validator, 20_000),
            ("v1", Role::Validator, 20_000),
            // Free stake below the collateral (10,000 over the quorum of 6: 1,667): never
            // assigned.
            ("v2", Role::Validator, 1_666),
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
    assert_eq!(c.assigned(&id, "m1"), vec![addr("v1")]);
    assert_eq!(c.assigned(&id, "m2"), vec![addr("v1")]);
    // s = 2 distinct segments of the 10.
    let segs = c.segments(&id, "v1", "m1");
    assert_eq!(segs.len(), 2);
    assert!(segs[0] < segs[1] && segs[1] < 10);
}
