//! Training is deterministic and replayable: the same run seed gives the same checkpoint hashes
//! and Merkle root; replaying a segment from its checkpoint reproduces the next one exactly, and
//! any change to the starting point, the data or the hyper-parameters does not.

use pot_node::train::checkpoint;
use pot_node::train::data::{Dataset, blobs};
use pot_node::train::optim::{OptimizerConfig, OptimizerKind};
use pot_node::train::{RunSpec, Trainer};
use pot_protocol::{Hash, merkle};

fn spec(seed: &str, kind: OptimizerKind) -> RunSpec {
    RunSpec {
        loss: Default::default(),
        model: "mlp:32,16".parse().unwrap(),
        optimizer: OptimizerConfig {
            kind,
            lr: 0.05,
            weight_decay: 1e-4,
        },
        batch_size: 32,
        steps: 60,
        checkpoint_interval: 10,
        run_seed: Hash::digest(seed.as_bytes()),
        device: tch::Device::Cpu,
    }
}

const SGD: OptimizerKind = OptimizerKind::Sgd { momentum: 0.9 };
const ADAMW: OptimizerKind = OptimizerKind::AdamW {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
};

fn data() -> Dataset {
    tch::set_num_threads(1);
    blobs(3, 600, 8, 4)
}

fn run(spec: &RunSpec, data: &Dataset) -> (pot_node::train::RunRecord, Vec<Vec<u8>>) {
    let mut ckpts = Vec::new();
    let (rec, _) = Trainer::run(spec, data, |_, b, _| {
        ckpts.push(b.to_vec());
        Ok(())
    })
    .unwrap();
    (rec, ckpts)
}

#[test]
fn same_seed_same_checkpoints_and_root() {
    let d = data();
    for kind in [SGD, ADAMW] {
        let (a, _) = run(&spec("miner-a", kind), &d);
        let (b, _) = run(&spec("miner-a", kind), &d);
        assert_eq!(a, b, "{kind:?}");
        assert_eq!(a.checkpoints.len(), 7);
        assert_eq!(a.root, merkle::root(&a.checkpoints));
        let (c, _) = run(&spec("miner-b", kind), &d);
        assert_ne!(
            a.checkpoints[0], c.checkpoints[0],
            "another seed, another W_0"
        );
        assert_ne!(a.root, c.root);
    }
}

#[test]
fn honest_segments_replay_exactly_and_tampering_fails() {
    let d = data();
    let s = spec("miner-a", SGD);
    let (rec, ckpts) = run(&s, &d);
    // Checkpoint i is at step 10·i.
    let replay = |spec: &RunSpec, from: &[u8], steps: u64| {
        let at = checkpoint::decode(from).unwrap().metadata["step"]
            .parse()
            .unwrap();
        let mut t = Trainer::from_checkpoint(spec, &d, from, at).unwrap();
        t.train_steps(&d, steps);
        checkpoint::hash(&t.checkpoint())
    };
    for i in [0usize, 3, 5] {
        assert_eq!(
            replay(&s, &ckpts[i], 10),
            rec.checkpoints[i + 1],
            "segment {i}"
        );
    }

    // W_3 changed by one ulp in one parameter.
    let mut c = checkpoint::decode(&ckpts[3]).unwrap();
    let name = c
        .tensors
        .keys()
        .find(|k| k.starts_with("model."))
        .unwrap()
        .clone();
    let t = &c.tensors[&name];
    let mut v = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
    v[0] = f32::from_bits(v[0].to_bits() + 1);
    let nudged = tch::Tensor::from_slice(&v).reshape(t.size());
    c.tensors.insert(name, nudged);
    let tampered = checkpoint::encode(&c.tensors, &c.metadata);
    assert_ne!(checkpoint::hash(&tampered), rec.checkpoints[3]);
    assert_ne!(replay(&s, &tampered, 10), rec.checkpoints[4], "one ulp off");

    // Another learning rate, skipped steps, other data.
    let mut other_lr = s.clone();
    other_lr.optimizer.lr = 0.051;
    assert_ne!(replay(&other_lr, &ckpts[3], 10), rec.checkpoints[4]);
    assert_ne!(replay(&s, &ckpts[3], 9), rec.checkpoints[4]);
    let other = blobs(4, 600, 8, 4);
    let mut t = Trainer::from_checkpoint(&s, &other, &ckpts[3], 30).unwrap();
    t.train_steps(&other, 10);
    assert_ne!(checkpoint::hash(&t.checkpoint()), rec.checkpoints[4]);

    // A copied trajectory fails the W_0 check: another miner's seed gives another W_0.
    let copier = spec("copycat", SGD);
    let own_w0 = checkpoint::hash(&Trainer::new(&copier, &d).unwrap().checkpoint());
    assert_ne!(own_w0, rec.checkpoints[0]);
}

