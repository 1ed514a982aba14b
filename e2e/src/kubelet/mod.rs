//! A kubelet for one local Node: the pods the real scheduler puts on it run as local processes
//! of the binaries built here, so StatefulSets, Services, PVCs and the operator's manifests
//! work as in a cluster with no container engine.
//!
//! Written in Rust on kube-rs rather than on virtual-kubelet: the rest of the harness, the
//! operator and the tests are kube-rs code, so one toolchain builds and debugs all of it, and
//! what virtual-kubelet would add (node registration, a lease, pushing pod status) is a few
//! API calls here ([`node`], [`pod`]); the part that is real work — running a pod as processes
//! in their own mount namespaces with the right files, users, probes and restarts — would have
//! been ours to write in its provider interface too.
//!
//! - [`node`]: the Node, its capacity (`nvidia.com/gpu` configurable) and its Lease.
//! - [`pod`]: one worker per pod: volumes, init containers, containers, probes, restarts,
//!   status, graceful deletion.
//! - [`launch`] (pure): image → program and files, command line, environment.
//! - [`process`]: a container as a process in its own session and mount namespace.
//! - [`volumes`], [`storage`]: volume directories, and a local-path provisioner.
//! - [`names`]: pod addresses (`127.<n>.x.y`, one per pod name) and each pod's `/etc/hosts`.
//! - [`logs`]: the log endpoint `kubectl logs` reaches through the API server.

pub mod launch;
pub mod logs;
pub mod names;
pub mod node;
pub mod pod;
pub mod probe;
pub mod process;
pub mod status;
pub mod storage;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use launch::{Image, Images};
use names::{Addresses, PodName, ServiceName};
use node::NodeConfig;

/// Now, to the second (the precision Kubernetes times carry).
pub fn now() -> k8s_openapi::jiff::Timestamp {
    let s = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(s).expect("a valid time")
}

/// Everything the kubelet needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub cpu: String,
    pub memory: String,
    pub gpus: u32,
    /// Pod directories, volumes, logs and the address table live here.
    pub dir: PathBuf,
    pub images: Images,
    /// The API server's address, as pods reach it (`KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub api_server: (String, u16),
    pub tls: logs::Tls,
}

/// The node image as local files, as `node-image/Dockerfile` builds it: every binary given
/// (`pot-node`, `pot-operator`) in `/usr/local/bin`, libtorch in `/opt/libtorch/lib`. The image
/// `pot-node` runs `pot-node`; each other binary's name is also an image that runs it. The
/// binaries are hard-linked (or copied) under `dir`, so a rebuild does not change a running
/// pod's program and a non-root pod can reach them.
pub fn project_images(
    dir: &Path,
    binaries: &[(&str, PathBuf)],
    libtorch_lib: Option<PathBuf>,
) -> anyhow::Result<Images> {
    let bin = dir.join("images").join("bin");
    std::fs::create_dir_all(&bin)?;
    for (name, binary) in binaries {
        let target = bin.join(name);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(binary, &target).is_err() {
            std::fs::copy(binary, &target)
                .with_context(|| format!("copying {} into the image", binary.display()))?;
        }
    }
    let mut images = Images::default();
    for (name, _) in binaries {
        let mut image = Image {
            entrypoint: vec![format!("/usr/local/bin/{name}")],
            files: vec![(bin.clone(), PathBuf::from("/usr/local/bin"))],
            env: vec![],
        };
        if let Some(lib) = &libtorch_lib {
            image
                .files
                .push((lib.clone(), PathBuf::from("/opt/libtorch/lib")));
            image
                .env
                .push(("LD_LIBRARY_PATH".into(), "/opt/libtorch/lib".into()));
        }
        images.insert(name, image);
    }
    Ok(images)
}

