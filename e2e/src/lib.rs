//! `pot-e2e`: a real Kubernetes control plane on this machine (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, built from Go modules) for tests and the demo, and
//! helpers that drive the project's binaries from outside (a local coordinator network).

pub mod control_plane;
pub mod coordinators;
pub mod demo;
pub mod fixture;
pub mod kubelet;
pub mod ledger_bench;
pub mod link_delay;
pub mod operator;
pub mod operator_bench;
pub mod pki;
pub mod ports;
pub mod spawn;
pub mod tools;

pub use control_plane::{ControlPlane, Options};
pub use fixture::{TestEnv, eventually, shared};

use std::path::PathBuf;
use std::process::Command;

/// The `pot-node` the tests drive: built with the `fault-injection` feature, so a test can make
/// one coordinator Byzantine. Every test uses this one build, so no two tests ever rebuild (and
/// replace) the binary under each other; shipped binaries are built without the feature.
pub fn pot_node_binary() -> PathBuf {
    workspace_binary_with("pot-node", "pot-node", &["fault-injection"])
}

/// The path of a binary of this workspace, built first (a no-op when it is up to date) with the
/// same cargo and profile as the running test.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    workspace_binary_with(package, name, &[])
}

fn workspace_binary_with(package: &str, name: &str, features: &[&str]) -> PathBuf {
    // A benchmark names its (release) binaries instead: `POT_E2E_POT_NODE`, `POT_E2E_POT_OPERATOR`.
    let var = format!("POT_E2E_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let status = cmd.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {name} failed"
    );
    // Test executables live in target/<profile>/deps/; binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}
