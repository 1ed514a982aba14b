//! Funding a fleet from a paying key: each miner is topped up to what it needs to take tasks.
//!
//! Transfers are signed with consecutive nonces from the payer's account nonce as the chain
//! reports it, so a reconcile repeated before they land signs the same nonces again: the
//! chain applies at most one transaction per nonce, and a repeat never pays twice.

use pot_protocol::api::AccountInfo;
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

/// The penalties the chain has recorded against an account that its own pod caused: claims
/// found invalid and assignments it never reported on. Reports against the majority are not
/// counted: a dishonest majority would make honest validators pay for it twice.
pub fn penalties(acc: &AccountInfo) -> u64 {
    let r = &acc.reputation;
    r.claims_rejected + r.reports_missed
}

/// What each fundable pod holds (balance, both bonds and unbonding stake; nothing for an
/// account the chain does not know yet), and the pods penalised more than `max_penalties`
/// times, which are not funded.
pub fn holdings(
    accounts: &[(Address, Option<AccountInfo>)],
    max_penalties: u64,
) -> (Vec<(Address, Amount)>, Vec<Address>) {
    let mut holdings = Vec::with_capacity(accounts.len());
    let mut withheld = Vec::new();
    for (a, acc) in accounts {
        match acc {
            Some(acc) if penalties(acc) > max_penalties => withheld.push(*a),
            // Unbonding stake counts: it returns by itself, and paying it again would fund a
            // drained validator twice.
            Some(acc) => holdings.push((
                *a,
                Amount(
                    acc.balance.0 + acc.miner_bond.0 + acc.validator_bond.0 + super::unbonding(acc),
                ),
            )),
            None => holdings.push((*a, Amount::ZERO)),
        }
    }
    (holdings, withheld)
}

/// What one funding pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Funded {
    pub sent: usize,
    /// Pods held back: penalised more than the fleet's `maxPenalties`.
    pub withheld: Vec<Address>,
}

/// Top up `miners` to `target` from `payer`, except those penalised more than
/// `max_penalties` times.
pub async fn fund(
    node: &Client,
    payer: &SecretKey,
    chain: (&str, Amount),
    miners: &[Address],
    target: Amount,
    max_penalties: u64,
) -> Result<Funded, String> {
    let (chain_id, fee) = chain;
    let e = |e: ClientError| e.to_string();
    // The payer first, then the miners: a transfer that lands in between then shows in the
    // holdings (read later), never only in the nonce, so it is not paid again.
    let account = node.account(&payer.address()).await.map_err(e)?;
    let mut accounts = Vec::with_capacity(miners.len());
    for a in miners {
        match node.account(a).await {
            Ok(acc) => accounts.push((*a, Some(acc))),
            Err(ClientError::Api { status: 404, .. }) => accounts.push((*a, None)),
            Err(err) => return Err(err.to_string()),
        }
    }
    let (holdings, withheld) = holdings(&accounts, max_penalties);
    let due = shortfalls(&holdings, target);
    if due.is_empty() {
        return Ok(Funded { sent: 0, withheld });
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
    Ok(Funded { sent, withheld })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(balance: u64, validator_bond: u64, missed: u64) -> AccountInfo {
        AccountInfo {
            address: SecretKey::generate().address(),
            balance: Amount(balance),
            nonce: 0,
            miner_bond: Amount(0),
            validator_bond: Amount(validator_bond),
            miner_reserved: Amount(0),
            validator_reserved: Amount(0),
            unbonding: Vec::new(),
            reputation: pot_protocol::state::Reputation {
                reports_missed: missed,
                ..Default::default()
            },
        }
    }

    /// A pod the chain keeps penalising is not refilled: a broken or hostile validator
    /// would otherwise turn the paying key into its slashes.
    #[test]
    fn a_pod_penalised_past_the_limit_is_held_back() {
        let (a, b, c) = (
            SecretKey::generate().address(),
            SecretKey::generate().address(),
            SecretKey::generate().address(),
        );
        let accounts = [
            (a, Some(account(5, 10, 3))),
            (b, Some(account(0, 0, 4))),
            (c, None),
        ];
        let (have, withheld) = holdings(&accounts, 3);
        assert_eq!(have, vec![(a, Amount(15)), (c, Amount(0))]);
        assert_eq!(withheld, vec![b]);
        let due = shortfalls(&have, Amount(100));
        assert!(due.iter().all(|(to, _)| *to != b));
    }

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
