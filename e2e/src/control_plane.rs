//! A real Kubernetes control plane on loopback: etcd and kube-apiserver, optionally
//! kube-controller-manager and kube-scheduler, built from their Go modules (see `tools`).
//!
//! Authentication is by bearer token (an admin in `system:masters`, and the controller manager
//! and scheduler as their own bootstrap users), authorization is RBAC, service-account tokens
//! are signed with a generated key, and every component logs to a file under the data
//! directory. Dropping the `ControlPlane` stops the processes; a test binary that dies leaves
//! nothing behind either (see `spawn`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pki;
use crate::ports::free_port;
use crate::spawn::Process;
use crate::tools;

/// Which components to run besides etcd and kube-apiserver.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Garbage collection, StatefulSet, Deployment/ReplicaSet, PVC binding, service accounts,
    /// namespaces.
    pub controller_manager: bool,
    pub scheduler: bool,
    /// Keep data here instead of a temporary directory (for `pot-e2e cluster up`).
    pub data_dir: Option<PathBuf>,
}

impl Options {
    /// Everything: the API server, controller manager and scheduler.
    pub fn full() -> Options {
        Options {
            controller_manager: true,
            scheduler: true,
            data_dir: None,
        }
    }
}

/// How long the API server may take to report ready before start-up fails (generous, for a
/// loaded machine; the tests hold start-up to the stricter bound the project promises).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Controllers the controller manager runs: what the operator's resources rely on.
const CONTROLLERS: &str = "serviceaccount-token-controller,serviceaccount-controller,\
garbage-collector-controller,namespace-controller,statefulset-controller,\
deployment-controller,replicaset-controller,persistentvolume-binder-controller,\
endpointslice-controller,disruption-controller,root-ca-certificate-publisher-controller";

pub struct ControlPlane {
    _tmp: Option<tempfile::TempDir>,
    /// Data, keys, kubeconfigs and logs.
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// An admin kubeconfig (token auth, the generated CA).
    pub kubeconfig: PathBuf,
    bin: PathBuf,
    /// In start order; stopped in reverse. Behind a lock so that a test holding the shared
    /// control plane can restart the API server.
    processes: Mutex<Vec<Process>>,
    /// How kube-apiserver was started, to start it again the same way.
    api_command: Vec<String>,
    /// How long start-up took, until `/readyz` said ok.
    pub startup: Duration,
    /// The certificates and keys (the local kubelet serves logs with its pair).
    pub pki: pki::PkiFiles,
}

