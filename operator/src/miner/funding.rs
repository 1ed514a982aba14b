//! Funding a fleet from a paying key: each miner is topped up to what it needs to take tasks.
//!
//! Transfers are signed with consecutive nonces from the payer's account nonce as the chain
//! reports it, so a reconcile repeated before they land signs the same nonces again: the
//! chain applies at most one transaction per nonce, and a repeat never pays twice.

use pot_protocol::client::{Client, ClientError};
use pot_protocol::tx::{Tx, TxBody};
use pot_protocol::{Address, Amount, SecretKey};

/// What each pod should hold (balance and bonds together): a miner's `stake` and one claim
/// deposit, the `validator_stake` it keeps bonded, and fees for a task's worth of
/// transactions. Zero for a part the pod's role does not use.
pub fn target(
    stake: Amount,
    validator_stake: Amount,
    claim_deposit: Amount,
    tx_fee: Amount,
) -> Amount {
    Amount(stake.0 + validator_stake.0 + claim_deposit.0 + 20 * tx_fee.0)
}

/// The transfers that bring each of `holdings` up to `target`.
pub fn shortfalls(holdings: &[(Address, Amount)], target: Amount) -> Vec<(Address, Amount)> {
    holdings
        .iter()
        .filter(|(_, have)| *have < target)
        .map(|(a, have)| (*a, Amount(target.0 - have.0)))
        .collect()
}

/// Top up `miners` to `target` from `payer`; returns how many transfers were sent.
pub async fn fund(
    node: &Client,
    payer: &SecretKey,
    chain: (&str, Amount),
    miners: &[Address],
    target: Amount,
) -> Result<usize, String> {
    let (chain_id, fee) = chain;
    let e = |e: ClientError| e.to_string();
    // The payer first, then the miners: a transfer that lands in between then shows in the
    // holdings (read later), never only in the nonce, so it is not paid again.
    let account = node.account(&payer.address()).await.map_err(e)?;
    let mut holdings = Vec::with_capacity(miners.len());
    for a in miners {
        let have = match node.account(a).await {
            // Unbonding stake counts: it returns by itself, and paying it again would
            // fund a drained validator twice.
            Ok(acc) => Amount(
                acc.balance.0 + acc.miner_bond.0 + acc.validator_bond.0 + super::unbonding(&acc),
            ),
            Err(ClientError::Api { status: 404, .. }) => Amount::ZERO,
            Err(err) => return Err(err.to_string()),
        };
        holdings.push((*a, have));
    }
    let due = shortfalls(&holdings, target);
    if due.is_empty() {
        return Ok(0);
    }
    let needed: u64 = due.iter().map(|(_, a)| a.0 + fee.0).sum();
    if account.balance.0 < needed {
        return Err(format!(
            "the funding account {} holds {} but the miners need {needed} (with fees)",
            payer.address(),
            account.balance
        ));
    }
    let mut sent = 0;
    for (i, (to, amount)) in due.into_iter().enumerate() {
        let tx = Tx {
            chain_id: chain_id.to_string(),
            signer: payer.address(),
            nonce: account.nonce + i as u64,
            fee,
            body: TxBody::Transfer { to, amount },
        };
        match node.submit(&tx.sign(payer)).await {
            // Also when an earlier reconcile sent the same transaction: the node takes a
            // transaction it already holds as sent.
            Ok(_) => sent += 1,
            Err(err) => return Err(format!("transfer to {to}: {err}")),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_missing_part_is_sent() {
        let (a, b, c) = (
            SecretKey::generate().address(),
            SecretKey::generate().address(),
            SecretKey::generate().address(),
        );
        let due = shortfalls(
            &[(a, Amount(0)), (b, Amount(70)), (c, Amount(150))],
            Amount(100),
        );
        assert_eq!(due, vec![(a, Amount(100)), (b, Amount(30))]);
        assert_eq!(
            target(Amount(50), Amount(0), Amount(10), Amount(1)),
            Amount(80)
        );
        assert_eq!(
            target(Amount(0), Amount(40), Amount(0), Amount(1)),
            Amount(60)
        );
    }
}
