//! The operator's CustomResourceDefinitions against the real API server: the generated files
//! in `crds/` install, every validation rule refuses a bad resource with the message a person
//! is meant to read, and the examples in `manifests/` are accepted.

use pot_e2e::TestEnv;
use pot_e2e::operator::{install_crds, repo};
use serde_yaml::Value;

/// A manifest from `manifests/`, as YAML to change.
fn example(file: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("manifests").join(file)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// Set `path` (dot-separated keys) in `doc` to `value` (YAML), creating maps on the way;
/// a value of `~` removes the key.
fn set(mut doc: Value, path: &str, value: &str) -> Value {
    let value: Value = serde_yaml::from_str(value).unwrap();
    let keys: Vec<&str> = path.split('.').collect();
    let mut at = &mut doc;
    for k in &keys[..keys.len() - 1] {
        let map = at.as_mapping_mut().expect("a map on the path");
        at = map
            .entry(Value::from(*k))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    let map = at.as_mapping_mut().expect("a map at the end of the path");
    let last = Value::from(keys[keys.len() - 1]);
    if value.is_null() {
        map.remove(&last);
    } else {
        map.insert(last, value);
    }
    doc
}

/// `kubectl apply` (server-side dry run unless `dry_run` is false) of one document.
fn apply(env: &TestEnv, doc: &Value, dry_run: bool) -> anyhow::Result<String> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), serde_yaml::to_string(doc)?)?;
    let mut args = vec!["apply", "-n", &env.namespace, "-f"];
    args.push(file.path().to_str().unwrap());
    if dry_run {
        args.push("--dry-run=server");
    }
    env.cp.kubectl(&args)
}

#[tokio::test]
async fn the_examples_in_manifests_are_accepted() {
    let env = TestEnv::new("crd-examples").await;
    install_crds(&env).await;
    let dir = repo().join("manifests");
    let out = env
        .cp
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-n",
            &env.namespace,
            "-f",
            dir.to_str().unwrap(),
        ])
        .expect("every example is accepted");
    for kind in [
        "potnetwork.pot.dev/dev",
        "potnetwork.pot.dev/main",
        "miner.pot.dev/gpu",
        "miner.pot.dev/cpu",
        "miner.pot.dev/validators",
        "trainingtask.pot.dev/digits",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
}

