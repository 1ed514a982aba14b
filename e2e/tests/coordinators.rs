//! Coordinators as real processes on loopback, agreeing on blocks with Malachite: agreement,
//! exactly-once inclusion, crash and catch-up, no progress (and no fork) without a quorum, and
//! faulty proposals that never get finalized.

use std::collections::HashMap;
use std::time::Duration;

use pot_e2e::coordinators::Coordinators;
use pot_protocol::api::{BlockInfo, TxStatus};
use pot_protocol::tx::{Tx, TxBody};
use pot_protocol::{Amount, Hash, SecretKey, SignedTx};

const BLOCK_TIME_MS: u64 = 200;
const WAIT: Duration = Duration::from_secs(90);

async fn wait_height(net: &Coordinators, nodes: &[usize], height: u64) {
    net.wait_height(nodes, height, WAIT).await
}

async fn assert_same_chain(net: &Coordinators, nodes: &[usize], upto: u64) -> Vec<BlockInfo> {
    net.assert_same_chain(nodes, upto).await
}

fn transfer(from: &SecretKey, nonce: u64, to: &SecretKey, amount: u64) -> SignedTx {
    Tx {
        chain_id: "pot-e2e".into(),
        signer: from.address(),
        nonce,
        fee: pot_protocol::Params::default().tx_fee,
        body: TxBody::Transfer {
            to: to.address(),
            amount: Amount(amount),
        },
    }
    .sign(from)
}