impl ControlPlane {
    /// etcd and kube-apiserver only.
    pub fn start() -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with(Options::default())
    }

    /// Start the components and wait until the API server is ready. Blocking.
    pub fn start_with(opts: Options) -> anyhow::Result<ControlPlane> {
        let began = Instant::now();
        let bin = tools::bin_dir()?;
        let (tmp, dir) = match &opts.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("pot-k8s-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(dir.join("logs"))?;
        let pki = pki::write(&dir.join("pki"))?;
        let tokens = Tokens::generate();
        std::fs::write(dir.join("tokens.csv"), tokens.csv())?;

        let (etcd_port, etcd_peer, api_port) = (free_port(), free_port(), free_port());
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki.ca_cert, &tokens.admin, "admin")?;

        let mut cp = ControlPlane {
            _tmp: tmp,
            dir: dir.clone(),
            server: server.clone(),
            kubeconfig,
            bin,
            processes: Mutex::new(Vec::new()),
            api_command: Vec::new(),
            startup: Duration::ZERO,
            pki: pki.clone(),
        };

        let mut etcd = cp.command("etcd");
        etcd.args([
            "--name=pot-e2e",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=pot-e2e=http://127.0.0.1:{etcd_peer}"),
            "--listen-metrics-urls=",
            // Tests and the demo trade durability for speed; the data dir is thrown away.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        cp.run("etcd", etcd)?;

        let api_args: Vec<String> = [
            &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={api_port}"),
            &format!("--tls-cert-file={}", pki.serving_cert.display()),
            &format!("--tls-private-key-file={}", pki.serving_key.display()),
            &format!("--client-ca-file={}", pki.ca_cert.display()),
            &format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-key-file={}", pki.sa_pub.display()),
            &format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            // The `kubernetes` Service cannot point at a loopback address; nothing here needs it.
            "--endpoint-reconciler-type=none",
            // `kubectl logs` reaches the local kubelet (when one runs) over TLS checked both ways.
            &format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client_cert.display()
            ),
            &format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
            &format!("--kubelet-certificate-authority={}", pki.ca_cert.display()),
            "--kubelet-preferred-address-types=InternalIP",
            "--v=1",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        cp.api_command = api_args;
        cp.start_api_server()?;
        cp.wait_ready()?;

        if opts.controller_manager {
            let sa_key = format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            );
            let root_ca = format!("--root-ca-file={}", pki.ca_cert.display());
            let controllers = format!("--controllers={CONTROLLERS}");
            cp.run_controller(
                "kube-controller-manager",
                &tokens.controller_manager,
                &pki.ca_cert,
                &[
                    &controllers,
                    "--use-service-account-credentials=true",
                    &sa_key,
                    &root_ca,
                    "--concurrent-gc-syncs=5",
                ],
            )?;
        }
        if opts.scheduler {
            cp.run_controller("kube-scheduler", &tokens.scheduler, &pki.ca_cert, &[])?;
        }
        cp.startup = began.elapsed();
        Ok(cp)
    }

    /// The path of a control-plane tool (`kubectl`, `helm`, `kwok`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A command for a tool with `KUBECONFIG` pointing at this control plane.
    pub fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.tool(tool));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Run `kubectl args…` and return its standard output; an error carries its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.command("kubectl");
        cmd.args(args);
        run_tool(cmd, None)
    }

    /// The same, with `input` on kubectl's standard input (for `-f -`).
    pub fn kubectl_input(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut cmd = self.command("kubectl");
        cmd.args(args);
        run_tool(cmd, Some(input))
    }

    /// A client for the admin user.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_for(&self.kubeconfig).await
    }

    /// `(component, pid)` of every running process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes()
            .iter()
            .map(|p| (p.name.clone(), p.pid()))
            .collect()
    }

    /// The last `lines` lines of every component's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for p in self.processes().iter() {
            let path = self.log_path(&p.name);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let _ = writeln!(out, "==> {} <==", path.display());
            for l in &all[start..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }

    /// Kill every component at once and remove the temporary data directory, for a control
    /// plane that is never dropped (the one a test binary shares lives in a static, and statics
    /// are not dropped): without this each test run left ~120 MB of etcd data in /tmp.
    pub fn kill_and_remove(&self) {
        let pids: Vec<u32> = self.processes().iter().map(Process::pid).collect();
        for &pid in &pids {
            crate::spawn::signal(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| crate::spawn::alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self._tmp.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// Stop every component, newest first.
    pub fn stop(&mut self) {
        let processes = std::mem::take(&mut *self.processes());
        for mut p in processes.into_iter().rev() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// The API server's port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the server URL ends in a port")
    }

    /// Start a local kubelet for this control plane: Node `name`, pods under `<dir>/kubelet`,
    /// running `images` (see [`crate::kubelet::project_images`]).
    pub fn start_kubelet(
        &self,
        name: &str,
        gpus: u32,
        images: crate::kubelet::launch::Images,
    ) -> anyhow::Result<crate::kubelet::Running> {
        let cfg = crate::kubelet::Config {
            node_name: name.to_string(),
            cpu: "2".into(),
            memory: "24Gi".into(),
            gpus,
            dir: self.dir.join("kubelet").join(name),
            images,
            api_server: ("127.0.0.1".into(), self.api_port()),
            tls: crate::kubelet::logs::Tls {
                cert: self.pki.kubelet_serving_cert.clone(),
                key: self.pki.kubelet_serving_key.clone(),
                client_ca: self.pki.ca_cert.clone(),
            },
        };
        crate::kubelet::Running::start(&self.kubeconfig, cfg)
    }

    /// Kill kube-apiserver at once (SIGKILL: every watch and request in flight breaks, as in a
    /// crash), wait `down`, start it again on the same port with the same etcd, and wait until
    /// it is ready. Clients keep their addresses, tokens and CA.
    pub fn restart_api_server(&self, down: Duration) -> anyhow::Result<()> {
        let old = {
            let mut ps = self.processes();
            let i = ps
                .iter()
                .position(|p| p.name == "kube-apiserver")
                .context("no kube-apiserver to restart")?;
            ps.remove(i)
        };
        crate::spawn::signal(old.pid(), libc::SIGKILL);
        drop(old);
        // Keep the killed server's log for failure reports (starting again truncates it).
        let log = self.log_path("kube-apiserver");
        let _ = std::fs::rename(&log, log.with_extension("log.killed"));
        std::thread::sleep(down);
        self.start_api_server()?;
        self.wait_ready()
    }

    fn processes(&self) -> std::sync::MutexGuard<'_, Vec<Process>> {
        self.processes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start kube-apiserver with `api_command` (a restarted one's log replaces the last).
    fn start_api_server(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("kube-apiserver");
        cmd.args(&self.api_command);
        self.run("kube-apiserver", cmd)
    }

    /// Start kube-controller-manager or kube-scheduler as its own bootstrap user (`token`), on
    /// loopback, without leader election, with `extra` flags.
    fn run_controller(
        &mut self,
        name: &str,
        token: &str,
        ca: &Path,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let kc = self.dir.join(format!("{name}.kubeconfig"));
        write_kubeconfig(&kc, &self.server, ca, token, name)?;
        let mut cmd = self.command(name);
        cmd.args([
            &format!("--kubeconfig={}", kc.display()),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            &format!("--secure-port={}", free_port()),
            "--v=1",
        ])
        .args(extra);
        self.run(name, cmd)
    }

    fn run(&self, name: &str, cmd: Command) -> anyhow::Result<()> {
        let p = Process::start(name, cmd, &self.log_path(name))?;
        self.processes().push(p);
        Ok(())
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let exited = self
                .processes()
                .iter_mut()
                .find_map(|p| p.exited().map(|status| (p.name.clone(), status)));
            if let Some((name, status)) = exited {
                bail!(
                    "{name} exited during start-up ({status}):\n{}",
                    self.log_tails(30)
                );
            }
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "kube-apiserver not ready after {:?} (last answer: {last}):\n{}",
            READY_TIMEOUT,
            self.log_tails(30)
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("control plane logs:\n{}", self.log_tails(40));
        }
        self.stop();
    }
}

/// Bearer tokens for the admin, the controller manager and the scheduler.
struct Tokens {
    admin: String,
    controller_manager: String,
    scheduler: String,
}

impl Tokens {
    fn generate() -> Tokens {
        let t = || hex::encode(rand::random::<[u8; 24]>());
        Tokens {
            admin: t(),
            controller_manager: t(),
            scheduler: t(),
        }
    }

    /// The API server's `--token-auth-file`: token,user,uid,"groups".
    fn csv(&self) -> String {
        format!(
            "{},admin,uid-admin,\"system:masters\"\n{},system:kube-controller-manager,uid-kcm\n{},system:kube-scheduler,uid-ks\n",
            self.admin, self.controller_manager, self.scheduler
        )
    }
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    token: &str,
    user: &str,
) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: pot-e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: pot-e2e\n  context:\n    cluster: pot-e2e\n    user: {user}\ncurrent-context: pot-e2e\n",
        ca = ca.display()
    );
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Run a tool (`kubectl`, `helm`, ...) with `input` on its standard input, and return its
/// standard output; an error names the command and carries its stderr.
pub fn run_tool(mut cmd: Command, input: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let what = format!(
        "{} {}",
        Path::new(cmd.get_program())
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdin = child.stdin.take().context("the tool's stdin")?;
    if let Some(input) = input {
        let mut stdin = stdin;
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A client with the credentials of `kubeconfig`.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}