/// A kubelet running on its own thread and runtime (so it outlives any one test's runtime);
/// dropping it stops its pods and waits for it.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Start it with the credentials in `kubeconfig`; returns once the Node is registered.
    pub fn start(kubeconfig: &Path, cfg: Config) -> anyhow::Result<Running> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let kubeconfig = kubeconfig.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("pot-e2e-kubelet".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let ready = ready_tx.clone();
                let result = rt.block_on(async move {
                    let client = crate::control_plane::client_for(&kubeconfig).await?;
                    run(
                        client,
                        cfg,
                        async {
                            let _ = stopped.await;
                        },
                        move || {
                            let _ = ready.send(Ok(()));
                        },
                    )
                    .await
                });
                if let Err(e) = result {
                    warn!(error = %format!("{e:#}"), "local kubelet ended");
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(Running {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e.context("starting the local kubelet")),
            Err(_) => anyhow::bail!("the local kubelet did not register its node within 60 s"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run the kubelet until `shutdown` resolves; then stop every pod's processes. `on_ready` is
/// called once the Node is registered.
pub async fn run(
    client: Client,
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    process::check_supported()?;
    // Pods reach their files only through their mounts, so nobody else on the host needs to
    // read Secrets or volumes here.
    for sub in ["pods", "volumes"] {
        let d = cfg.dir.join(sub);
        std::fs::create_dir_all(&d)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    }
    let port = logs::serve(cfg.dir.clone(), &cfg.tls).await?;
    let node_cfg = NodeConfig {
        name: cfg.node_name.clone(),
        cpu: cfg.cpu.clone(),
        memory: cfg.memory.clone(),
        gpus: cfg.gpus,
        max_pods: 250,
        kubelet_port: port,
    };
    node::register(&client, &node_cfg).await?;
    storage::ensure_class(&client).await?;
    let keep_alive = tokio::spawn(node::keep_alive(client.clone(), node_cfg));
    let provisioner = tokio::spawn(storage::run(client.clone(), cfg.dir.join("volumes")));
    info!(node = %cfg.node_name, port, "local kubelet ready");
    on_ready();

    let shared = Arc::new(pod::Shared {
        client: client.clone(),
        images: cfg.images.clone(),
        root: cfg.dir.clone(),
        host_ip: Ipv4Addr::LOCALHOST,
        api_server: cfg.api_server.clone(),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("an HTTP client for probes")?,
    });
    let mut kubelet = Kubelet {
        shared,
        node: cfg.node_name.clone(),
        addresses: Addresses::open(&cfg.dir.join("addresses.json"))?,
        workers: BTreeMap::new(),
        hosts: BTreeMap::new(),
    };

    let (pods, pod_events) = mirror(Api::<Pod>::all(client.clone()));
    let (services, service_events) = mirror(Api::<Service>::all(client.clone()));
    let (sets, set_events) = mirror(Api::<StatefulSet>::all(client.clone()));
    let mut events = futures::stream::select(
        pod_events,
        futures::stream::select(service_events, set_events),
    );
    let mut resync = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            e = events.next() => if e.is_none() { break },
            _ = resync.tick() => {}
        }
        if let Err(e) = kubelet.sync(&pods, &services, &sets).await {
            warn!(error = %format!("{e:#}"), "kubelet sync");
        }
    }
    info!("local kubelet stopping its pods");
    for w in kubelet.workers.values() {
        let _ = w.updates.send(None);
    }
    for (_, w) in std::mem::take(&mut kubelet.workers) {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.task).await;
    }
    keep_alive.abort();
    provisioner.abort();
    Ok(())
}

/// A store of every `K` the API server has, kept current by a watch (which retries on its own),
/// and a stream that yields each time it changed.
pub fn mirror<K>(api: Api<K>) -> (Store<K>, futures::stream::BoxStream<'static, ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let changes = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map(|_| ())
        .boxed();
    (store, changes)
}

struct Kubelet {
    shared: Arc<pod::Shared>,
    node: String,
    addresses: Addresses,
    /// By pod uid.
    workers: BTreeMap<String, pod::Worker>,
    /// The last `/etc/hosts` written for each pod uid.
    hosts: BTreeMap<String, String>,
}

impl Kubelet {
    /// Level-triggered: start a worker for every pod of this node that has none, hand each
    /// worker its pod's latest version (or its absence), and rewrite the pods' hosts files.
    async fn sync(
        &mut self,
        pods: &Store<Pod>,
        services: &Store<Service>,
        sets: &Store<StatefulSet>,
    ) -> anyhow::Result<()> {
        let ours: Vec<Arc<Pod>> = pods
            .state()
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str())
            })
            .collect();
        let names = self.names(&ours, sets)?;
        let services = service_names(services);
        for p in &ours {
            let uid = p.uid().unwrap_or_default();
            let me = names.iter().find(|n| {
                n.namespace == p.namespace().unwrap_or_default() && n.name == p.name_any()
            });
            if let Some(me) = me {
                let hosts = names::hosts_file(me, &names, &services);
                if self.hosts.get(&uid) != Some(&hosts) {
                    let dir = pod::pod_dir(&self.shared.root, p);
                    // In place (same inode), since the file is bind-mounted into the pod. One
                    // pod's failure (a full disk) must not stop the others' updates.
                    let written = std::fs::create_dir_all(&dir)
                        .and_then(|_| std::fs::write(dir.join("hosts"), &hosts));
                    match written {
                        Ok(()) => {
                            self.hosts.insert(uid.clone(), hosts);
                        }
                        Err(e) => warn!(pod = %p.name_any(), error = %e, "writing /etc/hosts"),
                    }
                }
            }
            if self.workers.contains_key(&uid) {
                continue;
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                // Ended before this kubelet started: nothing to run; a delete only needs
                // its final step.
                if p.metadata.deletion_timestamp.is_some() {
                    let _ = pod::final_delete(&self.shared.client, p).await;
                }
                continue;
            }
            let ip = match self
                .addresses
                .of(&p.namespace().unwrap_or_default(), &p.name_any())
            {
                Ok(ip) => ip,
                Err(e) => {
                    warn!(pod = %p.name_any(), error = %format!("{e:#}"), "no address");
                    continue;
                }
            };
            info!(pod = %p.name_any(), %ip, "starting pod");
            let worker = pod::start(self.shared.clone(), (**p).clone(), ip);
            self.workers.insert(uid, worker);
        }
        let by_uid: BTreeMap<String, &Arc<Pod>> = ours
            .iter()
            .map(|p| (p.uid().unwrap_or_default(), p))
            .collect();
        for (uid, w) in &self.workers {
            let latest = by_uid.get(uid).map(|p| (***p).clone());
            w.updates.send_if_modified(|current| {
                let version = |p: &Option<Pod>| p.as_ref().and_then(|p| p.resource_version());
                if version(current) == version(&latest) && current.is_some() == latest.is_some() {
                    false
                } else {
                    *current = latest;
                    true
                }
            });
        }
        self.workers.retain(|_, w| !w.task.is_finished());
        self.hosts.retain(|uid, _| by_uid.contains_key(uid));
        Ok(())
    }

    /// This node's pods, and the pods its StatefulSets will have (their names are known before
    /// they exist, and a peer that starts first must be able to resolve them).
    fn names(
        &mut self,
        ours: &[Arc<Pod>],
        sets: &Store<StatefulSet>,
    ) -> anyhow::Result<Vec<PodName>> {
        let mut names: BTreeMap<(String, String), PodName> = BTreeMap::new();
        for set in sets.state() {
            let Some(spec) = &set.spec else { continue };
            let ns = set.namespace().unwrap_or_default();
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            // Names ahead of their pods for at most the first 256 (a huge replica count must
            // not use up the address block).
            for i in 0..spec.replicas.unwrap_or(1).clamp(0, 256) {
                let name = format!("{}-{i}", set.name_any());
                let ip = self.addresses.of(&ns, &name)?;
                names.insert(
                    (ns.clone(), name.clone()),
                    PodName {
                        namespace: ns.clone(),
                        hostname: Some(name.clone()),
                        name,
                        subdomain: spec.service_name.clone().filter(|s| !s.is_empty()),
                        labels: labels.clone(),
                        ip,
                        ready: false,
                    },
                );
            }
        }
        for p in ours {
            let ns = p.namespace().unwrap_or_default();
            let ip = self.addresses.of(&ns, &p.name_any())?;
            let spec = p.spec.as_ref();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            names.insert(
                (ns.clone(), p.name_any()),
                PodName {
                    namespace: ns,
                    name: p.name_any(),
                    hostname: spec.and_then(|s| s.hostname.clone()),
                    subdomain: spec.and_then(|s| s.subdomain.clone()),
                    labels: p.labels().clone(),
                    ip,
                    ready: ready && p.metadata.deletion_timestamp.is_none(),
                },
            );
        }
        Ok(names.into_values().collect())
    }
}

fn service_names(services: &Store<Service>) -> Vec<ServiceName> {
    services
        .state()
        .iter()
        .filter_map(|s| {
            let spec = s.spec.as_ref()?;
            Some(ServiceName {
                namespace: s.namespace().unwrap_or_default(),
                name: s.name_any(),
                selector: spec.selector.clone().unwrap_or_default(),
                headless: spec.cluster_ip.as_deref() == Some("None"),
                publish_not_ready: spec.publish_not_ready_addresses == Some(true),
            })
        })
        .collect()
}
