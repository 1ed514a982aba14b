//! `pot-node train`, `verify` and `eval` from the command line, and their refusals.

use std::cell::RefCell;
use std::path::PathBuf;
use std::process::{Command, Output};

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

/// A temporary directory with a task file, a data cache and a place for the run.
struct Workspace {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    task: PathBuf,
    run: PathBuf,
    /// What the chain would record of the last run trained here: its checkpoint root and
    /// model hash, as `train` printed them (the miner and salt are the defaults).
    claim: RefCell<Option<(String, String)>>,
}

impl Workspace {
    fn new(task: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace {
            cache: dir.path().join("cache"),
            task: dir.path().join("task.yaml"),
            run: dir.path().join("run"),
            _dir: dir,
            claim: RefCell::new(None),
        };
        std::fs::write(&ws.task, task).unwrap();
        ws
    }

    /// `pot-node <command> --file TASK <run flag> RUN <extra…>` with this workspace's cache.
    fn pot_node(&self, command: &str, extra: &[&str]) -> Output {
        self.pot_node_env(command, extra, &[])
    }

    /// The same, with `env` added to the process's environment.
    fn pot_node_env(&self, command: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let run_flag = if command == "train" { "--out" } else { "--run" };
        Command::new(env!("CARGO_BIN_EXE_pot-node"))
            .envs(env.iter().copied())
            .arg(command)
            .args(["--file", self.task.to_str().unwrap()])
            .args([run_flag, self.run.to_str().unwrap()])
            .args(extra)
            .args(["--data-cache", self.cache.to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn train(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--cpu-capability", "native"];
        args.extend_from_slice(extra);
        self.train_with(&args, &[])
    }

    /// `train` with exactly these flags and environment.
    fn train_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.pot_node_env("train", args, env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let (Some(root), Some(model)) = (field("merkle_root:"), field("model_hash:")) {
            *self.claim.borrow_mut() = Some((root, model));
        }
        out
    }

    /// Verify the last run's claim, replaying `segments` (and the task's top-Q).
    fn verify(&self, segments: &str) -> Output {
        self.verify_with(segments, &[])
    }

    fn verify_with(&self, segments: &str, extra: &[&str]) -> Output {
        let mut args = vec!["--cpu-capability", "native"];
        args.extend_from_slice(extra);
        self.verify_env(segments, &args, &[])
    }

    /// Verify with exactly these extra flags and environment.
    fn verify_env(&self, segments: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let (root, model) = self.claim.borrow().clone().expect("a run was trained");
        let zero = pot_protocol::Hash::ZERO.to_hex();
        let miner = pot_protocol::Address::default().to_string();
        let mut args = vec![
            "--segments",
            segments,
            "--miner",
            &miner,
            "--salt",
            &zero,
            "--checkpoint-root",
            &root,
            "--model-hash",
            &model,
        ];
        args.extend_from_slice(extra);
        self.pot_node_env("verify", &args, env)
    }
}

/// Assert that a command's output (stdout and stderr) says `words`, showing all of it if not.
fn assert_says(o: &Output, words: &str) {
    let t = text(o);
    assert!(t.contains(words), "expected {words:?} in:\n{t}");
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn train_verify_eval_and_a_tampered_checkpoint() {
    let ws = Workspace::new(TASK);
    let out = ws.train(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_says(&out, "checkpoints:  11");
    // The default device is the CPU, and the manifest says where the run trained.
    assert_says(&out, "device:       cpu");
    // A second run into the same directory is refused rather than mixed in.
    let again = ws.train(&[]);
    assert!(!again.status.success() && text(&again).contains("already holds a run"));

    let ok = ws.verify("0,4,9");
    assert!(ok.status.success(), "{}", text(&ok));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["valid"], true);
    // The three sampled segments, and the task's top 3 updates (here some of the early ones).
    let replayed = report["segments"].as_array().unwrap();
    for i in [0, 4, 9] {
        assert!(replayed.iter().any(|s| s["index"] == i), "{report}");
    }
    let largest = replayed
        .iter()
        .filter(|s| s["selected"] != "sampled")
        .count();
    assert!(largest >= 3, "{report}");

    let eval = ws.pot_node("eval", &[]);
    assert!(
        eval.status.success() && text(&eval).contains("accuracy: 0.9"),
        "{}",
        text(&eval)
    );

    // A checkpoint file swapped for another (valid) one: the hash check catches it.
    let checkpoints = ws.run.join("checkpoints");
    std::fs::copy(
        checkpoints.join("000003.safetensors"),
        checkpoints.join("000004.safetensors"),
    )
    .unwrap();
    let bad = ws.verify("4");
    assert!(!bad.status.success());
    assert_says(
        &bad,
        "checkpoint 4 is not under the claim's checkpoint root",
    );
    let bad = ws.verify("10");
    assert_says(&bad, "segment 10 does not exist");
}

#[test]
fn a_run_killed_mid_training_resumes_and_ends_with_the_same_checkpoints() {
    let task = TASK.replace("steps: 200", "steps: 2000");
    let whole = Workspace::new(&task);
    let out = whole.train(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let uninterrupted = whole.claim.borrow().clone().unwrap();

    let ws = Workspace::new(&task);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pot-node"))
        .args(["train", "--cpu-capability", "native", "--file"])
        .arg(&ws.task)
        .arg("--out")
        .arg(&ws.run)
        .arg("--data-cache")
        .arg(&ws.cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fifth = ws.run.join("checkpoints/000005.safetensors");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !fifth.exists() {
        assert!(child.try_wait().unwrap().is_none(), "train ended early");
        assert!(std::time::Instant::now() < deadline, "no fifth checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !ws.run.join("manifest.json").exists(),
        "the run finished before it was killed; the test shows nothing"
    );

    // Another run (another salt) is not mixed into it.
    let salt = "11".repeat(32);
    let other = ws.train(&["--salt", &salt]);
    assert_says(&other, "holds an unfinished run of another");

    let resumed = ws.train(&[]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_says(&resumed, "resuming");
    assert_eq!(ws.claim.borrow().clone().unwrap(), uninterrupted);
    // Complete now: a second start is refused rather than mixed in.
    assert_says(&ws.train(&[]), "already holds a run");
}

#[test]
fn hyper_parameters_are_chosen_within_the_task_ranges_and_verified_as_claimed() {
    let task = TASK.replace("lr: 0.05", "lr: {min: 0.01, max: 0.1, default: 0.05}");
    let ws = Workspace::new(&task);
    assert_says(
        &ws.train(&["--hyper", "lr=0.5"]),
        "outside the task's range",
    );
    assert!(!ws.run.exists());
    let out = ws.train(&["--hyper", "lr=0.08"]);
    assert!(out.status.success(), "{}", text(&out));
    // The claim names lr = 0.08: replaying with it passes; with the task's default it does
    // not, so a verifier must take the hyper-parameters from the claim.
    let ok = ws.verify_with("3", &["--hyper", "lr=0.08"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let wrong = ws.verify("3");
    assert!(!wrong.status.success());
    assert_says(&wrong, "segment 3");
}

#[test]
fn a_wrong_dataset_hash_trains_nothing() {
    let ws = Workspace::new(&TASK.replace("09f66e6d", "19f66e6d"));
    let out = ws.train(&[]);
    assert!(!out.status.success());
    assert_says(&out, "the task says 19f66e6d");
    assert!(
        !ws.run.exists(),
        "nothing may be written when the data does not match"
    );

    let ws = Workspace::new(&TASK.replace("steps: 200", "steps: 210"));
    let out = ws.train(&[]);
    assert_says(
        &out,
        "checkpoint_interval: must be positive and divide steps",
    );

    // Bit-identical parameters with a tolerance on the optimizer state would pin nothing.
    let ws = Workspace::new(&(TASK.to_string() + "optimizer_tolerance: 0.1\n"));
    let out = ws.train(&[]);
    assert_says(&out, "must be 0 when replay_tolerance is 0");

    let ws = Workspace::new(&TASK.replace("model: mlp:32", "model: mlp:32\ncolour: blue"));
    let out = ws.train(&[]);
    assert_says(&out, "unknown field `colour`");
}

#[test]
fn a_device_that_is_not_there_is_refused_before_anything_is_written() {
    let ws = Workspace::new(TASK);
    let out = ws.train(&["--device", "tpu"]);
    assert!(!out.status.success());
    assert_says(
        &out,
        "unknown device \"tpu\": expected cpu, cuda, cuda:N or auto",
    );
    // A GPU beyond the ones libtorch sees (none at all on a CPU machine or a CPU build).
    let out = ws.train(&["--device", "cuda:7"]);
    assert!(!out.status.success());
    assert_says(&out, "asked for GPU 7, but libtorch sees");
    assert!(!ws.run.exists());
}

/// The segments of a verify report, as JSON.
fn replayed(o: &Output) -> Vec<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a report");
    report["segments"].as_array().unwrap().clone()
}

/// A 60-step LeNet-5 task (convolutions: libtorch sums their gradients by thread) with `extra`
/// settings.
fn lenet5_task(extra: &str) -> String {
    TASK.replace("mlp:32", "lenet5")
        .replace("steps: 200", "steps: 60")
        + extra
}

#[test]
fn an_exact_task_replays_bit_for_bit_in_a_process_set_up_otherwise() {
    let task = lenet5_task("cpu_threads: 2\n");
    let ws = Workspace::new(&task);
    let refused = ws.train_with(&["--threads", "3"], &[]);
    assert!(!refused.status.success());
    assert_says(
        &refused,
        "demands bit-identical replays with cpu_threads: 2",
    );
    let out = ws.train_with(&[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The replaying process's environment asks for other kernels, another MKL code path and
    // three threads; pot-node pins what the task needs, and every replay is bit-identical.
    let env = [
        ("ATEN_CPU_CAPABILITY", "default"),
        ("MKL_CBWR", "AUTO"),
        ("OMP_NUM_THREADS", "3"),
    ];
    let ok = ws.verify_env("0,1,2", &[], &env);
    assert!(ok.status.success(), "{}", text(&ok));
    for s in replayed(&ok) {
        assert!(s["worst"].is_null(), "not bit-identical: {s}");
    }
}

#[test]
fn a_task_with_a_tolerance_replays_within_it_on_another_thread_count() {
    let task = lenet5_task("replay_tolerance: 0.00001\n");
    let ws = Workspace::new(&task);
    let out = ws.train_with(&["--threads", "2"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let ok = ws.verify_env("0,1,2", &["--threads", "1"], &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    for s in replayed(&ok) {
        assert!(s["parameters"].as_f64().unwrap() <= 1e-5, "{s}");
    }
}

/// An IDX pair (MNIST's format) of `n` 8×8 images whose label is which quadrant is bright.
fn idx_pair(n: u32) -> (Vec<u8>, Vec<u8>) {
    let mut images = vec![0, 0, 8, 3];
    for v in [n, 8, 8] {
        images.extend(v.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(n.to_be_bytes());
    for i in 0..n {
        let q = (i % 4) as usize;
        for p in 0..64usize {
            let (r, c) = (p / 8, p % 8);
            let bright = (r / 4) * 2 + c / 4 == q;
            images.push(if bright {
                200 + (i % 50) as u8
            } else {
                (i * 7 % 40) as u8
            });
        }
        labels.push(q as u8);
    }
    (images, labels)
}

#[test]
fn an_idx_dataset_trains_from_its_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = idx_pair(400);
    let (ip, lp) = (dir.path().join("images.idx"), dir.path().join("labels.idx"));
    std::fs::write(&ip, &images).unwrap();
    std::fs::write(&lp, &labels).unwrap();
    let sha = |b: &[u8]| pot_protocol::Hash::digest(b).to_hex();
    let task = format!(
        "model: lenet5
dataset:
  locator: {}
  sha256: {}
  format: idx
  labels: {{locator: {}, sha256: {}}}
optimizer: {{kind: adamw, lr: 0.003}}
batch_size: 32
steps: 100
checkpoint_interval: 50
seed: 3
",
        ip.display(),
        sha(&images),
        lp.display(),
        sha(&labels)
    );
    let ws = Workspace::new(&task);
    let out = ws.train(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(ws.verify("0,1").status.success());

    let ws = Workspace::new(&task.replace(&sha(&labels), &sha(b"other labels")));
    let out = ws.train(&[]);
    assert!(
        !out.status.success() && text(&out).contains("SHA-256"),
        "{}",
        text(&out)
    );
    let ws = Workspace::new(&task.replace("  labels:", "  # labels:"));
    let out = ws.train(&[]);
    assert_says(&out, "format idx needs a labels file");
}
