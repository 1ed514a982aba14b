//! The publisher's check, before a bounty is escrowed, that the data a task names is what its
//! hashes say. Miners check every byte again themselves (they trust nothing the publisher
//! says); this check only saves the publisher a task nobody can train: a wrong hash would hold
//! the bounty on chain until the task ends with no valid claim.
//!
//! `builtin:` datasets are checked against the hashes the protocol publishes for them,
//! `pot://<sha256>` names its hash (the network serves the bytes), and `http(s)://` URLs are
//! downloaded and hashed as a stream, up to [`MAX_DOWNLOAD`] bytes and [`DOWNLOAD_TIMEOUT`]. A
//! URL the operator cannot reach is not a mismatch (miners may reach what the operator cannot):
//! the task goes on, and the condition says what was not checked.
//!
//! Whoever may create a TrainingTask chooses these URLs, and the operator fetches them from
//! where it runs: by default ([`Fetch::Public`]) it connects only to public addresses, so a
//! task cannot make it probe the cluster's Services, the cloud's metadata endpoint or
//! loopback, and it follows no redirect.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::sync::Semaphore;

use pot_protocol::Hash;
use pot_protocol::task::MAX_DOWNLOAD;
use sha2::{Digest, Sha256};

use crate::crd::task::TrainingTaskSpec;

/// How long one download may take.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the server may send nothing (connecting, the response's head, any read): a server
/// that trickles bytes holds a download turn for at most [`DOWNLOAD_TIMEOUT`], one that stops
/// for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which `http(s)://` URLs the operator downloads to check (`--data-check`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fetch {
    /// Only hosts that resolve to public addresses (not loopback, private, link-local,
    /// shared, multicast or reserved ranges).
    #[default]
    Public,
    /// Any host the operator can reach (datasets inside the cluster; trust who creates tasks).
    Any,
    /// None: URLs are left to the miners, and the condition says they were not checked.
    Off,
}

/// Downloads at once, across all tasks: a flood of TrainingTasks must not fill the blocking
/// pool the rest of the operator shares.
static DOWNLOADS: Semaphore = Semaphore::const_new(2);

/// What the check found about one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Matches,
    /// The bytes (or the name) say another hash: the task cannot be trained.
    Mismatch(String),
    /// Not checked here, and why.
    Unchecked(String),
}

/// Everything the check found, by field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub mismatches: Vec<String>,
    pub unchecked: Vec<String>,
}

impl Report {
    /// The condition's message.
    pub fn message(&self) -> String {
        if !self.mismatches.is_empty() {
            format!(
                "{}; not submitted, no bounty escrowed: delete this TrainingTask and create one with the right hash",
                self.mismatches.join("; ")
            )
        } else if !self.unchecked.is_empty() {
            format!("not checked: {}", self.unchecked.join("; "))
        } else {
            "every dataset and model matches its SHA-256".into()
        }
    }
}

/// Every blob the task names: (field, locator, declared SHA-256).
fn blobs(spec: &TrainingTaskSpec) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (field, d) in [
        ("task.dataset", &spec.task.dataset),
        ("evalSet", &spec.eval_set),
    ] {
        out.push((field.to_string(), d.locator.clone(), d.sha256.clone()));
        if let Some(l) = &d.labels {
            out.push((
                format!("{field}.labels"),
                l.locator.clone(),
                l.sha256.clone(),
            ));
        }
    }
    if let Some(ts) = &spec.task.model.torch_script
        && let Some(url) = &ts.url
    {
        out.push((
            "task.model.torchScript".into(),
            url.clone(),
            ts.sha256.clone(),
        ));
    }
    out
}

/// Whether checking `spec` downloads anything under `fetch` (then the task says it is checking
/// before the download starts).
pub fn downloads(spec: &TrainingTaskSpec, fetch: Fetch) -> bool {
    fetch != Fetch::Off && blobs(spec).iter().any(|(_, l, _)| is_url(l))
}

fn is_url(locator: &str) -> bool {
    locator.starts_with("http://") || locator.starts_with("https://")
}