#[tokio::test(flavor = "multi_thread")]
async fn four_coordinators_agree_and_include_each_transaction_once() {
    let net = Coordinators::start(4, BLOCK_TIME_MS, 5).expect("start");
    wait_height(&net, &[0, 1, 2, 3], 2).await;

    // Each of four accounts sends through a different coordinator; one transaction is sent to
    // all four.
    let mut sent = Vec::new();
    for (i, from) in net.accounts[..4].iter().enumerate() {
        for nonce in 0..3 {
            let tx = transfer(from, nonce, &net.accounts[4], 10 + nonce);
            net.client(i).submit(&tx).await.expect("admitted");
            sent.push(tx.hash());
        }
    }
    let everywhere = transfer(&net.accounts[4], 0, &net.accounts[0], 7);
    for i in 0..4 {
        net.client(i).submit(&everywhere).await.expect("admitted");
    }
    sent.push(everywhere.hash());

    let mut last = 0;
    for hash in &sent {
        match net.client(0).wait_included(hash, WAIT).await {
            Ok(TxStatus::Included { height, .. }) => last = last.max(height),
            other => panic!("{hash}: {other:?}\n{}", net.log_tails(30)),
        }
    }
    // Every block from the first to well past the last inclusion, so a second copy of a
    // transaction anywhere in the chain would be seen.
    let upto = last.max(20) + 5;
    wait_height(&net, &[0, 1, 2, 3], upto).await;
    let chain = assert_same_chain(&net, &[0, 1, 2, 3], upto).await;

    let mut seen: HashMap<Hash, u32> = HashMap::new();
    for b in &chain {
        for t in &b.txs {
            *seen.entry(t.hash).or_default() += 1;
        }
        assert!(
            b.committed_by.len() >= 3,
            "height {} committed by {} of 4",
            b.height,
            b.committed_by.len()
        );
    }
    for hash in &sent {
        assert_eq!(seen.get(hash), Some(&1), "{hash} included exactly once");
    }
    let receiver = net
        .client(2)
        .account(&net.accounts[4].address())
        .await
        .unwrap();
    let received: u64 = 4 * (10 + 11 + 12);
    assert_eq!(
        receiver.balance,
        // It sent 7 and paid one fee.
        Amount(
            pot_e2e::coordinators::ACCOUNT_FUNDS.0 + received
                - 7
                - pot_protocol::Params::default().tx_fee.0
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_sent_to_one_coordinator_is_pending_at_the_others_before_its_block() {
    // Long blocks leave a window in which the transaction can only be at the other
    // coordinators by gossip: without it they learn of it when it is in a block.
    let net = Coordinators::start(4, 3_000, 2).expect("start");
    wait_height(&net, &[0, 1, 2, 3], 1).await;
    // Wait until gossip is up (connections and the topic's mesh take a redial period or two):
    // probes from another account until one reaches every other coordinator before its block.
    let mut probe_nonce = 0;
    let up_by = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < up_by,
            "gossip never came up\n{}",
            net.log_tails(20)
        );
        let h = net.client(0).head().await.unwrap().height;
        wait_height(&net, &[0], h + 1).await;
        let probe = transfer(&net.accounts[1], probe_nonce, &net.keys[0], 1);
        probe_nonce += 1;
        net.client(0).submit(&probe).await.expect("probe admitted");
        let mut reached = 0;
        for i in 1..4 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while tokio::time::Instant::now() < deadline {
                if let Ok(TxStatus::Pending) = net.client(i).tx(&probe.hash()).await {
                    reached += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Every probe ends in a block, so the next one never waits on a nonce gap.
        net.client(0)
            .wait_included(&probe.hash(), WAIT)
            .await
            .expect("probe included");
        if reached == 3 {
            break;
        }
    }
    // Submit just after a block, so the next one is a whole block time away.
    let h = net.client(0).head().await.unwrap().height;
    wait_height(&net, &[0], h + 1).await;
    let tx = transfer(&net.accounts[0], 0, &net.keys[0], 1);
    net.client(0).submit(&tx).await.expect("admitted");
    let mut pending_at = Vec::new();
    for i in 1..4 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match net.client(i).tx(&tx.hash()).await {
                Ok(TxStatus::Pending) => {
                    pending_at.push(i);
                    break;
                }
                _ if tokio::time::Instant::now() > deadline => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    assert_eq!(
        pending_at,
        vec![1, 2, 3],
        "gossip reached only these\n{}",
        net.log_tails(20)
    );
    // A second transaction from the same account may now go to another coordinator: its
    // mempool already holds nonce 0.
    let next = transfer(&net.accounts[0], 1, &net.keys[0], 1);
    net.client(2)
        .submit(&next)
        .await
        .expect("nonce 1 admitted after gossip");
    for hash in [tx.hash(), next.hash()] {
        assert!(matches!(
            net.client(3).wait_included(&hash, WAIT).await,
            Ok(TxStatus::Included { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_coordinator_restarts_from_disk_and_catches_up() {
    let mut net = Coordinators::start(4, BLOCK_TIME_MS, 1).expect("start");
    wait_height(&net, &[0, 1, 2, 3], 5).await;
    net.kill(3);
    let h = net.client(0).head().await.unwrap().height;
    // The other three keep finalizing.
    wait_height(&net, &[0, 1, 2], h + 10).await;
    net.restart(3).expect("restart");
    let target = net.client(0).head().await.unwrap().height + 3;
    wait_height(&net, &[0, 1, 2, 3], target).await;
    assert_same_chain(&net, &[0, 1, 2, 3], target).await;
    assert!(net.assert_nothing_signed_twice(&[0, 1, 2, 3]) > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_quorum_nothing_is_finalized_and_nothing_forks() {
    let mut net = Coordinators::start(4, BLOCK_TIME_MS, 1).expect("start");
    wait_height(&net, &[0, 1, 2, 3], 5).await;
    net.kill(2);
    net.kill(3);
    // A decision in flight may still land; after that, two of four (1/2 < 2/3) cannot decide.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled = net.client(0).head().await.unwrap().height;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in [0, 1] {
        let h = net.client(i).head().await.unwrap().height;
        assert!(
            h <= stalled + 1,
            "coordinator {i} moved from {stalled} to {h} without a quorum"
        );
    }
    let h0 = net.client(0).head().await.unwrap().height;
    let h1 = net.client(1).head().await.unwrap().height;
    assert_same_chain(&net, &[0, 1], h0.min(h1)).await;

    net.restart(2).expect("restart");
    net.restart(3).expect("restart");
    wait_height(&net, &[0, 1, 2, 3], stalled + 5).await;
    assert_same_chain(&net, &[0, 1, 2, 3], stalled + 5).await;
}

async fn faulty_proposer_is_never_finalized(fault: &str) {
    let mut extra = vec![Vec::new(); 4];
    extra[0] = vec!["--fault".to_string(), fault.to_string()];
    let net = Coordinators::start_with(4, BLOCK_TIME_MS, 1, extra).expect("start");
    wait_height(&net, &[1, 2, 3], 12).await;
    let chain = assert_same_chain(&net, &[1, 2, 3], 12).await;
    let faulty = net.keys[0].address();
    for b in &chain {
        assert_ne!(
            b.proposer, faulty,
            "block {} proposed by the faulty coordinator was finalized",
            b.height
        );
    }
    // Its turns happened and were voted down: some heights needed a second round.
    assert!(
        chain.iter().any(|b| b.round > 0),
        "the faulty coordinator never got a turn"
    );
    net.assert_nothing_signed_twice(&[1, 2, 3]);
    let metrics = net.client(1).metrics().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pot_rejected_proposals_total") && !l.ends_with(" 0")),
        "honest coordinators count rejected proposals:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proposal_with_a_wrong_state_root_is_not_finalized() {
    faulty_proposer_is_never_finalized("wrong-state-root").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proposal_with_an_invalid_transaction_is_not_finalized() {
    faulty_proposer_is_never_finalized("invalid-tx").await;
}