#[test]
fn training_learns_the_blobs() {
    let d = data();
    let mut s = spec("learner", SGD);
    s.steps = 200;
    let mut t = Trainer::new(&s, &d).unwrap();
    let before = t.accuracy(&d);
    t.train_steps(&d, 200);
    let after = t.accuracy(&d);
    assert!(
        after > 0.95 && after > before,
        "accuracy {before} -> {after}"
    );
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let d = data();
    let s = spec("miner-a", SGD);
    let w0 = Trainer::new(&s, &d).unwrap().checkpoint();
    let err = |bytes: &[u8], spec: &RunSpec| {
        format!(
            "{:#}",
            Trainer::from_checkpoint(spec, &d, bytes, 0).err().unwrap()
        )
    };
    assert!(err(&w0[..w0.len() - 4], &s).contains("not a safetensors file"));
    let mut bigger = s.clone();
    bigger.model = "mlp:64,16".parse().unwrap();
    assert!(
        err(&w0, &bigger).contains("has shape"),
        "{}",
        err(&w0, &bigger)
    );
    let mut adam = s.clone();
    adam.optimizer.kind = ADAMW;
    let e = err(&w0, &adam);
    assert!(
        e.contains("unexpected tensor") || e.contains("lacks tensor"),
        "{e}"
    );
}

/// Train `model` on 80 % of the UCI digits and measure accuracy on the held-out 20 %.
fn digits_accuracy(model: &str, kind: OptimizerKind, lr: f64, steps: u64) -> f64 {
    tch::set_num_threads(1);
    let (train, test) =
        pot_node::train::datasets::split(&pot_node::train::datasets::digits(), 200, 42);
    let s = RunSpec {
        loss: Default::default(),
        model: model.parse().unwrap(),
        optimizer: OptimizerConfig {
            kind,
            lr,
            weight_decay: 1e-4,
        },
        batch_size: 64,
        steps,
        checkpoint_interval: steps,
        run_seed: Hash::digest(model.as_bytes()),
        device: tch::Device::Cpu,
    };
    let mut t = Trainer::new(&s, &train).unwrap();
    t.train_steps(&train, steps);
    t.accuracy(&test)
}

#[test]
fn mlp_reaches_95_percent_on_held_out_digits() {
    let acc = digits_accuracy("mlp:128,64", SGD, 0.05, 2_000);
    println!("MLP held-out accuracy on digits: {acc:.4}");
    assert!(acc >= 0.95, "MLP held-out accuracy {acc}");
}

#[test]
fn lenet5_reaches_97_percent_on_held_out_digits() {
    let acc = digits_accuracy("lenet5", ADAMW, 0.002, 5_000);
    println!("LeNet-5 held-out accuracy on digits: {acc:.4}");
    assert!(acc >= 0.97, "LeNet-5 held-out accuracy {acc}");
}

/// The larger real set: LeNet-5 on 4,000 28×28 MNIST images, judged on the 1,000 held out
/// (97.5 % here after 1,500 steps; with 4,000 training images it levels off near there).
#[test]
fn lenet5_reaches_96_percent_on_held_out_mnist_5k() {
    tch::set_num_threads(1);
    let mnist = pot_node::train::datasets::builtin("mnist-5k")
        .unwrap()
        .load();
    let (train, test) = pot_node::train::datasets::split(&mnist, 200, 42);
    let s = RunSpec {
        model: "lenet5".parse().unwrap(),
        optimizer: OptimizerConfig {
            kind: ADAMW,
            lr: 0.002,
            weight_decay: 1e-4,
        },
        batch_size: 64,
        steps: 1_500,
        checkpoint_interval: 1_500,
        ..spec("mnist", ADAMW)
    };
    let mut t = Trainer::new(&s, &train).unwrap();
    t.train_steps(&train, s.steps);
    let acc = t.accuracy(&test);
    println!("LeNet-5 held-out accuracy on MNIST-5k: {acc:.4}");
    assert!(acc >= 0.96, "LeNet-5 held-out accuracy {acc}");
}

#[test]
fn lenet5_needs_images() {
    let d = data();
    let mut s = spec("x", SGD);
    s.model = "lenet5".parse().unwrap();
    let e = Trainer::new(&s, &d).err().unwrap().to_string();
    assert!(e.contains("needs image data"), "{e}");
}

