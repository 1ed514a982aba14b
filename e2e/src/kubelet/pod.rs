//! One pod's life on this node: its volumes, its init containers in order, then its containers
//! as processes restarted by the pod's policy and watched by their probes, its status patched
//! whenever any of that changes, and on deletion SIGTERM, SIGKILL after the grace period, and
//! the final delete that lets the API server forget it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::launch::{self, Images, Objects, PodFacts};
use super::now;
use super::probe;
use super::process::{self, Bind, Launch};
use super::status::{ContainerView, PodView, State, keep_transition_times, pod_status};
use super::volumes::{self, Owner};

/// What every pod worker shares.
pub struct Shared {
    pub client: Client,
    pub images: Images,
    /// The kubelet's directory (`pods/` below it).
    pub root: PathBuf,
    pub host_ip: Ipv4Addr,
    pub api_server: (String, u16),
    pub http: reqwest::Client,
}

/// The directory of one pod: volumes, logs and its `/etc/hosts`.
pub fn pod_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join("pods").join(format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ))
}

/// A container's log for one run (`kubectl logs` reads the newest; `--previous` the one before).
pub fn log_path(pod_dir: &Path, container: &str, run: i32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{run}.log"))
}

/// A running pod worker; the kubelet feeds it the pod as it changes (`None`: the pod is gone).
pub struct Worker {
    pub updates: watch::Sender<Option<Pod>>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn start(shared: Arc<Shared>, pod: Pod, ip: Ipv4Addr) -> Worker {
    let (updates, rx) = watch::channel(Some(pod.clone()));
    let task = tokio::spawn(async move {
        let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        run(shared, pod, ip, rx).await;
        info!(pod = %name, "pod worker finished");
    });
    Worker { updates, task }
}

/// The state every task of one pod works on.
struct PodCtx {
    shared: Arc<Shared>,
    pod: Pod,
    dir: PathBuf,
    facts: PodFacts,
    view: Mutex<PodView>,
    changed: Notify,
    /// The running process of each container (by name), for signals.
    pids: Mutex<BTreeMap<String, u32>>,
    /// Each volume's directory, once prepared.
    volume_dirs: Mutex<BTreeMap<String, PathBuf>>,
    stopping: watch::Sender<bool>,
}

impl PodCtx {
    fn update(&self, init: bool, i: usize, f: impl FnOnce(&mut ContainerView)) {
        {
            let mut v = self.view.lock().expect("view lock");
            let list = if init { &mut v.init } else { &mut v.containers };
            f(&mut list[i]);
        }
        self.changed.notify_one();
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Who owns the pod's volume files (and is the container's supplementary group).
    fn owner(&self, container: Option<&Container>) -> Owner {
        let id = identity(&self.pod, container);
        Owner {
            uid: id.uid,
            gid: id.fs_group.or(id.group),
        }
    }
}

/// The security context that applies to a container: its own fields over the pod's.
struct Identity {
    uid: Option<u32>,
    group: Option<u32>,
    fs_group: Option<u32>,
    non_root: bool,
}

fn identity(pod: &Pod, container: Option<&Container>) -> Identity {
    let p = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c = container.and_then(|c| c.security_context.as_ref());
    let id = |v: Option<i64>| v.map(|v| v as u32);
    Identity {
        uid: id(c
            .and_then(|s| s.run_as_user)
            .or(p.and_then(|s| s.run_as_user))),
        group: id(c
            .and_then(|s| s.run_as_group)
            .or(p.and_then(|s| s.run_as_group))),
        fs_group: id(p.and_then(|s| s.fs_group)),
        non_root: c
            .and_then(|s| s.run_as_non_root)
            .or(p.and_then(|s| s.run_as_non_root))
            == Some(true),
    }
}

async fn run(shared: Arc<Shared>, pod: Pod, ip: Ipv4Addr, mut rx: watch::Receiver<Option<Pod>>) {
    let dir = pod_dir(&shared.root, &pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let views = |list: &[Container]| -> Vec<ContainerView> {
        list.iter()
            .map(|c| {
                let mut v = ContainerView::new(&c.name, c.image.as_deref().unwrap_or_default());
                // After a kubelet restart the count goes on from what the pod last reported.
                v.restart_count = previous_restarts(&pod, &c.name);
                v
            })
            .collect()
    };
    let view = PodView {
        init: views(spec.init_containers.as_deref().unwrap_or_default()),
        containers: views(&spec.containers),
        pod_ip: ip,
        host_ip: shared.host_ip,
        start_time: now(),
        failure: None,
    };
    let facts = PodFacts {
        pod_ip: ip,
        host_ip: shared.host_ip,
        api_server: shared.api_server.clone(),
    };
    let (stopping, _) = watch::channel(false);
    let ctx = Arc::new(PodCtx {
        shared,
        pod: pod.clone(),
        dir,
        facts,
        view: Mutex::new(view),
        changed: Notify::new(),
        pids: Mutex::new(BTreeMap::new()),
        volume_dirs: Mutex::new(BTreeMap::new()),
        stopping,
    });
    let publisher = tokio::spawn(publish(ctx.clone(), rx.clone()));
    ctx.changed.notify_one();
    let life = tokio::spawn(live(ctx.clone()));

    // Until the pod is deleted (or vanishes).
    let grace = loop {
        let current = rx.borrow_and_update().clone();
        match current {
            None => break Duration::ZERO,
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                let secs = p
                    .metadata
                    .deletion_grace_period_seconds
                    .or(spec.termination_grace_period_seconds)
                    .unwrap_or(30);
                break Duration::from_secs(secs.max(0) as u64);
            }
            Some(_) => {}
        }
        if rx.changed().await.is_err() {
            break Duration::ZERO;
        }
    };
    info!(pod = %pod.name_any(), ?grace, "stopping pod");
    let _ = ctx.stopping.send(true);
    stop_all(&ctx, grace).await;
    let _ = life.await;
    ctx.changed.notify_one();
    // Let the last status out, then let the API server forget the pod.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher.abort();
    if rx.borrow().is_some() {
        for _ in 0..10 {
            match final_delete(&ctx.shared.client, &pod).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(pod = %pod.name_any(), error = %e, "final delete");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(ctx.dir.join("volumes"));
}

/// The kubelet's last step of a deletion: remove the object now that nothing of it runs. The
/// uid precondition leaves a newer pod of the same name alone; gone already is done.
pub async fn final_delete(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    match pods.delete(&pod.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn previous_restarts(pod: &Pod, name: &str) -> i32 {
    let status = pod.status.as_ref();
    let all = status
        .and_then(|s| s.container_statuses.clone())
        .into_iter()
        .flatten()
        .chain(
            status
                .and_then(|s| s.init_container_statuses.clone())
                .into_iter()
                .flatten(),
        );
    all.filter(|c| c.name == name)
        .map(|c| {
            let ran = c
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
            c.restart_count + i32::from(ran)
        })
        .next()
        .unwrap_or(0)
}

/// SIGTERM every running container, SIGKILL what is left after `grace`.
async fn stop_all(ctx: &PodCtx, grace: Duration) {
    let pids: Vec<u32> = ctx.pids.lock().expect("pids").values().copied().collect();
    for pid in &pids {
        process::signal_group(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !ctx.pids.lock().expect("pids").is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in ctx.pids.lock().expect("pids").values() {
        process::signal_group(*pid, libc::SIGKILL);
    }
}

/// Volumes, then init containers one by one, then all containers until the pod stops.
async fn live(ctx: Arc<PodCtx>) {
    let spec = ctx.pod.spec.clone().unwrap_or_default();
    let mut stop = ctx.stopping.subscribe();
    // Volumes and the objects the environment names; retried until they are all there.
    let objects = loop {
        match prepare(&ctx).await {
            Ok(objects) => {
                ctx.view.lock().expect("view").failure = None;
                break objects;
            }
            Err(e) => {
                let message = format!("{e:#}");
                warn!(pod = %ctx.pod.name_any(), error = %message, "preparing the pod");
                {
                    let mut guard = ctx.view.lock().expect("view");
                    let v = &mut *guard;
                    for c in v.init.iter_mut().chain(v.containers.iter_mut()) {
                        c.state = State::waiting("ContainerCreating", Some(message.clone()));
                    }
                }
                ctx.changed.notify_one();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let refresher = tokio::spawn(refresh_volumes(ctx.clone()));
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let ok = run_container(ctx.clone(), true, i, c.clone(), objects.clone()).await;
        if !ok {
            refresher.abort();
            return;
        }
    }
    let tasks: Vec<_> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(run_container(
                ctx.clone(),
                false,
                i,
                c.clone(),
                objects.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    refresher.abort();
}

/// Read the Secrets and ConfigMaps the pod names (missing ones are left out: the
/// environment and volumes say which were required), write the volumes.
async fn prepare(ctx: &PodCtx) -> anyhow::Result<Objects> {
    let ns = ctx.pod.namespace().unwrap_or_default();
    let client = &ctx.shared.client;
    let (secret_names, map_names) = launch::referenced_objects(&ctx.pod);
    let mut objects = Objects::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in secret_names {
        if let Some(s) = secrets.get_opt(&name).await? {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .chain(
                    s.string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                )
                .collect();
            objects.secrets.insert(name, data);
        }
    }
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in map_names {
        if let Some(m) = maps.get_opt(&name).await? {
            let mut data = m.data.unwrap_or_default();
            for (k, v) in m.binary_data.unwrap_or_default() {
                data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            objects.config_maps.insert(name, data);
        }
    }
    let dirs = volumes::prepare(
        client,
        &ctx.pod,
        &ctx.dir,
        &ctx.facts,
        &objects,
        ctx.owner(None),
    )
    .await?;
    *ctx.volume_dirs.lock().expect("volume dirs") = dirs;
    Ok(objects)
}

/// Rewrite Secret, ConfigMap and token volumes every minute, as the kubelet's sync does.
async fn refresh_volumes(ctx: Arc<PodCtx>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if let Err(e) = prepare(&ctx).await {
            warn!(pod = %ctx.pod.name_any(), error = %format!("{e:#}"), "refreshing volumes");
        }
    }
}

/// The launch of one container: its command line, the image's files, its volumes and
/// `/etc/hosts` at their paths, its user.
fn launch_of(ctx: &PodCtx, c: &Container, objects: &Objects, run: i32) -> anyhow::Result<Launch> {
    let line = launch::command_line(&ctx.pod, c, &ctx.shared.images, &ctx.facts, objects)?;
    let image = ctx
        .shared
        .images
        .resolve(c.image.as_deref().unwrap_or_default())?;
    let mut binds: Vec<Bind> = image
        .files
        .iter()
        .map(|(host, inside)| Bind {
            source: host.clone(),
            target: inside.clone(),
            read_only: true,
        })
        .collect();
    binds.push(Bind {
        source: ctx.dir.join("hosts"),
        target: "/etc/hosts".into(),
        read_only: true,
    });
    let volume_dirs = ctx.volume_dirs.lock().expect("volume dirs").clone();
    for m in c.volume_mounts.iter().flatten() {
        let dir = volume_dirs
            .get(&m.name)
            .with_context(|| format!("volume mount {:?} names no volume", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => volumes::sub_path(dir, sub)?,
            None => dir.clone(),
        };
        // Secret, ConfigMap, projected and downward-API volumes are always read-only, as in
        // Kubernetes: the kubelet rewrites them, and a pod must not change what others read.
        let generated = ctx
            .pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find(|v| v.name == m.name)
            .is_some_and(|v| {
                v.secret.is_some()
                    || v.config_map.is_some()
                    || v.projected.is_some()
                    || v.downward_api.is_some()
            });
        binds.push(Bind {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true) || generated,
        });
    }
    let id = identity(&ctx.pod, Some(c));
    if id.non_root && id.uid.is_none_or(|u| u == 0) {
        anyhow::bail!(
            "container has runAsNonRoot and would run as root: set runAsUser (images here carry no user)"
        );
    }
    let groups: Vec<u32> = ctx.owner(Some(c)).gid.into_iter().collect();
    let user = id.uid.map(|uid| (uid, id.group.unwrap_or(uid), groups));
    let log = log_path(&ctx.dir, &c.name, run);
    std::fs::create_dir_all(log.parent().expect("log dir"))?;
    Ok(Launch {
        program: line.program,
        args: line.args,
        env: line.env,
        working_dir: c.working_dir.as_ref().map(PathBuf::from),
        binds,
        user,
        log,
    })
}

/// Run one container until the pod stops or the restart policy ends it. Returns whether it
/// succeeded (what an init container must do before the next starts).
async fn run_container(
    ctx: Arc<PodCtx>,
    init: bool,
    i: usize,
    c: Container,
    objects: Objects,
) -> bool {
    let policy = ctx.restart_policy();
    let mut stop = ctx.stopping.subscribe();
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return false;
        }
        let run = {
            let v = ctx.view.lock().expect("view");
            if init {
                v.init[i].restart_count
            } else {
                v.containers[i].restart_count
            }
        };
        let launch = match launch_of(&ctx, &c, &objects, run) {
            Ok(l) => l,
            Err(e) => {
                let message = format!("{e:#}");
                ctx.update(init, i, |v| {
                    v.state = State::waiting("CreateContainerConfigError", Some(message))
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stop.changed() => return false,
                }
            }
        };
        let started_at = now();
        let began = Instant::now();
        let child = match process::spawn(&launch) {
            Ok(child) => child,
            Err(e) => {
                let message = format!("{e:#}");
                warn!(pod = %ctx.pod.name_any(), container = %c.name, error = %message, "start failed");
                ctx.update(init, i, |v| {
                    v.state = State::waiting("RunContainerError", Some(message))
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return false,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        let pid = child.id();
        ctx.pids.lock().expect("pids").insert(c.name.clone(), pid);
        // A deletion that began while the process was starting found no pid to signal.
        if *stop.borrow() {
            process::signal_group(pid, libc::SIGKILL);
        }
        let has_startup = c.startup_probe.is_some() && !init;
        let has_readiness = c.readiness_probe.is_some() && !init;
        ctx.update(init, i, |v| {
            v.state = State::Running { started_at };
            v.started = !has_startup;
            v.ready = !init && !has_startup && !has_readiness;
        });
        let probes = (!init).then(|| {
            let mut exec_as = launch.clone();
            exec_as.log = ctx.dir.join("logs").join(&c.name).join("probes.log");
            tokio::spawn(watch_probes(ctx.clone(), i, c.clone(), pid, exec_as))
        });
        let status = process::exited(child).await;
        // The main process is gone; nothing it started outlives it.
        process::signal_group(pid, libc::SIGKILL);
        ctx.pids.lock().expect("pids").remove(&c.name);
        if let Some(p) = probes {
            p.abort();
        }
        use std::os::unix::process::ExitStatusExt;
        let signal = status.and_then(|s| s.signal());
        let exit_code = status
            .and_then(|s| s.code())
            .unwrap_or_else(|| 128 + signal.unwrap_or(9));
        let stopping = *stop.borrow();
        let again = !stopping
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => !init || exit_code != 0,
            };
        let terminated = State::Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at,
            finished_at: now(),
        };
        info!(pod = %ctx.pod.name_any(), container = %c.name, exit_code, again, "container exited");
        if !again {
            ctx.update(init, i, |v| {
                v.state = terminated;
                v.ready = false;
                v.finished = true;
            });
            return exit_code == 0;
        }
        // Restart, waiting longer after each quick crash (reset once it ran a while).
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        ctx.update(init, i, |v| {
            v.last_state = Some(terminated);
            v.state = State::waiting(
                "CrashLoopBackOff",
                Some(format!("back-off {backoff:?} restarting failed container")),
            );
            v.ready = false;
            v.restart_count += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// The startup probe first, then liveness and readiness, each on its own period. A failed
/// startup or liveness probe kills the container (its loop restarts it).
async fn watch_probes(ctx: Arc<PodCtx>, i: usize, c: Container, pid: u32, exec_as: Launch) {
    let http = ctx.shared.http.clone();
    let ip = ctx.facts.pod_ip;
    let kill = |why: String| {
        warn!(pod = %ctx.pod.name_any(), container = %c.name, %why, "killing container");
        process::signal_group(pid, libc::SIGTERM);
        let grace = ctx
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace.max(0) as u64)).await;
            process::signal_group(pid, libc::SIGKILL);
        });
    };
    if let Some(p) = &c.startup_probe {
        let t = probe::timing(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut failures = 0;
        loop {
            match probe::check(p, &c, ip, &exec_as, &http).await {
                Ok(()) => break,
                Err(why) => {
                    failures += 1;
                    if failures >= t.failure_threshold {
                        kill(format!("Startup probe failed: {why}"));
                        return;
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
        ctx.update(false, i, |v| {
            v.started = true;
            v.ready = c.readiness_probe.is_none();
        });
    }
    let readiness = {
        let (ctx, c, exec_as, http) = (ctx.clone(), c.clone(), exec_as.clone(), http.clone());
        async move {
            let Some(p) = &c.readiness_probe else {
                return std::future::pending::<()>().await;
            };
            let t = probe::timing(p);
            tokio::time::sleep(t.initial_delay).await;
            let (mut ok, mut bad) = (0, 0);
            loop {
                match probe::check(p, &c, ip, &exec_as, &http).await {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if ok >= t.success_threshold {
                            ctx.update(false, i, |v| v.ready = true);
                        }
                    }
                    Err(_) => {
                        bad += 1;
                        ok = 0;
                        if bad >= t.failure_threshold {
                            ctx.update(false, i, |v| v.ready = false);
                        }
                    }
                }
                tokio::time::sleep(t.period).await;
            }
        }
    };
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending::<()>().await;
        };
        let t = probe::timing(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut bad = 0;
        loop {
            match probe::check(p, &c, ip, &exec_as, &http).await {
                Ok(()) => bad = 0,
                Err(why) => {
                    bad += 1;
                    if bad >= t.failure_threshold {
                        kill(format!("Liveness probe failed: {why}"));
                        return;
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
    };
    tokio::select! {
        _ = readiness => {}
        _ = liveness => {}
    }
}

/// Patch the pod's status whenever it changed (a JSON merge patch: the lists are replaced
/// whole, so a container's old state never lingers), keeping conditions others own.
async fn publish(ctx: Arc<PodCtx>, rx: watch::Receiver<Option<Pod>>) {
    let pods: Api<Pod> = Api::namespaced(
        ctx.shared.client.clone(),
        &ctx.pod.namespace().unwrap_or_default(),
    );
    let name = ctx.pod.name_any();
    let mut last: Option<Value> = None;
    loop {
        ctx.changed.notified().await;
        // Let a burst of changes settle into one write.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut status = pod_status(&ctx.view.lock().expect("view"), now());
        keep_transition_times(&mut status, last.as_ref());
        if last.as_ref() == Some(&status) {
            continue;
        }
        let mut body = status.clone();
        let ours = [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
        ];
        let current = rx.borrow().clone();
        let foreign: Vec<Value> = current
            .and_then(|p| p.status)
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !ours.contains(&c.type_.as_str()))
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        if let Some(list) = body["conditions"].as_array_mut() {
            list.extend(foreign);
        }
        // The uid makes the write fail on a newer pod of the same name (a StatefulSet's).
        let patch = json!({"metadata": {"uid": ctx.pod.metadata.uid}, "status": body});
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => last = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
            Err(e) => {
                warn!(pod = %name, error = %e, "status update failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                ctx.changed.notify_one();
            }
        }
    }
}
