//! Driving `pot-operator` from outside: install its CRDs into the control plane and run the
//! operator as a process with a kubeconfig, scraping its `/metrics`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fixture::{TestEnv, eventually};
use crate::ports::free_port;
use crate::spawn::Process;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Install (or update) the CRDs from `crds/` and wait until each is established and served.
pub async fn install_crds(env: &TestEnv) {
    let crds = repo().join("crds");
    env.cp
        .kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().expect("a UTF-8 path"),
        ])
        .expect("installing crds/");
    for name in [
        "potnetworks.pot.dev",
        "miners.pot.dev",
        "trainingtasks.pot.dev",
    ] {
        env.cp
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{name}"),
            ])
            .unwrap_or_else(|e| panic!("{name} not established: {e:#}"));
    }
    // Established comes a moment before discovery serves the new kinds.
    eventually(
        "the pot category to be served",
        Duration::from_secs(30),
        || {
            let ok = env
                .cp
                .kubectl(&["get", "pot", "-n", &env.namespace])
                .is_ok();
            async move { ok.then_some(()) }
        },
    )
    .await;
}

/// A running `pot-operator run`, watching the test's namespace and keeping its Lease there.
pub struct Operator {
    pub process: Process,
    /// `http://127.0.0.1:<port>`: `/healthz`, `/readyz`, `/metrics`.
    pub url: String,
    pub log: PathBuf,
}

impl Operator {
    /// Start an operator named `identity` with `extra` flags (after the defaults, so they win).
    pub async fn start(env: &TestEnv, identity: &str, extra: &[&str]) -> Operator {
        Operator::start_with(env, identity, extra, &env.cp.kubeconfig).await
    }

    /// The same, reaching the API server through `kubeconfig` (another user's, say).
    pub async fn start_with(
        env: &TestEnv,
        identity: &str,
        extra: &[&str],
        kubeconfig: &Path,
    ) -> Operator {
        let bin = crate::workspace_binary("pot-operator", "pot-operator");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = env
            .cp
            .dir
            .join("logs")
            .join(format!("pot-operator-{}-{identity}.log", env.namespace));
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,pot_operator=debug")
            .args(["run", "--namespace", &env.namespace])
            .args(["--lease-namespace", &env.namespace])
            .args(["--identity", identity])
            .args(["--listen", &listen])
            .arg("--allow-api-url-annotation");
        // Reconcile every second unless the test asks for another period (clap refuses a
        // flag given twice).
        if !extra.contains(&"--resync-seconds") {
            cmd.args(["--resync-seconds", "1"]);
        }
        cmd.args(extra);
        let process = Process::start(&format!("pot-operator {identity}"), cmd, &log)
            .expect("starting pot-operator");
        let op = Operator {
            process,
            url: format!("http://{listen}"),
            log,
        };
        let url = op.url.clone();
        eventually(
            "the operator to serve /healthz",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move { get(&format!("{url}/healthz")).await.ok().map(|_| ()) }
            },
        )
        .await;
        op
    }

    /// The value of metric `name` (its full name with labels, as exposed) or 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = get(&format!("{}/metrics", self.url))
            .await
            .unwrap_or_default();
        metric_value(&text, name).unwrap_or(0.0)
    }

    /// Write requests (everything but GET) to the Kubernetes API so far, leader election's
    /// Lease renewals left out.
    pub async fn writes(&self) -> f64 {
        self.write_counts()
            .await
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The metric lines [`Operator::writes`] adds up (by method and resource), for messages.
    pub async fn write_counts(&self) -> Vec<String> {
        let text = get(&format!("{}/metrics", self.url))
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("pot_operator_kube_api_requests_total{"))
            .filter(|l| !l.contains("verb=\"GET\""))
            .filter(|l| !l.contains("resource=\"leases\""))
            .map(String::from)
            .collect()
    }

    /// Everything `/metrics` shows now.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        get(&format!("{}/metrics", self.url)).await
    }

    /// The operator's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// SHA-256 of the built-in UCI digits set (`builtin:digits`).
pub const DIGITS_SHA256: &str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22";

/// What the operator's controllers use (verb, `resource[/subresource]`): its RBAC must grant
/// each.
pub const RBAC_NEEDED: &[(&str, &str)] = &[
    ("watch", "potnetworks.pot.dev"),
    ("patch", "potnetworks.pot.dev/status"),
    ("watch", "miners.pot.dev"),
    ("patch", "miners.pot.dev/status"),
    ("watch", "trainingtasks.pot.dev"),
    ("patch", "trainingtasks.pot.dev"),
    ("patch", "trainingtasks.pot.dev/status"),
    ("list", "pods"),
    ("create", "statefulsets.apps"),
    ("patch", "statefulsets.apps"),
    ("watch", "services"),
    ("patch", "poddisruptionbudgets.policy"),
    ("create", "secrets"),
    ("update", "secrets"),
    ("create", "configmaps"),
    ("list", "persistentvolumeclaims"),
    ("create", "events.events.k8s.io"),
    ("patch", "leases.coordination.k8s.io"),
];

