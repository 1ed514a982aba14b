//! Chain parameters and the genesis file (YAML), the only input that fixes a chain besides its
//! blocks.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::beacon::VrfPublicKey;
use crate::crypto::Address;
use crate::hash::Hash;
use crate::tx::{Role, limits};
use crate::units::{Amount, Ppm};

/// Rules every node must agree on. Fractions are parts per million. The economic rules these
/// feed are written at the top of `ledger/finalize.rs`.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Target time between blocks (the consensus engine paces itself by it).
    pub block_time_ms: u64,
    /// Blocks an unbonding waits before the funds return to the balance.
    pub unbonding_blocks: u64,
    /// Shortest and longest allowed phase window, in blocks.
    pub min_window: u32,
    pub max_window: u32,
    /// The least fee a transaction may offer. Fees are burned (never paid to the proposer, who
    /// could otherwise fill its own blocks for free).
    pub tx_fee: Amount,
    /// Part of a bounty burned when the task is submitted, on top of the escrowed bounty.
    pub task_burn: Ppm,
    /// The mining reward: new supply paid to a task's winner, this part of the bounty. At most
    /// `task_burn`, so a task never mints more than it burned and cannot be farmed.
    pub mint_rate: Ppm,
    /// Most new supply all tasks finalized in one block may mint together.
    pub max_mint_per_block: Amount,
    /// Part of a bounty paid to validators whose reports matched their claims' outcomes,
    /// whether or not the task has a winner.
    pub validator_share: Ppm,
    /// Part of an assignment's collateral taken from a validator that never committed or never
    /// revealed its report.
    pub validator_slash: Ppm,
    /// Part of the disputed validator's loss in an upheld challenge paid to the challenger who
    /// proved it wrong; below one whole, so challenging one's own validator always loses.
    pub challenger_reward: Ppm,
    /// Part of a challenge's deposit shared by the committee members whose votes matched the
    /// outcome, upheld or rejected alike.
    pub committee_reward: Ppm,
    /// Deposit escrowed by a challenge, doubled for each challenge the task already has (the
    /// rules of what it pays are in `ledger/finalize.rs`).
    pub challenge_deposit: Amount,
    /// Least deposit escrowed with a claim commitment (it is at least the bounty over
    /// `max_claims_per_task` too): back when the claim is revealed, burned when it never is,
    /// so claim slots cannot be squatted cheaply.
    pub claim_deposit: Amount,
    pub min_miner_bond: Amount,
    pub min_validator_bond: Amount,
    pub min_bounty: Amount,
    /// Shortest training run a task may ask for, in steps (minimum work).
    pub min_steps: u64,
    /// Validators assigned to each claim (`v`); also the size of a challenge committee.
    pub validators_per_claim: u32,
    /// Segments each validator replays per claim (`s`).
    pub segments_per_claim: u32,
    pub max_claims_per_task: u32,
    pub max_challenges_per_task: u32,
    /// Longest training run a task may ask for, in steps.
    pub max_steps: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            block_time_ms: 1000,
            unbonding_blocks: 100,
            min_window: 1,
            max_window: 10_000,
            tx_fee: Amount(10),
            task_burn: Ppm(50_000),
            mint_rate: Ppm(40_000),
            max_mint_per_block: Amount(10_000_000),
            validator_share: Ppm(100_000),
            validator_slash: Ppm(100_000),
            challenger_reward: Ppm(500_000),
            committee_reward: Ppm(200_000),
            challenge_deposit: Amount(100),
            claim_deposit: Amount(100),
            min_miner_bond: Amount(1_000),
            min_validator_bond: Amount(1_000),
            min_bounty: Amount(1_000),
            min_steps: 100,
            validators_per_claim: 3,
            segments_per_claim: 5,
            max_claims_per_task: 32,
            max_challenges_per_task: 16,
            max_steps: 10_000_000,
        }
    }
}

impl Params {
    /// Reports that decide a claim: a strict majority of the `v` assigned validators.
    pub fn quorum(&self) -> u32 {
        self.validators_per_claim / 2 + 1
    }
}

