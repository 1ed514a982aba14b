//! `pot-e2e cluster up|env|down` works for a person, and no etcd or kube-* process outlives the
//! process that started it: not after `down`, and not after that process is killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pot_e2e::spawn::{alive, signal};

fn pids(dir: &std::path::Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .lines()
        .map(|l| {
            let (n, p) = l.split_once(' ').unwrap();
            (n.to_string(), p.parse().unwrap())
        })
        .collect()
}

fn wait_gone(pids: &[(String, u32)], within: Duration) {
    let deadline = Instant::now() + within;
    for (name, pid) in pids {
        while alive(*pid) {
            assert!(
                Instant::now() < deadline,
                "{name} (pid {pid}) is still running"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Start `pot-e2e cluster up` and wait for its `export KUBECONFIG=` line.
fn cluster_up(dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pot-e2e"))
        .args(["cluster", "up", "--dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("export KUBECONFIG="), "{line:?}");
    (
        child,
        line.trim()
            .trim_start_matches("export KUBECONFIG=")
            .to_string(),
    )
}

#[test]
fn cluster_up_env_down_and_no_orphans_when_killed() {
    // Named like the fixture's temporary directories, so `check-no-orphans.sh` sees these too.
    let tmp = tempfile::Builder::new()
        .prefix("pot-k8s-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("cluster");
    let e2e = env!("CARGO_BIN_EXE_pot-e2e");

    // A person's session: up, use the kubeconfig, env, down.
    let (mut up, kubeconfig) = cluster_up(&dir);
    let kubectl = pot_e2e::tools::bin_dir().unwrap().join("kubectl");
    let out = Command::new(&kubectl)
        .args(["get", "--raw", "/readyz"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    let env = Command::new(e2e)
        .args(["cluster", "env", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&env.stdout).trim(),
        format!("export KUBECONFIG={kubeconfig}")
    );
    let running = pids(&dir);
    assert_eq!(running.len(), 4, "{running:?}");
    let down = Command::new(e2e)
        .args(["cluster", "down", "--dir", dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(down.success());
    assert!(up.wait().unwrap().success());
    wait_gone(&running, Duration::from_secs(5));
    let env = Command::new(e2e)
        .args(["cluster", "env", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!env.status.success());

    // The owner dies without a chance to clean up: the kernel takes its children with it.
    let (mut up, _) = cluster_up(&dir);
    let running = pids(&dir);
    signal(up.id(), libc::SIGKILL);
    let _ = up.wait();
    wait_gone(&running, Duration::from_secs(10));
}
