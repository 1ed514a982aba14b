//! Builds a genesis file from command-line pieces (`ADDR=AMOUNT`, `ADDR:ROLE=AMOUNT`).

use anyhow::{Context, bail};
use pot_protocol::genesis::{Coordinator, GenesisBalance, GenesisStake};
use pot_protocol::tx::Role;
use pot_protocol::{Amount, Genesis, Params, SecretKey};

/// Parse `ADDRESS=AMOUNT`.
pub fn parse_balance(s: &str) -> anyhow::Result<GenesisBalance> {
    let (addr, amount) = s
        .split_once('=')
        .with_context(|| format!("{s:?}: expected ADDRESS=AMOUNT"))?;
    Ok(GenesisBalance {
        address: addr.parse().with_context(|| format!("{s:?}: address"))?,
        amount: Amount(amount.parse().with_context(|| format!("{s:?}: amount"))?),
    })
}

/// Parse `ADDRESS:ROLE=AMOUNT` with ROLE `miner` or `validator`.
pub fn parse_stake(s: &str) -> anyhow::Result<GenesisStake> {
    let (left, amount) = s
        .split_once('=')
        .with_context(|| format!("{s:?}: expected ADDRESS:ROLE=AMOUNT"))?;
    let (addr, role) = left
        .split_once(':')
        .with_context(|| format!("{s:?}: expected ADDRESS:ROLE=AMOUNT"))?;
    let role = match role {
        "miner" => Role::Miner,
        "validator" => Role::Validator,
        other => bail!("{s:?}: role {other:?} is neither miner nor validator"),
    };
    Ok(GenesisStake {
        address: addr.parse().with_context(|| format!("{s:?}: address"))?,
        role,
        amount: Amount(amount.parse().with_context(|| format!("{s:?}: amount"))?),
    })
}

/// Assemble and validate a genesis. Each coordinator is named by its key, from which its
/// address and VRF public key come.
pub fn build(
    chain_id: String,
    genesis_time_ms: u64,
    params: Params,
    coordinators: &[SecretKey],
    balances: Vec<GenesisBalance>,
    stakes: Vec<GenesisStake>,
) -> anyhow::Result<Genesis> {
    let g = Genesis {
        chain_id,
        genesis_time_ms,
        params,
        balances,
        stakes,
        coordinators: coordinators.iter().map(Coordinator::for_key).collect(),
    };
    g.validate()?;
    Ok(g)
}

/// What the development chain's one account starts with.
pub const DEV_FUNDS: Amount = Amount(1_000_000_000);

/// The genesis of a development chain: `key` is its one coordinator and holds [`DEV_FUNDS`].
pub fn dev(key: &pot_protocol::SecretKey, genesis_time_ms: u64) -> anyhow::Result<Genesis> {
    build(
        "pot-dev".into(),
        genesis_time_ms,
        Params::default(),
        std::slice::from_ref(key),
        vec![GenesisBalance {
            address: key.address(),
            amount: DEV_FUNDS,
        }],
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pieces_and_names_errors() {
        let a = SecretKey::from_seed([1; 32]).address();
        assert_eq!(
            parse_balance(&format!("{a}=10")).unwrap().amount,
            Amount(10)
        );
        let s = parse_stake(&format!("{a}:validator=5")).unwrap();
        assert_eq!((s.role, s.amount), (Role::Validator, Amount(5)));
        let e = format!("{:#}", parse_stake(&format!("{a}:boss=5")).unwrap_err());
        assert!(e.contains("neither miner nor validator"), "{e}");
        let e = format!("{:#}", parse_balance("nothex=5").unwrap_err());
        assert!(e.contains("address"), "{e}");
        assert!(parse_balance(&format!("{a}=-1")).is_err());
    }
}