/// What is wrong with a genesis file or its parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("genesis YAML: {0}")]
    Yaml(String),
    #[error("chain_id must be 1..={max} characters of [a-z0-9-], got {0:?}", max = limits::MAX_CHAIN_ID)]
    BadChainId(String),
    #[error("parameter {name} = {value} is out of range: {why}")]
    BadParam {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("address {0} appears twice in {1}")]
    Duplicate(Address, &'static str),
    #[error("genesis has no coordinators")]
    NoCoordinators,
    #[error("coordinator {0} has zero voting power")]
    ZeroPower(Address),
    #[error("coordinator {0} has an invalid vrf_key (not a ristretto255 point)")]
    BadVrfKey(Address),
    #[error("total supply overflows")]
    SupplyOverflow,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisBalance {
    pub address: Address,
    pub amount: Amount,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisStake {
    pub address: Address,
    pub role: Role,
    pub amount: Amount,
}

/// A member of the coordinator set, with its voting power in consensus and the VRF key its
/// blocks' beacons must verify under.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinator {
    pub address: Address,
    #[serde(default = "one")]
    pub power: u64,
    pub vrf_key: VrfPublicKey,
}

impl Coordinator {
    /// The coordinator entry for an account key, power one.
    pub fn for_key(key: &crate::SecretKey) -> Coordinator {
        Coordinator {
            address: key.address(),
            power: 1,
            vrf_key: key.vrf().public(),
        }
    }
}

fn one() -> u64 {
    1
}

/// The genesis file.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub chain_id: String,
    /// Unix milliseconds; block 1 must be later.
    pub genesis_time_ms: u64,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub balances: Vec<GenesisBalance>,
    /// Bonds that exist from the start (validators of a new network, for instance).
    #[serde(default)]
    pub stakes: Vec<GenesisStake>,
    pub coordinators: Vec<Coordinator>,
}

impl Genesis {
    /// Parse and validate a genesis file.
    pub fn from_yaml(text: &str) -> Result<Genesis, GenesisError> {
        let g: Genesis =
            serde_yaml::from_str(text).map_err(|e| GenesisError::Yaml(e.to_string()))?;
        g.validate()?;
        Ok(g)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("genesis serialises")
    }

    /// The genesis hash: the "previous block hash" of block 1, so different genesis files give
    /// different chains even with the same chain id.
    pub fn hash(&self) -> Hash {
        Hash::of_value("pot/genesis", self)
    }

    /// Everything that exists at height 0: balances plus bonds.
    pub fn total_supply(&self) -> Result<Amount, GenesisError> {
        self.balances
            .iter()
            .map(|b| b.amount)
            .chain(self.stakes.iter().map(|s| s.amount))
            .try_fold(Amount::ZERO, Amount::checked_add)
            .ok_or(GenesisError::SupplyOverflow)
    }

