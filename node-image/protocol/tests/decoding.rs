//! Decoding is total and canonical: random bytes never panic, every value round-trips, and no
//! second byte string decodes to the same value.

use pot_protocol::encoding::{DecodeError, decode, encode};
use pot_protocol::merkle::Proof;
use pot_protocol::state::State;
use pot_protocol::tx::*;
use pot_protocol::{Address, Amount, Block, BlockHeader, Fixed, Hash, Signature, SignedTx, Tx};
use proptest::prelude::*;

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}
fn address() -> impl Strategy<Value = Address> {
    any::<[u8; 32]>().prop_map(Address)
}
fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}
fn fixed() -> impl Strategy<Value = Fixed> {
    any::<i64>().prop_map(Fixed)
}
fn amount() -> impl Strategy<Value = Amount> {
    any::<u64>().prop_map(Amount)
}
fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Miner), Just(Role::Validator)]
}
fn dataset() -> impl Strategy<Value = DatasetRef> {
    (text(), hash(), any::<(u8, bool, u32, Option<[u32; 3]>)>()).prop_map(
        |(locator, sha256, (format, labelled, feature_divisor, image))| DatasetRef {
            labels: labelled.then(|| BlobRef {
                locator: locator.clone(),
                sha256,
            }),
            locator,
            sha256,
            format: match format % 3 {
                0 => DataFormat::Csv,
                1 => DataFormat::Safetensors,
                _ => DataFormat::Idx,
            },
            feature_divisor,
            image,
        },
    )
}
fn spec() -> impl Strategy<Value = TaskSpec> {
    (
        text(),
        dataset(),
        prop::collection::vec((text(), fixed(), fixed(), fixed()), 0..4),
        any::<(u64, u64, u64, bool, bool, bool)>(),
        (fixed(), fixed(), any::<(u32, u32, u32, u32, u32)>()),
    )
        .prop_map(
            |(
                model,
                dataset,
                hyper,
                (steps, k, seed, adam, mse, acc),
                (tol, otol, (batch_size, holdout_per_mille, top_q, samples, cpu_threads)),
            )| TaskSpec {
                model,
                dataset,
                optimizer: if adam {
                    Optimizer::AdamW
                } else {
                    Optimizer::Sgd
                },
                loss: if mse {
                    LossKind::Mse
                } else {
                    LossKind::CrossEntropy
                },
                hyper: hyper
                    .into_iter()
                    .map(|(name, min, max, default)| HyperRange {
                        name,
                        min,
                        max,
                        default,
                    })
                    .collect(),
                batch_size,
                steps,
                checkpoint_interval: k,
                seed,
                metric: if acc {
                    MetricKind::Accuracy
                } else {
                    MetricKind::Loss
                },
                holdout_per_mille,
                verification: Verification {
                    replay_tolerance: tol,
                    optimizer_tolerance: otol,
                    top_q,
                    samples,
                    cpu_threads,
                },
            },
        )
}
fn windows() -> impl Strategy<Value = Windows> {
    any::<[u32; 9]>().prop_map(|w| Windows {
        commit: w[0],
        reveal: w[1],
        eval_reveal: w[2],
        report_commit: w[3],
        report_reveal: w[4],
        challenge: w[5],
        challenge_reveal: w[6],
        vote: w[7],
        vote_reveal: w[8],
    })
}
fn fact() -> impl Strategy<Value = pot_protocol::tx::Fact> {
    use pot_protocol::tx::Fact;
    prop_oneof![
        any::<u32>().prop_map(Fact::Segment),
        Just(Fact::Init),
        Just(Fact::Final),
        Just(Fact::Artifacts),
        Just(Fact::Metric),
    ]
}
fn claim() -> impl Strategy<Value = Claim> {
    (
        hash(),
        hash(),
        any::<u64>(),
        prop::collection::vec((text(), fixed()), 0..4),
        text(),
    )
        .prop_map(
            |(model_hash, checkpoint_root, steps, hyper, artifacts)| Claim {
                model_hash,
                checkpoint_root,
                steps,
                hyper: hyper
                    .into_iter()
                    .map(|(name, value)| HyperValue { name, value })
                    .collect(),
                artifacts,
            },
        )
}
fn report() -> impl Strategy<Value = Report> {
    let verdict = prop_oneof![
        Just(Verdict::Valid),
        Just(Verdict::Invalid(InvalidReason::InitMismatch)),
        Just(Verdict::Invalid(InvalidReason::FinalMismatch)),
        Just(Verdict::Invalid(InvalidReason::SegmentMismatch)),
        Just(Verdict::Invalid(InvalidReason::ArtifactsUnavailable)),
    ];
    (
        verdict,
        fixed(),
        any::<(bool, bool)>(),
        prop::collection::vec(any::<(u32, bool)>(), 0..6),
    )
        .prop_map(|(verdict, metric, (init_ok, final_ok), segs)| Report {
            verdict,
            metric,
            init_ok,
            final_ok,
            segments: segs
                .into_iter()
                .map(|(index, ok)| SegmentResult { index, ok })
                .collect(),
        })
}
fn body() -> impl Strategy<Value = TxBody> {
    prop_oneof![
        (address(), amount()).prop_map(|(to, amount)| TxBody::Transfer { to, amount }),
        (role(), amount()).prop_map(|(role, amount)| TxBody::Bond { role, amount }),
        (role(), amount()).prop_map(|(role, amount)| TxBody::Unbond { role, amount }),
        (spec(), amount(), hash(), windows()).prop_map(|(spec, bounty, eval_commit, windows)| {
            TxBody::SubmitTask {
                spec,
                bounty,
                eval_commit,
                windows,
            }
        }),
        (hash(), hash()).prop_map(|(task, commitment)| TxBody::CommitClaim { task, commitment }),
        (hash(), claim(), hash()).prop_map(|(task, claim, salt)| TxBody::RevealClaim {
            task,
            claim,
            salt
        }),
        (hash(), dataset(), hash()).prop_map(|(task, eval_set, salt)| TxBody::RevealEvalSet {
            task,
            eval_set,
            salt
        }),
        (hash(), address(), hash()).prop_map(|(task, miner, commitment)| TxBody::CommitReport {
            task,
            miner,
            commitment
        }),
        (hash(), address(), report(), hash()).prop_map(|(task, miner, report, salt)| {
            TxBody::RevealReport {
                task,
                miner,
                report,
                salt,
            }
        }),
        (hash(), hash()).prop_map(|(task, commitment)| TxBody::Challenge { task, commitment }),
        (hash(), any::<u32>(), address(), address(), fact(), hash()).prop_map(
            |(task, challenge, miner, validator, fact, salt)| TxBody::RevealChallenge {
                task,
                challenge,
                dispute: pot_protocol::tx::Dispute {
                    miner,
                    validator,
                    fact,
                },
                salt,
            }
        ),
        (hash(), any::<u32>(), hash()).prop_map(|(task, challenge, commitment)| {
            TxBody::CommitVote {
                task,
                challenge,
                commitment,
            }
        }),
        (hash(), any::<u32>(), any::<bool>(), hash()).prop_map(
            |(task, challenge, upheld, salt)| TxBody::RevealVote {
                task,
                challenge,
                upheld,
                salt,
            }
        ),
    ]
}
fn signed_tx() -> impl Strategy<Value = SignedTx> {
    (
        text(),
        address(),
        (any::<u64>(), any::<u64>()),
        body(),
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(chain_id, signer, (nonce, fee), body, sig)| SignedTx {
            tx: Tx {
                chain_id,
                signer,
                nonce,
                fee: Amount(fee),
                body,
            },
            signature: Signature(sig.try_into().unwrap()),
        })
}
fn block() -> impl Strategy<Value = Block> {
    (
        any::<(u64, u64)>(),
        hash(),
        address(),
        (hash(), hash(), hash()),
        prop::collection::vec(any::<u8>(), 80),
        prop::collection::vec(signed_tx(), 0..4),
    )
        .prop_map(
            |(
                (height, time_ms),
                prev_hash,
                proposer,
                (tx_root, state_root, beacon),
                proof,
                txs,
            )| Block {
                header: BlockHeader {
                    height,
                    prev_hash,
                    time_ms,
                    proposer,
                    vrf_proof: pot_protocol::beacon::VrfProof(proof.try_into().unwrap()),
                    beacon,
                    tx_root,
                    state_root,
                },
                txs,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode::<SignedTx>(&bytes);
        let _ = decode::<Block>(&bytes);
        let _ = decode::<State>(&bytes);
        let _ = decode::<Claim>(&bytes);
        let _ = decode::<Report>(&bytes);
        let _ = decode::<Proof>(&bytes);
        let _ = SignedTx::decode(&bytes);
    }

    #[test]
    fn transactions_round_trip(stx in signed_tx()) {
        let bytes = encode(&stx);
        prop_assert_eq!(decode::<SignedTx>(&bytes).unwrap(), stx.clone());
        prop_assert_eq!(SignedTx::decode(&bytes).unwrap().hash(), stx.hash());
        // Every strict prefix is rejected, as is any trailing byte.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(decode::<SignedTx>(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(decode::<SignedTx>(&longer).is_err());
    }

    #[test]
    fn blocks_round_trip(b in block()) {
        let bytes = encode(&b);
        prop_assert_eq!(decode::<Block>(&bytes).unwrap(), b);
    }

    /// Flipping any byte gives either an error or a different value whose own encoding is
    /// exactly the flipped bytes: there is never a second encoding of the same value.
    #[test]
    fn mutations_are_rejected_or_canonical(stx in signed_tx(), pos: prop::sample::Index, flip in 1u8..=255) {
        let mut bytes = encode(&stx);
        let i = pos.index(bytes.len());
        bytes[i] ^= flip;
        match decode::<SignedTx>(&bytes) {
            Ok(other) => {
                // A changed byte is a changed transaction, with its own id: no transaction has
                // two encodings that a node could tell apart only by id.
                prop_assert_ne!(&other, &stx);
                prop_assert_ne!(other.hash(), stx.hash());
            }
            Err(DecodeError::Malformed(_)) | Err(DecodeError::NonCanonical) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}

#[test]
fn unknown_variants_and_oversized_input_are_rejected() {
    // TxBody has 13 variants; tag 13 is unknown. Build a Tx with a valid prefix and a bad tag.
    let tx = Tx {
        chain_id: "c".into(),
        signer: Address::default(),
        nonce: 0,
        fee: Amount(0),
        body: TxBody::Bond {
            role: Role::Miner,
            amount: Amount(1),
        },
    };
    let mut bytes = encode(&tx);
    let tag_at = 4 + 1 + 32 + 8 + 8;
    assert_eq!(bytes[tag_at], 1);
    bytes[tag_at] = 13;
    assert!(matches!(
        decode::<Tx>(&bytes),
        Err(DecodeError::Malformed(_))
    ));
    // Role has 2 variants.
    bytes[tag_at] = 1;
    bytes[tag_at + 1] = 2;
    assert!(matches!(
        decode::<Tx>(&bytes),
        Err(DecodeError::Malformed(_))
    ));

    let huge = vec![0u8; limits::MAX_TX_BYTES + 1];
    assert!(matches!(
        SignedTx::decode(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn same_value_same_bytes() {
    let tx = Tx {
        chain_id: "pot".into(),
        signer: Address([1; 32]),
        nonce: 9,
        fee: Amount(10),
        body: TxBody::Transfer {
            to: Address([2; 32]),
            amount: Amount(3),
        },
    };
    // The exact layout: length-prefixed chain id, signer, nonce, fee, variant tag, fields.
    let mut expected = vec![3, 0, 0, 0, b'p', b'o', b't'];
    expected.extend([1; 32]);
    expected.extend(9u64.to_le_bytes());
    expected.extend(10u64.to_le_bytes());
    expected.push(0);
    expected.extend([2; 32]);
    expected.extend(3u64.to_le_bytes());
    assert_eq!(encode(&tx), expected);
}

/// A state's maps encode in key order, whatever order their entries were made in, and a map
/// encoded out of order is refused: two nodes that built the same state differently agree on
/// its bytes and its root, and no second encoding of a state decodes.
#[test]
fn maps_encode_in_key_order_and_out_of_order_maps_are_refused() {
    use pot_protocol::genesis::{Coordinator, GenesisBalance};
    use pot_protocol::{Genesis, Params, SecretKey};
    let keys: Vec<SecretKey> = (1..=3u8).map(|i| SecretKey::from_seed([i; 32])).collect();
    let genesis = |order: &[usize]| Genesis {
        chain_id: "c".into(),
        genesis_time_ms: 0,
        params: Params::default(),
        balances: order
            .iter()
            .map(|&i| GenesisBalance {
                address: keys[i].address(),
                amount: Amount(100 + i as u64),
            })
            .collect(),
        stakes: vec![],
        coordinators: vec![Coordinator::for_key(&keys[0])],
    };
    let a = State::from_genesis(&genesis(&[0, 1, 2]));
    let mut b = State::from_genesis(&genesis(&[2, 0, 1]));
    b.tip = a.tip.clone(); // the genesis hash covers the list order; the state must not
    assert_eq!(encode(&a), encode(&b));
    assert_eq!(a.state_root(), b.state_root());

    // Swap the first two account entries in the encoding: the map is then out of order.
    let bytes = encode(&a);
    let entry = |i: usize| {
        let addr = keys[i].address();
        let mut e = addr.0.to_vec();
        e.extend(encode(&a.accounts[&addr]));
        e
    };
    let mut sorted: Vec<usize> = vec![0, 1, 2];
    sorted.sort_by_key(|&i| keys[i].address());
    let (first, second) = (entry(sorted[0]), entry(sorted[1]));
    let at = bytes
        .windows(first.len())
        .position(|w| w == first.as_slice())
        .expect("the first account's entry is in the encoding");
    let mut swapped = bytes.clone();
    swapped[at..at + second.len()].copy_from_slice(&second);
    swapped[at + second.len()..at + second.len() + first.len()].copy_from_slice(&first);
    assert_ne!(swapped, bytes);
    assert!(matches!(
        decode::<State>(&swapped),
        Err(DecodeError::NonCanonical) | Err(DecodeError::Malformed(_))
    ));
}
