//! The PoT loop through real processes: `pot-node devnet` starts 4 coordinators, miners and
//! validators on loopback, submits the digits task, reveals its eval set, and waits for
//! finalization. Three miners are honest (one is killed half-way through training, and one
//! validator half-way through a download: both resume); four cheat (a test build's `--cheat`):
//! a lazy one, a copycat, a splicer and one that withholds its checkpoints after revealing.
//! Every cheat must be judged invalid by the validators and slashed; the best honest claim
//! wins, its model (fetched by hash through a coordinator's `GET /v1/artifacts`) scores at
//! least 95 % on the held-out split, and every payout is the amount the ledger's rules give.
//! A second network shows a verifier's challenge beating validators that do not replay.

use std::path::PathBuf;
use std::process::Command;

use pot_protocol::api::{AccountInfo, TaskInfo};
use pot_protocol::state::{ChallengeResult, PayoutKind, SlashReason, TaskStatus};
use pot_protocol::tx::{InvalidReason, Verdict};
use pot_protocol::{Address, Amount, Genesis};

#[derive(serde::Deserialize)]
struct Summary {
    miners: Vec<Address>,
    validators: Vec<Address>,
    verifiers: Vec<Address>,
    info: TaskInfo,
    accounts: Vec<AccountInfo>,
    restarts: std::collections::BTreeMap<String, u32>,
    winner_held_out_accuracy: Option<f64>,
}

/// What each miner does: honest, or the cheat named.
const MINERS: [Option<&str>; 7] = [
    None,
    None,
    None,
    Some("lazy"),
    Some("copycat"),
    Some("splicer"),
    Some("withhold"),
];
/// Genesis funds and stakes of `pot-node devnet`.
const FUNDS: u64 = 10_000_000;
const MINER_STAKE: u64 = 1_000_000;

/// The digits example with other phase windows.
fn write_task(path: &std::path::Path, windows: &str) {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../node-image/node/tasks/digits-mlp.yaml"
    ))
    .unwrap();
    let text: Vec<&str> = example
        .lines()
        .map(|l| {
            if l.starts_with("windows:") {
                windows
            } else {
                l
            }
        })
        .collect();
    std::fs::write(path, text.join("\n")).unwrap();
}

/// A directory with the digits task (these windows) and a `pot-node devnet` command for it,
/// with 0.5 s blocks, its network in `net`: the caller adds the nodes.
fn devnet(windows: &str) -> (tempfile::TempDir, PathBuf, PathBuf, Command) {
    let dir = tempfile::Builder::new()
        .prefix("pot-loop-")
        .tempdir()
        .unwrap();
    let (task, net) = (dir.path().join("digits.yaml"), dir.path().join("net"));
    write_task(&task, windows);
    let mut cmd = Command::new(pot_e2e::pot_node_binary());
    cmd.args(["devnet", "--block-time-ms", "500"])
        .arg("--task")
        .arg(&task)
        .arg("--dir")
        .arg(&net);
    (dir, task, net, cmd)
}