    pub fn validate(&self) -> Result<(), GenesisError> {
        let id_ok = !self.chain_id.is_empty()
            && self.chain_id.len() <= limits::MAX_CHAIN_ID
            && self
                .chain_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(GenesisError::BadChainId(self.chain_id.clone()));
        }
        self.params.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        for b in &self.balances {
            if !seen.insert(b.address) {
                return Err(GenesisError::Duplicate(b.address, "balances"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.stakes {
            if !seen.insert((s.address, s.role)) {
                return Err(GenesisError::Duplicate(s.address, "stakes"));
            }
        }
        if self.coordinators.is_empty() {
            return Err(GenesisError::NoCoordinators);
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.coordinators {
            if !seen.insert(c.address) {
                return Err(GenesisError::Duplicate(c.address, "coordinators"));
            }
            if c.power == 0 {
                return Err(GenesisError::ZeroPower(c.address));
            }
            if !c.vrf_key.is_valid() {
                return Err(GenesisError::BadVrfKey(c.address));
            }
        }
        self.total_supply()?;
        Ok(())
    }
}

/// Parse and validate chain parameters alone (for `pot-node genesis --params`).
pub fn params_from_yaml(text: &str) -> Result<Params, GenesisError> {
    let p: Params = serde_yaml::from_str(text).map_err(|e| GenesisError::Yaml(e.to_string()))?;
    p.validate()?;
    Ok(p)
}

impl Params {
    pub fn validate(&self) -> Result<(), GenesisError> {
        fn bad(name: &'static str, value: impl ToString, why: &'static str) -> GenesisError {
            GenesisError::BadParam {
                name,
                value: value.to_string(),
                why,
            }
        }
        for (name, p) in [
            ("task_burn", self.task_burn),
            ("mint_rate", self.mint_rate),
            ("validator_share", self.validator_share),
            ("validator_slash", self.validator_slash),
            ("challenger_reward", self.challenger_reward),
            ("committee_reward", self.committee_reward),
        ] {
            if !p.is_valid() {
                return Err(bad(name, p.0, "a fraction in ppm must be at most 1000000"));
            }
        }
        if self.mint_rate > self.task_burn {
            return Err(bad(
                "mint_rate",
                self.mint_rate.0,
                "must not exceed task_burn: a task may not mint more than it burned, or posting \
                 and winning one's own tasks would pay",
            ));
        }
        if self.challenger_reward.0 >= 1_000_000 {
            return Err(bad(
                "challenger_reward",
                self.challenger_reward.0,
                "must be below 1000000, or challenging one's own validator would pay",
            ));
        }
        if self.max_challenges_per_task > 32 {
            return Err(bad(
                "max_challenges_per_task",
                self.max_challenges_per_task,
                "must be at most 32 (each challenge's deposit doubles)",
            ));
        }
        if self.min_bounty == Amount::ZERO {
            return Err(bad("min_bounty", 0, "must be positive"));
        }
        if self.min_steps == 0 || self.min_steps > self.max_steps {
            return Err(bad(
                "min_steps",
                self.min_steps,
                "must be at least 1 and at most max_steps",
            ));
        }
        if self.block_time_ms == 0 {
            return Err(bad("block_time_ms", 0, "must be positive"));
        }
        if self.min_window == 0 || self.min_window > self.max_window {
            return Err(bad(
                "min_window",
                self.min_window,
                "must be at least 1 and at most max_window",
            ));
        }
        if self.validators_per_claim == 0 {
            return Err(bad("validators_per_claim", 0, "must be at least 1"));
        }
        if self.segments_per_claim == 0 {
            return Err(bad("segments_per_claim", 0, "must be at least 1"));
        }
        if self.max_claims_per_task == 0 {
            return Err(bad("max_claims_per_task", 0, "must be at least 1"));
        }
        if self.max_steps == 0 {
            return Err(bad("max_steps", 0, "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn addr(i: u8) -> Address {
        SecretKey::from_seed([i; 32]).address()
    }

    fn sample() -> Genesis {
        Genesis {
            chain_id: "pot-test".into(),
            genesis_time_ms: 1_000,
            params: Params::default(),
            balances: vec![GenesisBalance {
                address: addr(1),
                amount: Amount(500),
            }],
            stakes: vec![GenesisStake {
                address: addr(2),
                role: Role::Validator,
                amount: Amount(2_000),
            }],
            coordinators: vec![Coordinator::for_key(&SecretKey::from_seed([3; 32]))],
        }
    }

    #[test]
    fn yaml_round_trip() {
        let g = sample();
        let back = Genesis::from_yaml(&g.to_yaml()).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.hash(), g.hash());
        assert_eq!(g.total_supply().unwrap(), Amount(2_500));
    }

    #[test]
    fn minimal_yaml_uses_default_params() {
        let c = Coordinator::for_key(&SecretKey::from_seed([3; 32]));
        let yaml = format!(
            "chain_id: dev\ngenesis_time_ms: 0\ncoordinators:\n  - address: {}\n    vrf_key: {}\n",
            c.address, c.vrf_key
        );
        let g = Genesis::from_yaml(&yaml).unwrap();
        assert_eq!(g.params, Params::default());
        assert_eq!(g.coordinators[0].power, 1);
    }

    #[test]
    fn errors_name_the_problem() {
        let yaml =
            "chain_id: dev\ngenesis_time_ms: 0\ncoordinators: []\nparams:\n  validator_shar: 5\n";
        let err = Genesis::from_yaml(yaml).unwrap_err().to_string();
        assert!(err.contains("validator_shar"), "{err}");

        let mut g = sample();
        g.params.validator_share = Ppm(1_000_001);
        assert!(matches!(
            g.validate(),
            Err(GenesisError::BadParam {
                name: "validator_share",
                ..
            })
        ));

        let mut g = sample();
        g.chain_id = "Bad Id".into();
        assert!(matches!(g.validate(), Err(GenesisError::BadChainId(_))));

        let mut g = sample();
        g.coordinators.clear();
        assert_eq!(g.validate(), Err(GenesisError::NoCoordinators));

        let mut g = sample();
        g.balances.push(g.balances[0].clone());
        assert_eq!(
            g.validate(),
            Err(GenesisError::Duplicate(addr(1), "balances"))
        );

        let mut g = sample();
        g.balances[0].amount = Amount(u64::MAX);
        assert_eq!(g.validate(), Err(GenesisError::SupplyOverflow));

        let mut g = sample();
        g.params.mint_rate = Ppm(g.params.task_burn.0 + 1);
        let err = g.validate().unwrap_err().to_string();
        assert!(
            err.contains("mint_rate") && err.contains("task_burn"),
            "{err}"
        );

        let mut g = sample();
        g.params.challenger_reward = Ppm(1_000_000);
        assert!(matches!(
            g.validate(),
            Err(GenesisError::BadParam {
                name: "challenger_reward",
                ..
            })
        ));

        let mut g = sample();
        g.coordinators[0].vrf_key = VrfPublicKey([0; 32]);
        assert_eq!(g.validate(), Err(GenesisError::BadVrfKey(addr(3))));

        let bad_addr = "chain_id: dev\ngenesis_time_ms: 0\ncoordinators:\n  - address: xyz\n";
        let err = Genesis::from_yaml(bad_addr).unwrap_err().to_string();
        assert!(err.contains("hex"), "{err}");
    }
}