/// What the operator must never be able to do: its RBAC must grant none of it.
pub const RBAC_FORBIDDEN: &[(&str, &str)] = &[
    ("delete", "secrets"),
    ("delete", "statefulsets.apps"),
    ("patch", "potnetworks.pot.dev"),
    ("patch", "miners.pot.dev"),
    ("delete", "trainingtasks.pot.dev"),
    ("delete", "pods"),
    ("update", "configmaps"),
    ("create", "pods"),
    ("list", "nodes"),
    ("delete", "persistentvolumeclaims"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
];

/// Whether `user` may `verb` `resource[/subresource]` in `ns`, by `kubectl auth can-i --as`.
pub fn can(env: &TestEnv, ns: &str, user: &str, verb: &str, resource: &str) -> bool {
    // `kubectl auth can-i` answers on stdout and exits 1 for "no"; a subresource is a flag.
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let out = env
        .cp
        .command("kubectl")
        .args(["auth", "can-i", verb, resource, "-n", ns, "--as", user])
        .args(sub)
        .output()
        .unwrap();
    // 0 is yes, 1 is no; anything else (a resource kubectl does not know) is a broken question.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "kubectl auth can-i {verb} {resource}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Every way `user`'s permissions in `ns` differ from [`RBAC_NEEDED`] and [`RBAC_FORBIDDEN`]
/// (empty when it may do exactly what the operator needs, of what is asked).
pub fn rbac_deviations(env: &TestEnv, ns: &str, user: &str) -> Vec<String> {
    let missing = RBAC_NEEDED
        .iter()
        .filter(|(verb, resource)| !can(env, ns, user, verb, resource))
        .map(|(verb, resource)| format!("cannot {verb} {resource}"));
    let extra = RBAC_FORBIDDEN
        .iter()
        .filter(|(verb, resource)| can(env, ns, user, verb, resource))
        .map(|(verb, resource)| format!("may {verb} {resource}"));
    missing.chain(extra).collect()
}

/// A small task's `spec.task`: an MLP with one hidden layer of 8 on the built-in digits, 100
/// SGD steps, a checkpoint every 50.
pub fn digits_task() -> serde_json::Value {
    serde_json::json!({
        "model": {"builtin": "mlp", "hidden": [8]},
        "dataset": {"locator": "builtin:digits", "sha256": DIGITS_SHA256},
        "optimizer": {"kind": "sgd", "lr": {"value": 0.05}},
        "batchSize": 16, "steps": 100, "checkpointInterval": 50,
    })
}

/// A task's `spec.windows`, in blocks: `commit` for claims, `eval_reveal` for the publisher's
/// reveal, one block for every other phase.
pub fn windows(commit: u64, eval_reveal: u64) -> serde_json::Value {
    serde_json::json!({"commit": commit, "reveal": 1, "evalReveal": eval_reveal,
                       "reportCommit": 1, "reportReveal": 1, "challenge": 1,
                       "challengeReveal": 1, "vote": 1, "voteReveal": 1})
}

/// TrainingTask `name` of network `net`: [`digits_task`] evaluated on the digits too, a
/// bounty of 5,000 paid with the key in Secret `key_secret`, the default windows.
pub fn digits_training_task(name: &str, net: &str, key_secret: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pot.dev/v1alpha1", "kind": "TrainingTask",
        "metadata": {"name": name},
        "spec": {
            "networkRef": {"name": net},
            "publisherKeySecret": {"name": key_secret},
            "bounty": 5000,
            "task": digits_task(),
            "evalSet": {"locator": "builtin:digits", "sha256": DIGITS_SHA256},
        }
    })
}

/// Sign and send, from `key` with `nonce`, the chain transaction of [`digits_task`] with
/// `bounty` and `windows` (what the operator would submit for such a TrainingTask, without
/// one): a task on chain that no resource follows.
pub async fn submit_digits_task(
    node: &pot_protocol::client::Client,
    key: &pot_protocol::SecretKey,
    nonce: u64,
    bounty: u64,
    windows: serde_json::Value,
) -> anyhow::Result<()> {
    use pot_operator::task::spec;
    use pot_protocol::tx::{Tx, TxBody, eval_commitment};
    let mut doc = digits_training_task("x", "x", "x")["spec"].clone();
    doc["bounty"] = bounty.into();
    doc["windows"] = windows;
    let s: pot_operator::crd::task::TrainingTaskSpec = serde_json::from_value(doc)?;
    let eval = spec::dataset(&s.eval_set).map_err(anyhow::Error::msg)?;
    let head = node.head().await?;
    let tx = Tx {
        chain_id: head.chain_id,
        signer: key.address(),
        nonce,
        fee: head.tx_fee,
        body: TxBody::SubmitTask {
            spec: spec::task_spec(&s.task).map_err(anyhow::Error::msg)?,
            bounty: pot_protocol::Amount(s.bounty),
            eval_commit: eval_commitment(&eval, &pot_protocol::Hash::of_value("salt", &nonce)),
            windows: spec::windows(&s.windows),
        },
    };
    node.submit(&tx.sign(key)).await?;
    Ok(())
}