#[test]
fn resnet_small_trains_on_digits_and_replays_exactly() {
    tch::set_num_threads(1);
    let (train, test) =
        pot_node::train::datasets::split(&pot_node::train::datasets::digits(), 200, 42);
    let s = RunSpec {
        loss: Default::default(),
        model: "resnet-small".parse().unwrap(),
        optimizer: OptimizerConfig {
            kind: ADAMW,
            lr: 0.003,
            weight_decay: 1e-4,
        },
        batch_size: 64,
        steps: 400,
        checkpoint_interval: 100,
        run_seed: Hash::digest(b"resnet"),
        device: tch::Device::Cpu,
    };
    let (rec, ckpts) = run(&s, &train);
    // Batch-norm running statistics are part of the checkpoint, so the replay is exact too.
    let mut t = Trainer::from_checkpoint(&s, &train, &ckpts[2], 200).unwrap();
    t.train_steps(&train, 100);
    assert_eq!(checkpoint::hash(&t.checkpoint()), rec.checkpoints[3]);
    assert!(
        checkpoint::decode(&ckpts[0])
            .unwrap()
            .tensors
            .keys()
            .any(|k| k.contains("running_mean"))
    );
    let t = Trainer::from_checkpoint(&s, &train, &ckpts[4], 400).unwrap();
    let acc = t.accuracy(&test);
    println!("ResNet-small held-out accuracy on digits after 400 steps: {acc:.4}");
    assert!(acc > 0.9, "{acc}");
}

const TINY_MLP_SHA256: &str = "c69c3e517cae8e79362d53082f7332627f03c14006c59bef9a267821fb65e4b3";

fn tiny_mlp_spec(cache: &pot_node::train::fetch::Cache, seed: &str) -> RunSpec {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny_mlp.pt");
    let model = pot_node::train::model::ModelSpec::resolve(
        &format!("torchscript:{path}#{TINY_MLP_SHA256}"),
        cache,
    )
    .unwrap();
    RunSpec {
        loss: Default::default(),
        model,
        optimizer: OptimizerConfig {
            kind: SGD,
            lr: 0.05,
            weight_decay: 1e-4,
        },
        batch_size: 64,
        steps: 600,
        checkpoint_interval: 100,
        run_seed: Hash::digest(seed.as_bytes()),
        device: tch::Device::Cpu,
    }
}

#[test]
fn the_committed_torchscript_model_trains_and_verifies_like_a_built_in_one() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cache = pot_node::train::fetch::Cache::new(dir.path());
    let (train, test) =
        pot_node::train::datasets::split(&pot_node::train::datasets::digits(), 200, 42);
    let s = tiny_mlp_spec(&cache, "scripted-a");
    let (a, ckpts) = run(&s, &train);
    let (b, _) = run(&tiny_mlp_spec(&cache, "scripted-a"), &train);
    assert_eq!(a, b, "deterministic");
    // Re-initialised from the run seed: another miner starts elsewhere.
    let (c, _) = run(&tiny_mlp_spec(&cache, "scripted-b"), &train);
    assert_ne!(a.checkpoints[0], c.checkpoints[0]);
    // Replay of a segment is exact.
    let mut t = Trainer::from_checkpoint(&s, &train, &ckpts[2], 200).unwrap();
    t.train_steps(&train, 100);
    assert_eq!(checkpoint::hash(&t.checkpoint()), a.checkpoints[3]);
    let acc = Trainer::from_checkpoint(&s, &train, &ckpts[6], 600)
        .unwrap()
        .accuracy(&test);
    println!("TorchScript tiny MLP held-out accuracy on digits: {acc:.4}");
    assert!(acc > 0.9, "{acc}");
}

#[test]
fn a_file_that_is_not_torchscript_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = pot_node::train::fetch::Cache::new(dir.path().join("cache"));
    let bogus = dir.path().join("model.pt");
    std::fs::write(&bogus, b"this is not a zip archive").unwrap();
    let sha = Hash::digest(b"this is not a zip archive");
    let mut s = spec("x", SGD);
    s.model = pot_node::train::model::ModelSpec::resolve(
        &format!("torchscript:{}#{sha}", bogus.display()),
        &cache,
    )
    .unwrap();
    let d = pot_node::train::datasets::digits();
    let e = Trainer::new(&s, &d).err().unwrap().to_string();
    assert!(e.contains("is not a TorchScript module"), "{e}");
    // And the wrong hash is refused before anything is loaded.
    let e = pot_node::train::model::ModelSpec::resolve(
        &format!("torchscript:{}#{}", bogus.display(), Hash::ZERO),
        &cache,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SHA-256"), "{e}");
}

#[test]
fn mse_loss_learns_the_spirals_deterministically() {
    tch::set_num_threads(1);
    let d = pot_node::train::data::spirals(5, 900, 3, 0.02);
    let mut s = spec("spirals", ADAMW);
    s.loss = pot_node::train::run::Loss::Mse;
    s.model = "mlp:64,64".parse().unwrap();
    s.optimizer.lr = 0.01;
    s.steps = 1500;
    s.checkpoint_interval = 500;
    let (a, _) = run(&s, &d);
    assert_eq!(a, run(&s, &d).0);
    let mut t = Trainer::new(&s, &d).unwrap();
    t.train_steps(&d, 1500);
    let acc = t.accuracy(&d);
    assert!(acc > 0.9, "spirals accuracy with MSE {acc}");
}

