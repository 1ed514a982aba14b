//! Coordinators under failures and hostile peers: a node that cannot store a decided block
//! halts; a node that lost its chain database never signs again where it signed before; crashes
//! between a decision and the store, or right after a proposal, sign nothing twice; an
//! equivocating proposer, a coordinator that casts two conflicting votes at every step and one
//! flooding proposal parts neither fork nor stop the others. Byzantine behaviour comes from the test build's `fault-injection` feature.

use std::time::Duration;

use pot_e2e::coordinators::Coordinators;

const BLOCK_TIME_MS: u64 = 200;
const WAIT: Duration = Duration::from_secs(90);

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Wait until coordinator `i`'s process has exited; its status.
async fn wait_exit(net: &mut Coordinators, i: usize) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = net.exited(i) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "coordinator {i} is still running\n{}",
            net.log_tails(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until coordinator `i`'s log contains `text`.
async fn wait_log(net: &Coordinators, i: usize, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !net.log(i).contains(text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "coordinator {i} never logged {text:?}\n{}",
            net.log_tails(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A block after `after` that coordinator `i` precommitted, as `reader` serves it.
async fn signs_again(net: &Coordinators, i: usize, reader: usize, after: u64) -> u64 {
    let me = net.keys[i].address();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut h = after + 1;
    loop {
        net.wait_height(&[reader], h, WAIT).await;
        let block = net.client(reader).block(h).await.expect("block");
        if block.committed_by.contains(&me) {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "coordinator {i} never signed again after height {after}\n{}",
            net.log_tails(30)
        );
        h += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_that_cannot_store_a_decided_block_halts() {
    let mut extra = vec![Vec::new(); 4];
    extra[3] = args(&["--fail-commit-at", "4"]);
    let mut net = Coordinators::start_with(4, BLOCK_TIME_MS, 1, extra).expect("start");
    let status = wait_exit(&mut net, 3).await;
    assert!(!status.success(), "a halt is a failure exit: {status:?}");
    let log = net.log(3);
    assert!(
        log.contains("halting: could not commit the decided block at height 4"),
        "the reason is in the log:\n{log}"
    );
    // It stopped at the height it could not store, and the others go on without it.
    net.wait_height(&[0, 1, 2], 10, WAIT).await;
    net.assert_same_chain(&[0, 1, 2], 10).await;
    net.assert_nothing_signed_twice(&[0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_whose_chain_database_is_deleted_never_signs_where_it_signed_before() {
    let mut net = Coordinators::start(4, BLOCK_TIME_MS, 1).expect("start");
    net.wait_height(&[0, 1, 2, 3], 6, WAIT).await;
    // Stop everyone, so the amnesiac node is alone at its old heights and its engine has to
    // try to sign there (nobody to sync from yet).
    for i in 0..4 {
        net.kill(i);
    }
    let signed_up_to = net.assert_nothing_signed_twice(&[3]);
    assert!(signed_up_to > 0);
    std::fs::remove_file(net.data_dir(3).join("chain.redb")).expect("delete the chain database");
    net.restart(3).expect("restart");
    wait_log(&net, 3, "following without signing").await;
    wait_log(&net, 3, "abstaining").await;
    for i in 0..3 {
        net.restart(i).expect("restart");
    }
    let tip = {
        net.wait_height(&[0], 7, WAIT).await;
        net.client(0).head().await.unwrap().height
    };
    // It catches up through sync, then takes part again.
    net.wait_height(&[3], tip, WAIT).await;
    let h = signs_again(&net, 3, 0, tip).await;
    net.assert_same_chain(&[0, 1, 2, 3], h).await;
    assert!(net.exited(3).is_none(), "it never halted:\n{}", net.log(3));
    net.assert_nothing_signed_twice(&[0, 1, 2, 3]);

    // Losing the record itself, with the chain database still there, is refused outright.
    net.kill(2);
    std::fs::remove_file(net.data_dir(2).join("sign-state.json")).expect("delete the record");
    net.restart(2).expect("restart");
    let status = wait_exit(&mut net, 2).await;
    assert!(!status.success());
    assert!(net.log(2).contains("--new-sign-state"), "{}", net.log(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_decision_and_store_or_after_proposing_signs_nothing_twice() {
    let mut extra = vec![Vec::new(); 4];
    extra[2] = args(&["--crash-at", "decided:5"]);
    extra[3] = args(&["--crash-at", "proposed:5"]);
    let mut net = Coordinators::start_with(4, BLOCK_TIME_MS, 1, extra).expect("start");
    for i in [2, 3] {
        wait_exit(&mut net, i).await;
        net.set_args(i, Vec::new());
    }
    assert!(net.log(2).contains("between the decision and the store"));
    assert!(net.log(3).contains("after proposing"));
    for i in [2, 3] {
        net.restart(i).expect("restart");
    }
    // Two of four were down: nothing could be decided without them; now all go on.
    net.wait_height(&[0, 1, 2, 3], 12, WAIT).await;
    net.assert_same_chain(&[0, 1, 2, 3], 12).await;
    for i in [2, 3] {
        signs_again(&net, i, 0, 5).await;
    }
    assert!(net.assert_nothing_signed_twice(&[0, 1, 2, 3]) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_equivocating_proposer_neither_forks_nor_stalls_the_others() {
    let mut extra = vec![Vec::new(); 4];
    extra[0] = args(&["--fault", "equivocate"]);
    let net = Coordinators::start_with(4, BLOCK_TIME_MS, 1, extra).expect("start");
    net.wait_height(&[1, 2, 3], 16, WAIT).await;
    net.assert_same_chain(&[0, 1, 2, 3], 16).await;
    assert!(
        net.log(0).contains("equivocating"),
        "the faulty coordinator had turns and equivocated:\n{}",
        net.log_tails(20)
    );
    net.assert_nothing_signed_twice(&[1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_casting_two_votes_at_every_step_neither_forks_nor_stalls_the_others() {
    // With one Byzantine coordinator of four no fork is possible if the engine is right; this
    // shows that real equivocations reach the honest ones and neither split nor stop them.
    let mut extra = vec![Vec::new(); 4];
    extra[0] = args(&["--fault", "equivocate-votes"]);
    let net = Coordinators::start_with(4, BLOCK_TIME_MS, 1, extra).expect("start");
    net.wait_height(&[1, 2, 3, 0], 16, WAIT).await;
    net.assert_same_chain(&[1, 2, 3, 0], 16).await;
    let log = net.log(0);
    assert!(
        !log.contains('\x1b'),
        "a log written to a file is plain text, without terminal colours"
    );
    for kind in ["Prevote", "Precommit"] {
        assert!(
            log.lines()
                .any(|l| l.contains("equivocating: a conflicting vote") && l.contains(kind)),
            "the faulty coordinator contradicted its {kind}s:\n{}",
            net.log_tails(20)
        );
    }
    // Each honest coordinator verified both of the equivocator's votes at many places, for
    // prevotes and for precommits.
    let equivocator = net.keys[0].address();
    for i in 1..4 {
        let places = net.equivocations_received(i, &equivocator);
        assert!(
            places.len() >= 5,
            "coordinator {i} received only {places:?}"
        );
        for kind in ["Prevote", "Precommit"] {
            assert!(
                places.iter().any(|(_, _, k)| k == kind),
                "coordinator {i} received no {kind} equivocation: {places:?}"
            );
        }
    }
    // Whether an equivocator's precommit lands in a certificate depends on which of its two
    // votes reaches a node first and on whether the three honest ones had already decided: a
    // race, so it is not asserted (a CI run saw no such certificate in 16 heights). What must
    // hold is above (one chain, both kinds of equivocation received) and below (no honest
    // coordinator signed twice).
    net.assert_nothing_signed_twice(&[1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_flooding_proposal_parts_does_not_stop_finality() {
    let mut extra = vec![Vec::new(); 4];
    extra[0] = args(&["--fault", "flood-parts"]);
    let net = Coordinators::start_with(4, BLOCK_TIME_MS, 1, extra).expect("start");
    net.wait_height(&[1, 2, 3], 16, WAIT).await;
    let chain = net.assert_same_chain(&[1, 2, 3], 16).await;
    // The honest proposers' blocks got through the flood.
    let flooder = net.keys[0].address();
    assert!(
        chain.iter().filter(|b| b.proposer != flooder).count() >= 10,
        "honest proposals were crowded out"
    );
    let metrics = net.client(1).metrics().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pot_rejected_proposal_parts_total") && !l.ends_with(" 0")),
        "the flood reached the others and was dropped:\n{metrics}"
    );
}