/// Check every blob of `spec` (downloads run on the blocking pool).
pub async fn check(spec: &TrainingTaskSpec, fetch: Fetch) -> Report {
    let mut report = Report::default();
    for (field, locator, sha256) in blobs(spec) {
        let declared: Hash = match sha256.parse() {
            Ok(h) => h,
            Err(e) => {
                report
                    .mismatches
                    .push(format!("{field}: sha256 {sha256:?}: {e}"));
                continue;
            }
        };
        let finding = match offline(&locator, &declared) {
            Some(f) => f,
            None if fetch == Fetch::Off => Finding::Unchecked(format!(
                "{locator}: this operator downloads no URLs (--data-check off)"
            )),
            None => {
                let (l, f) = (locator.clone(), field.clone());
                let _turn = DOWNLOADS.acquire().await.expect("never closed");
                tokio::task::spawn_blocking(move || {
                    download(&f, &l, &declared, MAX_DOWNLOAD, fetch)
                })
                .await
                .unwrap_or_else(|e| Finding::Unchecked(format!("the check panicked: {e}")))
            }
        };
        match finding {
            Finding::Matches => {}
            Finding::Mismatch(why) => report.mismatches.push(format!("{field}: {why}")),
            Finding::Unchecked(why) => report.unchecked.push(format!("{field}: {why}")),
        }
    }
    report
}

/// The finding for a locator that needs no download, or `None` for a URL.
fn offline(locator: &str, declared: &Hash) -> Option<Finding> {
    if let Some(name) = locator.strip_prefix("builtin:") {
        return Some(match pot_protocol::task::builtin_dataset_sha256(name) {
            Some(h) if h == *declared => Finding::Matches,
            Some(h) => Finding::Mismatch(format!(
                "{locator} has SHA-256 {h}, the task says {declared}"
            )),
            // Perhaps a dataset of a newer pot-node than this operator: the miners judge.
            None => {
                let known: Vec<String> = pot_protocol::task::BUILTIN_DATASETS
                    .iter()
                    .map(|(n, _)| format!("builtin:{n}"))
                    .collect();
                Finding::Unchecked(format!(
                    "{locator} is not among the built-in datasets this operator knows ({})",
                    known.join(", ")
                ))
            }
        });
    }
    if let Some(hex) = locator.strip_prefix("pot://") {
        return Some(match hex.parse::<Hash>() {
            Ok(h) if h == *declared => Finding::Matches,
            Ok(h) => Finding::Mismatch(format!(
                "{locator} names blob {h}, the task says {declared}"
            )),
            Err(e) => Finding::Mismatch(format!("{locator}: {e}")),
        });
    }
    if is_url(locator) {
        return None;
    }
    Some(Finding::Unchecked(format!(
        "{locator} is not fetched by the operator"
    )))
}

/// Download `url` (the task's `field`) as a stream and compare its SHA-256 with `declared`.
fn download(field: &str, url: &str, declared: &Hash, limit: u64, fetch: Fetch) -> Finding {
    // No redirects and no proxy: the operator fetches the URL the task names, from the
    // addresses `fetch` allows, and nowhere else.
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .timeout_connect(Some(STALL_TIMEOUT))
        .timeout_recv_response(Some(STALL_TIMEOUT))
        .max_redirects(0)
        .proxy(None)
        .http_status_as_error(false)
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        AddressPolicy(fetch),
    );
    // The operator's log may be collected cluster-wide and the URL may carry a token (or be
    // the eval set's, secret until revealed): only the field and the host go there.
    let host = url
        .parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default();
    let mut response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Io(e)) if e.get_ref().is_some_and(|e| e.is::<NotAllowed>()) => {
            return Finding::Unchecked(format!(
                "{url}: {host} has no public address, and this operator fetches only public \
                 ones (--data-check any allows the rest)"
            ));
        }
        Err(e) => {
            // The details stay in the operator's log: echoed into a status anyone who may
            // create a TrainingTask can read, they would map what the operator can reach.
            tracing::info!(field, %host, error = %e, "dataset check: not fetched");
            return Finding::Unchecked(format!("{url}: not fetched by the operator"));
        }
    };
    let code = response.status();
    if !code.is_success() {
        // A redirect's or an error page's body says nothing about the data.
        tracing::info!(field, %host, status = %code, "dataset check: not a 2xx answer");
        return Finding::Unchecked(format!(
            "{url}: answered HTTP {}, not the data (redirects are not followed)",
            code.as_u16()
        ));
    }
    let mut hasher = Sha256::new();
    let mut reader = response.body_mut().as_reader().take(limit + 1);
    let size = match std::io::copy(&mut reader, &mut hasher) {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(field, %host, error = %e, "dataset check: download broke off");
            return Finding::Unchecked(format!("{url}: the download broke off"));
        }
    };
    if size > limit {
        return Finding::Unchecked(format!("{url}: larger than {limit} bytes"));
    }
    let actual = Hash(hasher.finalize().into());
    if actual == *declared {
        Finding::Matches
    } else {
        Finding::Mismatch(format!(
            "{url} ({size} bytes) has SHA-256 {actual}, the task says {declared}"
        ))
    }
}

