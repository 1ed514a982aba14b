//! `pot-node train`, `verify` and `eval` from the command line, and their refusals.

use std::path::Path;
use std::process::{Command, Output};

fn pot_node(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pot-node"))
        .args(args)
        .args(["--data-cache", cache.to_str().unwrap()])
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const TASK: &str = "model: mlp:32
dataset:
  locator: builtin:digits
  sha256: 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22
optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}
batch_size: 32
steps: 200
checkpoint_interval: 20
seed: 11
";

#[test]
fn train_verify_eval_and_a_tampered_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let task = dir.path().join("task.yaml");
    std::fs::write(&task, TASK).unwrap();
    let run = dir.path().join("run");
    let (t, r) = (task.to_str().unwrap(), run.to_str().unwrap());

    let out = pot_node(
        &[
            "train",
            "--spec",
            t,
            "--out",
            r,
            "--cpu-capability",
            "native",
        ],
        &cache,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("checkpoints:  11"), "{}", text(&out));
    // A second run into the same directory is refused rather than mixed in.
    let again = pot_node(
        &[
            "train",
            "--spec",
            t,
            "--out",
            r,
            "--cpu-capability",
            "native",
        ],
        &cache,
    );
    assert!(!again.status.success() && text(&again).contains("already holds a run"));

    let ok = pot_node(
        &["verify", "--spec", t, "--run", r, "--segments", "0,4,9"],
        &cache,
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["segments"].as_array().unwrap().len(), 3);

    let eval = pot_node(&["eval", "--spec", t, "--run", r], &cache);
    assert!(
        eval.status.success() && text(&eval).contains("accuracy: 0.9"),
        "{}",
        text(&eval)
    );

    // A checkpoint file swapped for another (valid) one: the hash check catches it.
    let c4 = run.join("checkpoints/000004.safetensors");
    std::fs::copy(run.join("checkpoints/000003.safetensors"), &c4).unwrap();
    let bad = pot_node(
        &["verify", "--spec", t, "--run", r, "--segments", "4"],
        &cache,
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("is not the committed"),
        "{}",
        text(&bad)
    );
    let bad = pot_node(
        &["verify", "--spec", t, "--run", r, "--segments", "10"],
        &cache,
    );
    assert!(
        text(&bad).contains("segment 10 does not exist"),
        "{}",
        text(&bad)
    );
}

#[test]
fn a_wrong_dataset_hash_trains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let task = dir.path().join("task.yaml");
    std::fs::write(&task, TASK.replace("09f66e6d", "19f66e6d")).unwrap();
    let run = dir.path().join("run");
    let out = pot_node(
        &[
            "train",
            "--spec",
            task.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--cpu-capability",
            "native",
        ],
        &cache,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the task says 19f66e6d"),
        "{}",
        text(&out)
    );
    assert!(
        !run.exists(),
        "nothing may be written when the data does not match"
    );

    std::fs::write(&task, TASK.replace("steps: 200", "steps: 210")).unwrap();
    let out = pot_node(
        &[
            "train",
            "--spec",
            task.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(
        text(&out).contains("checkpoint_interval must be positive and divide steps"),
        "{}",
        text(&out)
    );

    std::fs::write(
        &task,
        TASK.replace("model: mlp:32", "model: mlp:32\ncolour: blue"),
    )
    .unwrap();
    let out = pot_node(
        &[
            "train",
            "--spec",
            task.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(
        text(&out).contains("unknown field `colour`"),
        "{}",
        text(&out)
    );
}

#[test]
fn verify_replays_with_the_runs_own_thread_count() {
    // Bit-identical replay needs the same libtorch thread count (a different count may sum in
    // another order); the manifest records it and verify uses it.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let task = dir.path().join("task.yaml");
    std::fs::write(&task, TASK.replace("mlp:32", "mlp:256,128")).unwrap();
    let run = dir.path().join("run");
    let (t, r) = (task.to_str().unwrap(), run.to_str().unwrap());
    let out = pot_node(
        &[
            "train",
            "--spec",
            t,
            "--out",
            r,
            "--threads",
            "2",
            "--cpu-capability",
            "native",
        ],
        &cache,
    );
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["threads"], 2);
    let ok = pot_node(
        &["verify", "--spec", t, "--run", r, "--segments", "1,8"],
        &cache,
    );
    assert!(ok.status.success(), "{}", text(&ok));
}
