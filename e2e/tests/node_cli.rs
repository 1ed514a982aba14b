//! The node CLI from outside: keys and a genesis made by `pot-node` give a chain that the ledger
//! state machine runs.

use std::process::Command;

use pot_protocol::tx::TxBody;
use pot_protocol::{Amount, Genesis, ProposerKey, State, Tx, build_block};

fn run(bin: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("running pot-node");
    assert!(
        out.status.success(),
        "pot-node {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn keygen_genesis_and_a_first_block() {
    let bin = pot_e2e::pot_node_binary();
    let dir = tempfile::tempdir().unwrap();
    let coord = dir.path().join("coord.json");
    let alice = dir.path().join("alice.json");
    let coord_addr = run(&bin, &["keygen", "--out", coord.to_str().unwrap()]);
    let alice_addr = run(&bin, &["keygen", "--out", alice.to_str().unwrap()]);
    assert_eq!(
        run(&bin, &["address", "--key", alice.to_str().unwrap()]),
        alice_addr
    );

    let genesis_path = dir.path().join("genesis.yaml");
    run(
        &bin,
        &[
            "genesis",
            "--chain-id",
            "pot-e2e",
            "--time-ms",
            "1000",
            "--coordinator-key",
            coord.to_str().unwrap(),
            "--fund",
            &format!("{}=5000", alice_addr.trim()),
            "--out",
            genesis_path.to_str().unwrap(),
        ],
    );
    let checked = run(
        &bin,
        &["genesis", "--check", genesis_path.to_str().unwrap()],
    );
    let genesis = Genesis::from_yaml(&std::fs::read_to_string(&genesis_path).unwrap()).unwrap();
    assert!(checked.contains(&genesis.hash().to_hex()), "{checked}");
    assert_eq!(genesis.coordinators[0].address.to_hex(), coord_addr.trim());

    // The key file (JSON: address, secret_key) signs a transfer the genesis state accepts.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let key: pot_protocol::SecretKey = doc["secret_key"].as_str().unwrap().parse().unwrap();
    assert_eq!(key.address().to_hex(), doc["address"].as_str().unwrap());
    let mut state = State::from_genesis(&genesis);
    let tx = Tx {
        chain_id: "pot-e2e".into(),
        signer: key.address(),
        nonce: 0,
        fee: genesis.params.tx_fee,
        body: TxBody::Transfer {
            to: genesis.coordinators[0].address,
            amount: Amount(1200),
        },
    }
    .sign(&key);
    // The coordinator's key file proposes (its VRF key is the one the genesis names).
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&coord).unwrap()).unwrap();
    let coord_key: pot_protocol::SecretKey = doc["secret_key"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        genesis.coordinators[0].vrf_key,
        coord_key.vrf().public(),
        "the genesis names the coordinator's VRF key"
    );
    let built = build_block(&state, &ProposerKey::new(&coord_key), 2000, [tx]);
    assert!(built.rejected.is_empty(), "{:?}", built.rejected);
    state.apply_block(&built.block).unwrap();
    // 5,000 less 1,200 sent and the fee, burned.
    assert_eq!(
        state.balance(&key.address()),
        Amount(3800 - genesis.params.tx_fee.0)
    );
}

#[test]
fn bad_genesis_is_refused_with_the_reason() {
    let bin = pot_e2e::pot_node_binary();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "chain_id: UPPER\ngenesis_time_ms: 0\ncoordinators: []\n",
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["genesis", "--check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chain_id"), "{err}");
}
