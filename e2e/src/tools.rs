//! Where the control-plane tools are: built by `make k8s-tools` (`e2e/k8s-tools/build.sh`) into
//! a cache directory keyed by the Go module's `go.mod`, `go.sum` and `build.sh`, so a change of pinned
//! version builds a new set beside the old one.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The Go module that pins the tools.
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s-tools")
}

/// The directory holding `etcd`, `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`,
/// `kubectl`, `helm` and `kwok`. `POT_K8S_TOOLS` overrides it.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("POT_K8S_TOOLS") {
        return check(PathBuf::from(dir));
    }
    let module = module_dir();
    let mut h = Sha256::new();
    for f in ["go.mod", "go.sum", "build.sh"] {
        let p = module.join(f);
        h.update(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    let key = &hex::encode(h.finalize())[..16];
    check(cache_root().join("k8s-tools").join(key).join("bin"))
}

/// `$POT_CACHE_DIR`, or `~/.cache/pot-k8s`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("POT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache").join("pot-k8s")
        })
}

pub const TOOLS: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
    "kwok",
];

fn check(dir: PathBuf) -> anyhow::Result<PathBuf> {
    for t in TOOLS {
        if !dir.join(t).is_file() {
            bail!(
                "control-plane tool {t} is not in {}: run `make k8s-tools` first",
                dir.display()
            );
        }
    }
    Ok(dir)
}