/// The replicas StatefulSet `name` asks for, if it exists.
pub async fn statefulset_replicas(env: &TestEnv, name: &str) -> Option<i32> {
    let api: kube::Api<k8s_openapi::api::apps::v1::StatefulSet> = env.api();
    api.get_opt(name).await.ok().flatten()?.spec?.replicas
}

/// `(type, reason, note)` of every Event recorded about object `name` of `kind` in the test's
/// namespace (events.k8s.io/v1, as the operator writes them).
pub async fn events_about(env: &TestEnv, kind: &str, name: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::events::v1::Event;
    let events: kube::Api<Event> = env.api();
    let list = events
        .list(&Default::default())
        .await
        .expect("listing Events");
    list.items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Server-side apply `doc` (a whole object as JSON) as the test's own field manager.
pub async fn apply<K>(api: &kube::Api<K>, doc: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    use kube::ResourceExt;
    use kube::api::{Patch, PatchParams};
    let obj: K = serde_json::from_value(doc).expect("a well-formed object");
    api.patch(
        &obj.name_any(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {}: {e}", obj.name_any()));
}

/// The replicas of StatefulSet `name` once `ok` holds for them (within 60 s).
pub async fn replicas_where(
    env: &TestEnv,
    name: &str,
    what: &str,
    ok: impl Fn(i32) -> bool,
) -> i32 {
    eventually(what, Duration::from_secs(60), || {
        let ok = &ok;
        async move {
            let r = statefulset_replicas(env, name).await?;
            ok(r).then_some(r)
        }
    })
    .await
}

/// The value on the line of an OpenMetrics text that starts with `name ` (labels included).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn get(url: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
    Ok(resp.text().await?)
}

/// The genesis file and the key file of `pod`, written into `dir` from what the operator made
/// for network `net` (its genesis ConfigMap and coordinator keys Secret).
pub async fn identity_files(env: &TestEnv, net: &str, pod: &str, dir: &Path) -> (PathBuf, PathBuf) {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::Api;
    let cms: Api<ConfigMap> = env.api();
    let secrets: Api<Secret> = env.api();
    let (cm, keys) = eventually("the genesis and keys", Duration::from_secs(60), || {
        let (cms, secrets) = (cms.clone(), secrets.clone());
        let (g, k) = (format!("{net}-genesis"), format!("{net}-coordinator-keys"));
        async move {
            let cm = cms.get_opt(&g).await.ok().flatten()?;
            let keys = secrets.get_opt(&k).await.ok().flatten()?;
            Some((cm, keys))
        }
    })
    .await;
    let genesis = dir.join("genesis.yaml");
    std::fs::write(&genesis, &cm.data.unwrap()["genesis.yaml"]).unwrap();
    let key = dir.join("key.json");
    std::fs::write(&key, &keys.data.unwrap()[pod].0).unwrap();
    (genesis, key)
}

/// Run the single coordinator of development network `net` (the pod the operator's
/// StatefulSet would run, as a process: no kubelet runs here) from the operator's own genesis
/// and key, with its data in `dir`; returns it and its API URL once it decided a block.
pub async fn coordinator_for(env: &TestEnv, net: &str, dir: &Path) -> (Process, String) {
    let (genesis, key) = identity_files(env, net, &format!("{net}-coordinator-0"), dir).await;
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(crate::pot_node_binary());
    cmd.args(["run", "--genesis"])
        .arg(&genesis)
        .arg("--key")
        .arg(&key)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--p2p-listen",
            &format!("/ip4/127.0.0.1/tcp/{}", free_port()),
        ])
        .args(["--api-listen", url.trim_start_matches("http://")]);
    let log = dir.join("coordinator.log");
    let process = Process::start("coordinator", cmd, &log).unwrap();
    pot_protocol::client::Client::new(url.clone())
        .wait_height(1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    (process, url)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_metric_is_read_by_its_full_name() {
        let text = "# TYPE x counter\nx_total{verb=\"GET\"} 3\nx_total{verb=\"PATCH\"} 7\n";
        assert_eq!(
            super::metric_value(text, "x_total{verb=\"PATCH\"}"),
            Some(7.0)
        );
        assert_eq!(super::metric_value(text, "x_total{verb=\"PUT\"}"), None);
    }
}