/// The marker error of a host with no address that [`Fetch`] allows.
#[derive(Debug, thiserror::Error)]
#[error("no allowed address")]
struct NotAllowed;

/// ureq's resolver, keeping only the addresses a [`Fetch`] allows; every connection ureq makes
/// goes to an address it returned, so a name that re-resolves to a private address later
/// cannot slip past the check.
#[derive(Debug)]
struct AddressPolicy(Fetch);

impl ureq::unversioned::resolver::Resolver for AddressPolicy {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let all = ureq::unversioned::resolver::DefaultResolver::default()
            .resolve(uri, config, timeout)?;
        if self.0 == Fetch::Any {
            return Ok(all);
        }
        let mut kept = self.empty();
        for addr in all.iter().filter(|a| is_public(a.ip())) {
            kept.push(*addr);
        }
        if kept.is_empty() {
            return Err(ureq::Error::Io(std::io::Error::other(NotAllowed)));
        }
        Ok(kept)
    }
}

/// Whether `ip` is a public unicast address: not loopback, unspecified, private (RFC 1918,
/// unique-local), link-local (the cloud metadata endpoint), shared (RFC 6598), benchmarking,
/// documentation, multicast, broadcast or reserved.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [s0, s1, ..] = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s0 & 0xfe00) == 0xfc00
        || (s0 & 0xffc0) == 0xfe80
        || (s0 == 0x2001 && s1 == 0x0db8)
        || (s0 == 0x0064 && s1 == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DIGITS: &str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22";
    const OTHER: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// Serve `body` to every request on a loopback port.
    fn serve(body: &'static [u8]) -> String {
        serve_with("200 OK", "", body)
    }

    /// Answer every request on a loopback port with `status`, extra `headers` and `body`.
    fn serve_with(status: &'static str, headers: &'static str, body: &'static [u8]) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body);
            }
        });
        format!("http://{addr}/data.csv")
    }

    fn h(hex: &str) -> Hash {
        hex.parse().unwrap()
    }

    #[test]
    fn a_builtin_is_checked_against_the_protocols_hash() {
        assert_eq!(
            offline("builtin:digits", &h(DIGITS)),
            Some(Finding::Matches)
        );
        let Some(Finding::Mismatch(why)) = offline("builtin:digits", &h(OTHER)) else {
            panic!()
        };
        assert!(why.contains(DIGITS) && why.contains(OTHER), "{why}");
        let Some(Finding::Unchecked(why)) = offline("builtin:cifar", &h(DIGITS)) else {
            panic!()
        };
        assert!(why.contains("builtin:digits, builtin:mnist-5k"), "{why}");
    }

    #[test]
    fn a_pot_locator_must_name_the_declared_hash() {
        assert_eq!(
            offline(&format!("pot://{DIGITS}"), &h(DIGITS)),
            Some(Finding::Matches)
        );
        assert!(matches!(
            offline(&format!("pot://{OTHER}"), &h(DIGITS)),
            Some(Finding::Mismatch(_))
        ));
    }

    #[test]
    fn a_download_is_hashed_and_compared() {
        let url = serve(b"1,2,3\n");
        let right = Hash::digest(b"1,2,3\n");
        assert_eq!(offline(&url, &right), None);
        let get = |declared: &Hash, limit| download("f", &url, declared, limit, Fetch::Any);
        assert_eq!(get(&right, MAX_DOWNLOAD), Finding::Matches);
        let Finding::Mismatch(why) = get(&h(OTHER), MAX_DOWNLOAD) else {
            panic!()
        };
        assert!(
            why.contains(&right.to_string()) && why.contains("6 bytes"),
            "{why}"
        );
        // Past the limit nothing is concluded.
        assert!(matches!(get(&right, 5), Finding::Unchecked(_)));
    }

    #[test]
    fn by_default_only_public_addresses_are_fetched() {
        // A task must not make the operator probe loopback, the cluster or the metadata
        // endpoint: the server below is never asked, and the task is not failed.
        let url = serve(b"1,2,3\n");
        let Finding::Unchecked(why) = download("f", &url, &h(OTHER), 10, Fetch::Public) else {
            panic!("a loopback URL was fetched")
        };
        assert!(why.contains("no public address"), "{why}");
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "151.101.0.223", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_redirect_or_an_error_page_is_unchecked_not_a_mismatch() {
        // The body of a 3xx or 4xx answer is not the data: hashing it would fail a task that
        // miners (who follow redirects) can train.
        for (status, headers) in [
            ("302 Found", "Location: http://example.com/data.csv\r\n"),
            ("404 Not Found", ""),
        ] {
            let url = serve_with(status, headers, b"moved");
            let Finding::Unchecked(why) = download("f", &url, &h(OTHER), 10, Fetch::Any) else {
                panic!("{status} was hashed")
            };
            assert!(why.contains(&status[..3]), "{why}");
        }
    }

    #[test]
    fn an_unreachable_url_is_unchecked_not_a_mismatch() {
        // Port 0 can never be connected to (no other process can take it).
        let url = "http://127.0.0.1:0/x";
        let Finding::Unchecked(why) = download("f", url, &h(OTHER), 10, Fetch::Any) else {
            panic!()
        };
        assert!(why.contains("not fetched"), "{why}");
    }

    #[tokio::test]
    async fn with_fetching_off_a_url_is_unchecked_and_nothing_is_downloaded() {
        let mut spec: TrainingTaskSpec = serde_yaml::from_str(EXAMPLE).unwrap();
        spec.task.dataset.locator = serve(b"1,2,3\n");
        assert!(!downloads(&spec, Fetch::Off) && downloads(&spec, Fetch::Public));
        let report = check(&spec, Fetch::Off).await;
        assert!(report.mismatches.is_empty(), "{report:?}");
        assert!(
            report.unchecked[0].contains("--data-check off"),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn a_report_names_every_bad_field() {
        let mut spec: TrainingTaskSpec = serde_yaml::from_str(EXAMPLE).unwrap();
        assert!(!downloads(&spec, Fetch::Public));
        assert_eq!(check(&spec, Fetch::Public).await, Report::default());
        spec.eval_set.sha256 = OTHER.into();
        let report = check(&spec, Fetch::Public).await;
        assert_eq!(report.mismatches.len(), 1, "{report:?}");
        assert!(report.mismatches[0].starts_with("evalSet: "), "{report:?}");
        assert!(report.message().contains("no bounty escrowed"));
    }

    const EXAMPLE: &str = r#"
networkRef: {name: dev}
publisherKeySecret: {name: key}
bounty: 1000
task:
  model: {builtin: mlp, hidden: [32]}
  dataset: {locator: "builtin:digits", sha256: "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"}
  optimizer: {kind: sgd, lr: {value: 0.1}}
  batchSize: 32
  steps: 100
  checkpointInterval: 50
  seed: 1
evalSet: {locator: "builtin:digits", sha256: "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"}
windows: {commit: 10, reveal: 10, evalReveal: 10, reportCommit: 10, reportReveal: 10, challenge: 10, challengeReveal: 10, vote: 10, voteReveal: 10}
"#;
}
