//! The kubelet's log endpoint, so `kubectl logs` works: `GET /containerLogs/<ns>/<pod>/<container>`
//! (with `follow`, `previous`, `tailLines`, `limitBytes`) over TLS, answering only clients whose
//! certificate the cluster CA signed (the API server's kubelet-client certificate). Each run of a
//! container writes `<kubelet dir>/pods/<ns>_<pod>_<uid>/logs/<container>/<restart>.log`; those
//! files are also the place to read logs without the API server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// The files that set up the endpoint's TLS.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA.
    pub client_ca: PathBuf,
}

fn server_config(tls: &Tls) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.client_ca).context("reading the client CA")? {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .context("reading the kubelet certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).context("reading the kubelet key")?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?)
}

/// TLS connections whose handshakes finished, each handshake on its own task so a slow client
/// holds up no other.
struct TlsListener {
    local: std::net::SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Bind `127.0.0.1:0` and serve logs from `root` until the process ends; returns the port.
pub async fn serve(root: PathBuf, tls: &Tls) -> anyhow::Result<u16> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(tls)?));
    let tcp = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = tcp.local_addr()?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((stream, addr)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, addr)).await;
                    }
                    Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake refused"),
                    Err(_) => debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(root));
    let listener = TlsListener { local, ready: rx };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local.port())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    previous: Option<String>,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

/// The newest directory of pod `ns/pod` (a pod recreated under its name has a new uid).
fn pod_dir(root: &Path, ns: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(root.join("pods"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The runs of a container that have a log, oldest first.
pub fn runs(dir: &Path) -> Vec<(i32, PathBuf)> {
    let mut runs: Vec<(i32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let run = name.strip_suffix(".log")?.parse().ok()?;
            Some((run, e.path()))
        })
        .collect();
    runs.sort();
    runs
}

/// The last `n` lines of `text`.
pub fn tail(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

async fn container_logs(
    State(root): State<Arc<PathBuf>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let not_found = |what: String| (StatusCode::NOT_FOUND, what).into_response();
    if [&ns, &pod, &container]
        .iter()
        .any(|s| s.contains('/') || s.contains(".."))
    {
        return (StatusCode::BAD_REQUEST, "bad name").into_response();
    }
    let Some(dir) = pod_dir(&root, &ns, &pod) else {
        return not_found(format!("pod {ns}/{pod} has no logs on this node"));
    };
    let runs = runs(&dir.join("logs").join(&container));
    let pick = if flag(&q.previous) {
        runs.len().checked_sub(2).and_then(|i| runs.get(i))
    } else {
        runs.last()
    };
    let Some((_, path)) = pick.cloned() else {
        return not_found(format!(
            "container {container:?} of pod {ns}/{pod} has {} log",
            if flag(&q.previous) {
                "no previous"
            } else {
                "no"
            }
        ));
    };
    let read = path.clone();
    let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || std::fs::read(read)).await else {
        return not_found(format!("reading {}", path.display()));
    };
    let mut start = match q.tail_lines {
        Some(n) => bytes.len() - tail(&bytes, n).len(),
        None => 0,
    };
    if let Some(limit) = q.limit_bytes {
        start = start.max(bytes.len().saturating_sub(limit));
    }
    let head = bytes[start..].to_vec();
    if !flag(&q.follow) || flag(&q.previous) {
        return head.into_response();
    }
    // Follow: what is there, then what is appended, until the container starts another run
    // or the pod's directory goes.
    let offset = bytes.len() as u64;
    let logs_dir = dir.join("logs").join(&container);
    use futures::StreamExt;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(appended(path, offset, logs_dir));
    Body::from_stream(stream).into_response()
}

/// What is appended to `path` past `offset`, until a newer run's log appears in `logs_dir`
/// (the container restarted) or the log goes.
fn appended(
    path: PathBuf,
    offset: u64,
    logs_dir: PathBuf,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::unfold(
        (path, offset, logs_dir),
        |(path, mut offset, logs_dir)| async move {
            loop {
                let file = path.clone();
                let chunk = tokio::task::spawn_blocking(move || read_from(&file, offset))
                    .await
                    .unwrap_or_default();
                if !chunk.is_empty() {
                    offset += chunk.len() as u64;
                    return Some((Ok(chunk), (path, offset, logs_dir)));
                }
                let newest = runs(&logs_dir).last().map(|(_, p)| p.clone());
                if newest.as_ref() != Some(&path) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
}

/// What `path` holds past `offset` (nothing when it cannot be read).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut chunk = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(std::io::SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_end(&mut chunk);
    }
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
        assert_eq!(tail(b"", 3), b"");
    }

    #[test]
    fn runs_are_ordered_by_number() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 1] {
            std::fs::write(dir.path().join(format!("{n}.log")), "x").unwrap();
        }
        std::fs::write(dir.path().join("probes.log"), "x").unwrap();
        let got: Vec<i32> = runs(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, [1, 2, 10]);
    }
}