#[tokio::test]
async fn every_validation_rule_refuses_a_bad_resource_with_its_message() {
    let env = TestEnv::new("crd-refusals").await;
    install_crds(&env).await;
    let net = || example("network.yaml");
    let miner = || example("miners-gpu.yaml");
    let task = || example("task-digits.yaml");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "two coordinators",
            set(net(), "spec.coordinators", "2"),
            "coordinators must be 1 (a development network) or at least 4",
        ),
        (
            "more minted than burned",
            set(net(), "spec.genesis.mintRate", "0.5"),
            "mintRate must not exceed taskBurn",
        ),
        (
            "more minted than the default burn",
            set(
                set(net(), "spec.genesis.taskBurn", "~"),
                "spec.genesis.mintRate",
                "0.06",
            ),
            "mintRate must not exceed taskBurn",
        ),
        (
            "ports that collide",
            set(net(), "spec.ports", "{p2p: 26657}"),
            "ports must be four different numbers",
        ),
        (
            "a network name too long for its objects' names",
            set(net(), "metadata.name", &"n".repeat(41)),
            "a PotNetwork's name is at most 40 characters",
        ),
        (
            "an account funded twice",
            set(
                net(),
                "spec.genesis.balances",
                "[{address: 5f1e4ac9f4b1d6c9a3f8e2d7b6a5c4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7, amount: 5}, {address: 5f1e4ac9f4b1d6c9a3f8e2d7b6a5c4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7, amount: 6}]",
            ),
            "Duplicate value",
        ),
        (
            "a validator fleet with a miner's stake",
            set(example("validators-cpu.yaml"), "spec.stake", "5000"),
            "stake is a miner's bond: a Validator fleet bonds validatorStake",
        ),
        (
            "a validator fleet that does not validate",
            set(example("validators-cpu.yaml"), "spec.validate", "false"),
            "a Validator fleet must validate",
        ),
        (
            "an autoscaled validator fleet",
            set(
                example("validators-cpu.yaml"),
                "spec.autoscaling",
                "{minReplicas: 1, maxReplicas: 3}",
            ),
            "a Validator fleet does not autoscale",
        ),
        (
            "validator stake for a fleet that does not validate",
            set(
                set(example("miners-cpu.yaml"), "spec.validate", "false"),
                "spec.validatorStake",
                "1000",
            ),
            "validatorStake bonds validator stake, which a fleet with validate: false never uses",
        ),
        (
            "an unknown fleet role",
            set(example("validators-cpu.yaml"), "spec.role", "Coordinator"),
            "supported values: \"Miner\", \"Validator\"",
        ),
        (
            "a fraction above one",
            set(net(), "spec.genesis.taskBurn", "1.5"),
            "spec.genesis.taskBurn: Invalid value",
        ),
        (
            "an address that is not hex",
            set(
                net(),
                "spec.genesis.balances",
                "[{address: not-an-address, amount: 5}]",
            ),
            "spec.genesis.balances[0].address in body should match '^[0-9a-f]{64}$'",
        ),
        (
            "minReplicas above maxReplicas",
            set(miner(), "spec.autoscaling.minReplicas", "9"),
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            "negative GPUs",
            set(miner(), "spec.gpusPerPod", "-1"),
            "spec.gpusPerPod in body should be greater than or equal to 0",
        ),
        (
            "an unknown hyper-parameter search",
            set(miner(), "spec.hyperSearch", "grid"),
            "Unsupported value: \"grid\"",
        ),
        (
            "a miner without a network",
            set(miner(), "spec.networkRef", "~"),
            "spec.networkRef: Required value",
        ),
        (
            "a checkpoint interval that does not divide the steps",
            set(task(), "spec.task.checkpointInterval", "300"),
            "checkpointInterval must divide steps",
        ),
        (
            "a dataset hash that is not a SHA-256",
            set(task(), "spec.task.dataset.sha256", "abc"),
            "spec.task.dataset.sha256 in body should match '^[0-9a-f]{64}$'",
        ),
        (
            "a dataset read from the miner's own disk",
            set(task(), "spec.task.dataset.locator", "file:///etc/shadow"),
            "spec.task.dataset.locator in body should match",
        ),
        (
            "two models",
            set(
                task(),
                "spec.task.model.torchScript",
                "{url: 'https://example.invalid/m.pt', sha256: 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22}",
            ),
            "model: give exactly one of builtin and torchScript",
        ),
        (
            "an mlp without layers",
            set(task(), "spec.task.model.hidden", "~"),
            "mlp needs its hidden layer widths",
        ),
        (
            "a range whose default lies outside it",
            set(
                task(),
                "spec.task.optimizer.lr",
                "{min: 0.1, max: 0.2, default: 0.05}",
            ),
            "a hyper-parameter's range needs min <= default <= max",
        ),
        (
            "a value and a range at once",
            set(
                task(),
                "spec.task.optimizer.lr",
                "{value: 0.1, min: 0.01, max: 0.2, default: 0.1}",
            ),
            "a hyper-parameter is either {value: x} or {min: a, max: b, default: d}",
        ),
        (
            "Adam's betas on SGD",
            set(task(), "spec.task.optimizer.beta1", "{value: 0.9}"),
            "beta1 and beta2 apply to adamw only",
        ),
        (
            "an IDX dataset without labels",
            set(task(), "spec.task.dataset.format", "idx"),
            "an idx dataset needs its labels file",
        ),
        (
            "an empty window",
            set(task(), "spec.windows.commit", "0"),
            "spec.windows.commit in body should be greater than or equal to 1",
        ),
        (
            "no bounty",
            set(task(), "spec.bounty", "0"),
            "spec.bounty in body should be greater than or equal to 1",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, doc, expected) in &cases {
        match apply(&env, doc, true) {
            Ok(out) => wrong.push(format!("{what}: accepted ({})", out.trim())),
            Err(e) if !format!("{e:#}").contains(expected) => {
                wrong.push(format!("{what}: refused, but without {expected:?}: {e:#}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} bad resources were not refused as expected:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn references_and_submitted_fields_cannot_change() {
    let env = TestEnv::new("crd-immutable").await;
    install_crds(&env).await;
    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            example("miners-cpu.yaml"),
            "spec.networkRef",
            "{name: other}",
            "networkRef is immutable",
        ),
        (
            example("task-digits.yaml"),
            "spec.networkRef",
            "{name: other}",
            "networkRef is immutable",
        ),
        (
            example("task-digits.yaml"),
            "spec.bounty",
            "6000",
            "bounty is immutable",
        ),
        (
            example("task-digits.yaml"),
            "spec.task.steps",
            "4000",
            "task is immutable once submitted",
        ),
        (
            example("network.yaml"),
            "spec.coordinators",
            "7",
            "coordinators cannot change",
        ),
        (
            example("validators-cpu.yaml"),
            "spec.role",
            "Miner",
            "role is immutable",
        ),
        (
            example("miners-cpu.yaml"),
            "spec.storage.size",
            "2Gi",
            "storage cannot change",
        ),
        (
            example("network-dev.yaml"),
            "spec.genesis.blockTimeMs",
            "1000",
            "genesis cannot change once the network exists",
        ),
    ];
    for (doc, path, value, expected) in cases {
        apply(&env, &doc, false).expect("creating the original");
        let err = apply(&env, &set(doc.clone(), path, value), false)
            .expect_err(&format!("changing {path} must be refused"));
        assert!(
            format!("{err:#}").contains(expected),
            "changing {path}: expected {expected:?} in {err:#}"
        );
    }
    // What may change still can: the miner fleet's size, the network's suspension.
    apply(
        &env,
        &set(example("miners-cpu.yaml"), "spec.replicas", "5"),
        false,
    )
    .expect("replicas can change");
    apply(
        &env,
        &set(example("network-dev.yaml"), "spec.suspend", "true"),
        false,
    )
    .expect("suspend can change");
}

#[tokio::test]
async fn kubectl_lists_them_by_category_short_name_and_columns() {
    let env = TestEnv::new("crd-columns").await;
    install_crds(&env).await;
    for file in ["network-dev.yaml", "miners-cpu.yaml", "task-digits.yaml"] {
        apply(&env, &example(file), false).expect(file);
    }
    let all = env
        .cp
        .kubectl(&["get", "pot", "-n", &env.namespace])
        .unwrap();
    for name in [
        "potnetwork.pot.dev/dev",
        "miner.pot.dev/cpu",
        "trainingtask.pot.dev/digits",
    ] {
        assert!(
            all.contains(name),
            "{name} missing from `kubectl get pot`:\n{all}"
        );
    }
    let wide = env
        .cp
        .kubectl(&["get", "mnr", "-n", &env.namespace, "-o", "wide"])
        .unwrap();
    let header = wide.lines().next().unwrap_or_default();
    for column in [
        "NETWORK", "DESIRED", "READY", "GPUS", "TRAINING", "WON", "HOLDINGS", "AGE",
    ] {
        assert!(header.contains(column), "{column} missing from {header:?}");
    }
    let tasks = env
        .cp
        .kubectl(&["get", "tt", "-n", &env.namespace])
        .unwrap();
    assert!(
        tasks.lines().next().unwrap_or_default().contains("PHASE"),
        "{tasks}"
    );
    assert!(
        env.cp
            .kubectl(&["get", "pn", "dev", "-n", &env.namespace])
            .is_ok()
    );
    // The scale subresource: `kubectl scale` sets spec.replicas.
    env.cp
        .kubectl(&["scale", "mnr", "cpu", "-n", &env.namespace, "--replicas=4"])
        .expect("kubectl scale");
    let replicas = env
        .cp
        .kubectl(&[
            "get",
            "mnr",
            "cpu",
            "-n",
            &env.namespace,
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .unwrap();
    assert_eq!(replicas.trim(), "4");
}
