//! The genesis a `PotNetwork` starts from: the ledger's parameters with the spec's overrides,
//! the coordinators, the faucet and the listed balances. Built once, when the network is
//! created, and kept in a ConfigMap: its hash names the chain.

use pot_protocol::genesis::{Coordinator, GenesisBalance, GenesisError};
use pot_protocol::{Address, Amount, Genesis, Params, Ppm, SecretKey};

use crate::crd::network::GenesisSpec;

/// The ledger's default parameters with every field the spec sets replaced.
pub fn params(spec: &GenesisSpec) -> Params {
    let mut p = Params::default();
    let amount = |v: Option<u64>, d: Amount| v.map(Amount).unwrap_or(d);
    let ppm = |v: Option<f64>, d: Ppm| v.map(fraction_to_ppm).unwrap_or(d);
    p.block_time_ms = spec.block_time_ms.unwrap_or(p.block_time_ms);
    p.unbonding_blocks = spec.unbonding_blocks.unwrap_or(p.unbonding_blocks);
    p.min_window = spec.min_window.unwrap_or(p.min_window);
    p.max_window = spec.max_window.unwrap_or(p.max_window);
    p.tx_fee = amount(spec.tx_fee, p.tx_fee);
    p.task_burn = ppm(spec.task_burn, p.task_burn);
    p.mint_rate = ppm(spec.mint_rate, p.mint_rate);
    p.max_mint_per_block = amount(spec.max_mint_per_block, p.max_mint_per_block);
    p.validator_share = ppm(spec.validator_share, p.validator_share);
    p.validator_slash = ppm(spec.validator_slash, p.validator_slash);
    p.challenger_reward = ppm(spec.challenger_reward, p.challenger_reward);
    p.committee_reward = ppm(spec.committee_reward, p.committee_reward);
    p.challenge_deposit = amount(spec.challenge_deposit, p.challenge_deposit);
    p.claim_deposit = amount(spec.claim_deposit, p.claim_deposit);
    p.min_miner_bond = amount(spec.min_miner_bond, p.min_miner_bond);
    p.min_validator_bond = amount(spec.min_validator_bond, p.min_validator_bond);
    p.min_bounty = amount(spec.min_bounty, p.min_bounty);
    p.min_steps = spec.min_steps.unwrap_or(p.min_steps);
    p.max_steps = spec.max_steps.unwrap_or(p.max_steps);
    p.validators_per_claim = spec.validators_per_claim.unwrap_or(p.validators_per_claim);
    p.segments_per_claim = spec.segments_per_claim.unwrap_or(p.segments_per_claim);
    p.max_claims_per_task = spec.max_claims_per_task.unwrap_or(p.max_claims_per_task);
    p.max_challenges_per_task = spec
        .max_challenges_per_task
        .unwrap_or(p.max_challenges_per_task);
    p
}

/// A fraction written as a decimal (`0.05`) in the ledger's parts per million.
pub fn fraction_to_ppm(x: f64) -> Ppm {
    Ppm((x.clamp(0.0, 1.0) * 1e6).round() as u32)
}

/// The genesis of a new network, validated as every node will validate it.
pub fn build(
    chain_id: &str,
    time_ms: u64,
    spec: &GenesisSpec,
    coordinators: &[SecretKey],
    faucet: Option<(Address, u64)>,
) -> Result<Genesis, GenesisError> {
    let mut balances = Vec::new();
    for b in &spec.balances {
        let address: Address = b.address.parse().map_err(|_| {
            GenesisError::Yaml(format!("balances: {:?} is not an address", b.address))
        })?;
        balances.push(GenesisBalance {
            address,
            amount: Amount(b.amount),
        });
    }
    if let Some((address, amount)) = faucet {
        balances.push(GenesisBalance {
            address,
            amount: Amount(amount),
        });
    }
    let genesis = Genesis {
        chain_id: chain_id.to_string(),
        genesis_time_ms: time_ms,
        params: params(spec),
        balances,
        stakes: Vec::new(),
        coordinators: coordinators.iter().map(Coordinator::for_key).collect(),
    };
    genesis.validate()?;
    Ok(genesis)
}

/// The chain id of a network that names none: `<namespace>-<name>`, cut to the ledger's
/// limit and to its alphabet.
pub fn default_chain_id(namespace: &str, name: &str) -> String {
    let id: String = format!("{namespace}-{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(pot_protocol::tx::limits::MAX_CHAIN_ID)
        .collect();
    id.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::network::GenesisBalance as SpecBalance;

    #[test]
    fn unset_parameters_keep_the_ledgers_defaults() {
        assert_eq!(params(&GenesisSpec::default()), Params::default());
        let spec = GenesisSpec {
            block_time_ms: Some(500),
            task_burn: Some(0.1),
            mint_rate: Some(0.05),
            min_miner_bond: Some(7),
            ..Default::default()
        };
        let p = params(&spec);
        assert_eq!(p.block_time_ms, 500);
        assert_eq!(p.task_burn, Ppm(100_000));
        assert_eq!(p.mint_rate, Ppm(50_000));
        assert_eq!(p.min_miner_bond, Amount(7));
        assert_eq!(p.tx_fee, Params::default().tx_fee);
    }

    #[test]
    fn a_genesis_names_its_coordinators_faucet_and_balances() {
        let keys = [SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32])];
        let listed = SecretKey::from_seed([3; 32]).address();
        let faucet = SecretKey::from_seed([4; 32]).address();
        let spec = GenesisSpec {
            balances: vec![SpecBalance {
                address: listed.to_hex(),
                amount: 10,
            }],
            ..Default::default()
        };
        let g = build("pot-test", 1_000, &spec, &keys, Some((faucet, 99))).unwrap();
        assert_eq!(g.coordinators.len(), 2);
        assert_eq!(g.coordinators[1].address, keys[1].address());
        assert_eq!(g.total_supply().unwrap(), Amount(109));
        // What every node checks is checked here first, with the node's words.
        let bad = GenesisSpec {
            mint_rate: Some(0.5),
            ..Default::default()
        };
        let err = build("pot-test", 1, &bad, &keys, None).unwrap_err();
        assert!(err.to_string().contains("mint_rate"), "{err}");
    }

    #[test]
    fn a_default_chain_id_is_one_the_ledger_accepts() {
        assert_eq!(default_chain_id("team-a", "dev"), "team-a-dev");
        let long = default_chain_id(&"x".repeat(80), "Net_1");
        assert!(long.len() <= pot_protocol::tx::limits::MAX_CHAIN_ID);
        assert!(
            long.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }
}
