//! The test fixture: one control plane per test binary, one namespace per test.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::control_plane::{ControlPlane, Options};

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane shared by every test in this binary (API server, controller manager and
/// scheduler), started on first use. Its processes and its data directory go when the test
/// binary exits.
pub fn shared() -> &'static ControlPlane {
    SHARED.get_or_init(|| match ControlPlane::start_with(Options::full()) {
        Ok(cp) => {
            remove_at_exit();
            cp
        }
        Err(e) => panic!("starting the control plane: {e:#}"),
    })
}

/// The test harness ends with `exit`, which runs atexit handlers but drops no static.
fn remove_at_exit() {
    extern "C" fn remove_shared() {
        if let Some(cp) = SHARED.get() {
            cp.kill_and_remove();
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: atexit(3) with a plain `extern "C" fn()` that neither unwinds nor calls exit.
    let rc = unsafe { libc::atexit(remove_shared) };
    assert_eq!(rc, 0, "atexit");
}

/// Poll `check` until it returns `Some`, or fail after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One test's view: a client and a fresh namespace. If the test panics, the components' log
/// tails are printed when this is dropped.
pub struct TestEnv {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub namespace: String,
}

impl TestEnv {
    pub async fn new(test: &str) -> TestEnv {
        let cp = shared();
        let client = cp.client().await.expect("admin client");
        let suffix = hex::encode(rand::random::<[u8; 3]>());
        let name: String = format!("{}-{suffix}", test.replace('_', "-"))
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
            .to_lowercase();
        let name = name
            .trim_start_matches('-')
            .chars()
            .take(63)
            .collect::<String>();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        TestEnv {
            cp,
            client,
            namespace: name,
        }
    }

    /// A namespaced API in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test in namespace {} failed; control plane logs:\n{}",
                self.namespace,
                self.cp.log_tails(40)
            );
        }
    }
}