/// Run `pot-node devnet` to the end and read its summary. One network at a time: two would
/// share two cores and their phase windows.
fn run_devnet(mut cmd: Command, net: &std::path::Path) -> Summary {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "devnet failed: {stdout}\n{}\nlogs in {}",
        String::from_utf8_lossy(&out.stderr),
        net.display()
    );
    println!("{stdout}");
    serde_json::from_slice(&std::fs::read(net.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_digits_task_pays_the_best_honest_claim_and_slashes_every_cheat() {
    // Room for seven miners training at once on two cores (0.5 s blocks).
    let (_dir, _task, net, mut cmd) = devnet(
        "windows: { commit: 100, reveal: 10, eval_reveal: 10, report_commit: 80, \
         report_reveal: 10, challenge: 5, challenge_reveal: 3, vote: 5, vote_reveal: 3 }",
    );
    cmd.args([
        "--coordinators",
        "4",
        "--validators",
        "3",
        "--timeout",
        "1200",
    ])
    // An honest miner killed half-way through training, and a validator half-way through
    // fetching a claim's checkpoints: restarted, they resume from their data directories.
    .args(["--miner-arg", "0=--crash-at-step=1000"])
    .args(["--validator-arg", "0=--crash-mid-download"])
    // An honest miner that searches: its claim's hyper-parameters are its own draw.
    .args(["--miner-arg", "1=--hyper-search=random"])
    .arg(format!("--miners={}", MINERS.len()));
    for (i, cheat) in MINERS.iter().enumerate() {
        if let Some(c) = cheat {
            cmd.arg(format!("--miner-arg={i}=--cheat={c}"));
        }
    }
    let s = run_devnet(cmd, &net);
    let genesis =
        Genesis::from_yaml(&std::fs::read_to_string(net.join("genesis.yaml")).unwrap()).unwrap();
    let p = &genesis.params;
    let t = &s.info.task;
    let TaskStatus::Finalized(o) = &t.status else {
        panic!("the task did not finalize: {:?}", t.status);
    };

    // Verdicts: every validator judged every claim, honest ones valid, each cheat invalid for
    // its own reason.
    let expected = |i: usize| match MINERS[i] {
        None => Verdict::Valid,
        Some("lazy") | Some("splicer") => Verdict::Invalid(InvalidReason::SegmentMismatch),
        Some("copycat") => Verdict::Invalid(InvalidReason::InitMismatch),
        Some("withhold") => Verdict::Invalid(InvalidReason::ArtifactsUnavailable),
        Some(other) => unreachable!("{other}"),
    };
    for (i, m) in s.miners.iter().enumerate() {
        let c = &t.claims[m];
        assert_eq!(
            c.reports.len(),
            3,
            "miner{i} has reports from every validator"
        );
        for (v, r) in &c.reports {
            let r = r.report.as_ref().expect("revealed");
            assert_eq!(r.verdict, expected(i), "miner{i} as judged by {v}");
        }
    }

    // The searching miner trained with its own draw (inside the ranges, or the ledger would
    // have refused the claim), and its replays used it: valid above.
    let searched = &t.claims[&s.miners[1]]
        .claim
        .as_ref()
        .expect("revealed")
        .hyper;
    assert_ne!(
        searched,
        &t.spec.default_hyper(),
        "miner1 drew its own hyper-parameters"
    );
    assert_eq!(
        t.claims[&s.miners[0]]
            .claim
            .as_ref()
            .expect("revealed")
            .hyper,
        t.spec.default_hyper(),
        "miner0 took the defaults"
    );

    // The winner: the honest claim with the best median metric (ties: the earliest commitment).
    let median = |m: &Address| {
        o.claims
            .iter()
            .find(|c| c.miner == *m)
            .and_then(|c| c.median_metric)
    };
    let honest: Vec<&Address> = (0..3).map(|i| &s.miners[i]).collect();
    let best = honest
        .iter()
        .max_by(|a, b| {
            median(a)
                .cmp(&median(b))
                .then(t.claims[*b].committed_at.cmp(&t.claims[*a].committed_at))
        })
        .unwrap();
    assert_eq!(o.winner.as_ref(), Some(*best));
    let acc = s
        .winner_held_out_accuracy
        .expect("the winner's model was scored");
    // The killed miner and validator came back and finished their work in time.
    assert_eq!(s.restarts.get("miner0"), Some(&1), "{:?}", s.restarts);
    assert_eq!(s.restarts.get("validator0"), Some(&1), "{:?}", s.restarts);
    let miner_log = std::fs::read_to_string(net.join("miner0.log")).unwrap();
    assert!(
        miner_log.contains("resuming training from its last checkpoint"),
        "the restarted miner trained from scratch"
    );
    assert!(
        acc >= 0.95,
        "the winner's model scores {acc} on held-out data"
    );

    // Payouts, by the ledger's rules: every report matched its claim's outcome, so each
    // validator gets a third of `validator_share` of the bounty; the winner the rest plus
    // `mint_rate` of the bounty; every revealed claim its deposit back; each cheat loses its
    // claim's collateral, `max(bounty, min_miner_bond)`.
    let bounty = t.bounty;
    let pool = p.validator_share.of(bounty);
    let share = pool.mul_div(7, 21);
    let paid = |to: &Address, kind: PayoutKind| -> u64 {
        o.payouts
            .iter()
            .filter(|x| x.to == *to && x.kind == kind)
            .map(|x| x.amount.0)
            .sum()
    };
    for v in &s.validators {
        assert_eq!(paid(v, PayoutKind::Validation), share.0, "validator {v}");
    }
    let winner = o.winner.unwrap();
    assert_eq!(paid(&winner, PayoutKind::Bounty), bounty.0 - 3 * share.0);
    assert_eq!(paid(&winner, PayoutKind::Mint), p.mint_rate.of(bounty).0);
    let deposit = p
        .claim_deposit
        .max(Amount(bounty.0.div_ceil(u64::from(p.max_claims_per_task))));
    for m in &s.miners {
        assert_eq!(paid(m, PayoutKind::DepositReturned), deposit.0);
    }
    let collateral = bounty.max(p.min_miner_bond);
    let mut slashed: Vec<(Address, u64)> = o
        .slashes
        .iter()
        .map(|x| {
            assert_eq!(x.reason, SlashReason::InvalidClaim);
            (x.who, x.amount.0)
        })
        .collect();
    slashed.sort();
    let mut cheats: Vec<(Address, u64)> = (3..7).map(|i| (s.miners[i], collateral.0)).collect();
    cheats.sort();
    assert_eq!(slashed, cheats);

    // And the accounts say the same: the winner paid two fees (commit, reveal) and got the
    // bounty's rest and the mint; a cheat's bond lost its collateral.
    let account = |a: &Address| s.accounts.iter().find(|x| x.address == *a).unwrap();
    let fee = p.tx_fee.0;
    assert_eq!(
        account(&winner).balance.0,
        FUNDS - 2 * fee + (bounty.0 - 3 * share.0) + p.mint_rate.of(bounty).0
    );
    for (cheat, _) in &cheats {
        assert_eq!(account(cheat).miner_bond.0, MINER_STAKE - collateral.0);
        assert_eq!(account(cheat).balance.0, FUNDS - 2 * fee);
    }
}

/// Every validator rubber-stamps (reports valid without fetching or replaying anything) and
/// the one miner is lazy, so its claim passes its validators. A verifier re-checks the revealed
/// reports, challenges each; committees drawn from validators with no part in the task replay
/// the disputed segments, uphold the challenges: the rubber stamps lose their collateral, the
/// claim is proven fraudulent and slashed, and the verifier is paid.
#[test]
fn a_validator_that_reports_valid_without_replaying_loses_a_challenge() {
    let (dir, task, net, mut cmd) = devnet(
        "windows: { commit: 40, reveal: 8, eval_reveal: 8, report_commit: 30, \
         report_reveal: 10, challenge: 20, challenge_reveal: 10, vote: 30, vote_reveal: 10 }",
    );
    // The eval set is a local file the client publishes by hash (`pot://`) and serves.
    let eval = dir.path().join("eval.csv");
    let rows: String = (0..200u32)
        .map(|r| {
            let features: Vec<String> = (0..64)
                .map(|f| ((r * 7 + f * 3) % 17).to_string())
                .collect();
            format!("{},{}\n", features.join(","), r % 10)
        })
        .collect();
    std::fs::write(&eval, &rows).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(rows.as_bytes()));
    let text = std::fs::read_to_string(&task).unwrap();
    let (head, _) = text.split_once("eval_set:").unwrap();
    let (_, tail) = text.split_once("# Phase lengths").unwrap();
    std::fs::write(
        &task,
        format!(
            "{head}eval_set:\n  locator: file://{}\n  sha256: {sha}\n# Phase lengths{tail}",
            eval.display()
        ),
    )
    .unwrap();
    // Three validators per claim, and three more with no part in the task for the committees.
    let validators = 6;
    cmd.args(["--coordinators", "1", "--miners", "1", "--verifiers", "1"])
        .args(["--timeout", "900", "--miner-arg", "0=--cheat=lazy"])
        .arg(format!("--validators={validators}"));
    for i in 0..validators {
        cmd.arg(format!("--validator-arg={i}=--cheat=rubber-stamp"));
    }
    let s = run_devnet(cmd, &net);
    let t = &s.info.task;
    let TaskStatus::Finalized(o) = &t.status else {
        panic!("the task did not finalize: {:?}", t.status);
    };
    let lazy = s.miners[0];
    let claim = &t.claims[&lazy];
    let stamps: Vec<Address> = claim.assigned.iter().map(|a| a.validator).collect();
    assert_eq!(stamps.len(), 3);
    for r in claim.reports.values() {
        assert_eq!(r.report.as_ref().unwrap().verdict, Verdict::Valid);
    }
    // One challenge per rubber stamp, each upheld.
    assert_eq!(t.challenges.len(), 3, "{:#?}", t.challenges);
    for ch in &t.challenges {
        assert_eq!(ch.challenger, s.verifiers[0]);
        let d = ch.dispute.expect("revealed");
        assert!(stamps.contains(&d.validator));
        assert!(
            ch.committee
                .iter()
                .all(|seat| !stamps.contains(&seat.member))
        );
    }
    assert!(
        o.challenges.iter().all(|r| *r == ChallengeResult::Upheld),
        "{:?}",
        o.challenges
    );
    let outcome = o.claims.iter().find(|c| c.miner == lazy).unwrap();
    assert!(outcome.fraud_proven && !outcome.valid, "{outcome:?}");
    assert_eq!(o.winner, None);
    let slashed = |who: &Address, reason: SlashReason| {
        o.slashes
            .iter()
            .any(|x| x.who == *who && x.reason == reason && x.amount.0 > 0)
    };
    assert!(slashed(&lazy, SlashReason::InvalidClaim));
    for v in &stamps {
        assert!(
            slashed(v, SlashReason::LostChallenge),
            "{v} kept its collateral"
        );
    }
    assert!(
        o.payouts
            .iter()
            .any(|p| p.to == s.verifiers[0] && p.kind == PayoutKind::ChallengeWon)
    );
    // The eval set the client revealed is the published blob.
    let eval_set = t.eval_set.as_ref().expect("revealed");
    assert_eq!(eval_set.locator, format!("pot://{sha}"));
}