/// On an NVIDIA GPU, with a build that has the `cuda` feature: `W_0` is byte for byte the CPU's
/// (initialised there, then moved), the run learns, and a segment replayed on the GPU lands
/// within a small normalised distance of the committed checkpoint. Not run by `make test` (no
/// GPU there); `node-image/gpu-check.sh` runs it on a GPU machine.
#[test]
#[ignore = "needs an NVIDIA GPU and a build with the cuda feature (node-image/gpu-check.sh)"]
fn cuda_runs_start_from_the_cpu_w0_learn_and_replay_within_tolerance() {
    assert!(tch::Cuda::is_available(), "libtorch sees no CUDA device");
    let d = data();
    let cpu = spec("gpu", SGD);
    let gpu = RunSpec {
        device: tch::Device::Cuda(0),
        steps: 200,
        checkpoint_interval: 20,
        ..cpu.clone()
    };
    let (cpu_run, _) = run(&cpu, &d);
    let (gpu_run, ckpts) = run(&gpu, &d);
    assert_eq!(
        gpu_run.checkpoints[0], cpu_run.checkpoints[0],
        "W_0 differs"
    );
    let trained = Trainer::from_checkpoint(&gpu, &d, ckpts.last().unwrap(), gpu.steps).unwrap();
    let accuracy = trained.accuracy(&d);
    assert!(accuracy > 0.95, "GPU run reached only {accuracy}");
    for i in [0, 4, 9] {
        let k = gpu.checkpoint_interval;
        let mut t = Trainer::from_checkpoint(&gpu, &d, &ckpts[i], i as u64 * k).unwrap();
        t.train_steps(&d, k);
        let tolerance = pot_node::verify::Tolerance {
            parameters: 1e-4,
            optimizer: 1e-3,
        };
        let c =
            pot_node::verify::compare::compare(&t.checkpoint(), &ckpts[i + 1], tolerance).unwrap();
        assert!(c.ok, "segment {i} replayed {:?} away", c.worst);
    }
}

const BN_DROPOUT_SHA256: &str = "6ead0184167cb7baa6cb20195ec9bad4579fc192cf21856e4e3177110e6d0476";

#[test]
fn a_torchscript_model_with_batch_norm_and_dropout_trains_replays_and_evaluates() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cache = pot_node::train::fetch::Cache::new(dir.path());
    let (train, test) =
        pot_node::train::datasets::split(&pot_node::train::datasets::digits(), 200, 42);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/bn_dropout.pt");
    let model = pot_node::train::model::ModelSpec::resolve(
        &format!("torchscript:{path}#{BN_DROPOUT_SHA256}"),
        &cache,
    )
    .unwrap();
    let s = RunSpec {
        model,
        steps: 300,
        checkpoint_interval: 100,
        ..tiny_mlp_spec(&cache, "bn-dropout")
    };
    let (rec, ckpts) = run(&s, &train);
    let tensors = |i: usize| checkpoint::decode(&ckpts[i]).unwrap().tensors;
    let w0 = tensors(0);
    // The running statistics are checkpointed; W_0 has PyTorch's initial normalisation (scale
    // one, shift zero, running variance one), not a zeroed scale.
    let ones = |t: &tch::Tensor| t.eq(1.0).all().int64_value(&[]) == 1;
    assert!(ones(&w0["model.bn_weight"]), "batch-norm scale zeroed");
    assert!(ones(&w0["model.buffer_bn_running_var"]));
    let end = tensors(3);
    assert!(
        end["model.buffer_bn_running_mean"]
            .abs()
            .sum(tch::Kind::Float)
            .double_value(&[])
            > 0.0,
        "training moved the running mean, and the checkpoint holds it"
    );
    // Dropout draws from the run seed and the step: segments past the first replay exactly.
    for i in [1usize, 2] {
        let mut t = Trainer::from_checkpoint(&s, &train, &ckpts[i], i as u64 * 100).unwrap();
        t.train_steps(&train, 100);
        assert_eq!(
            checkpoint::hash(&t.checkpoint()),
            rec.checkpoints[i + 1],
            "segment {i}"
        );
    }
    // Evaluation runs in evaluation mode (no dropout, running statistics): the same answer
    // every time, from the checkpoint's statistics.
    let t = Trainer::from_checkpoint(&s, &train, &ckpts[3], 300).unwrap();
    let (a, b) = (t.accuracy(&test), t.accuracy(&test));
    assert_eq!(a, b);
    println!("TorchScript batch-norm + dropout held-out accuracy on digits: {a:.4}");
    assert!(a > 0.9, "{a}");
}
