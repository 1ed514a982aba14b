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

use std::io::Read;
use std::time::Duration;

use tokio::sync::Semaphore;

use pot_protocol::Hash;
use pot_protocol::task::MAX_DOWNLOAD;
use sha2::{Digest, Sha256};

use crate::crd::task::TrainingTaskSpec;

/// How long one download may take.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

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

/// Check every blob of `spec` (downloads run on the blocking pool).
pub async fn check(spec: &TrainingTaskSpec) -> Report {
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
            None => {
                let l = locator.clone();
                let _turn = DOWNLOADS.acquire().await.expect("never closed");
                tokio::task::spawn_blocking(move || download(&l, &declared, MAX_DOWNLOAD))
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
    if locator.starts_with("http://") || locator.starts_with("https://") {
        return None;
    }
    Some(Finding::Unchecked(format!(
        "{locator} is not fetched by the operator"
    )))
}

/// Download `url` as a stream and compare its SHA-256 with `declared`.
fn download(url: &str, declared: &Hash, limit: u64) -> Finding {
    // No redirects: the operator fetches the URL the task names and nowhere else.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .max_redirects(0)
        .build()
        .into();
    let mut response = match agent.get(url).call() {
        Ok(r) => r,
        Err(e) => {
            // The details stay in the operator's log: echoed into a status anyone who may
            // create a TrainingTask can read, they would map what the operator can reach.
            tracing::info!(%url, error = %e, "dataset check: not fetched");
            return Finding::Unchecked(format!("{url}: not fetched by the operator"));
        }
    };
    let mut hasher = Sha256::new();
    let mut reader = response.body_mut().as_reader().take(limit + 1);
    let size = match std::io::copy(&mut reader, &mut hasher) {
        Ok(n) => n,
        Err(e) => return Finding::Unchecked(format!("{url}: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DIGITS: &str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22";
    const OTHER: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// Serve `body` to every request on a loopback port.
    fn serve(body: &'static [u8]) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
        assert_eq!(download(&url, &right, MAX_DOWNLOAD), Finding::Matches);
        let Finding::Mismatch(why) = download(&url, &h(OTHER), MAX_DOWNLOAD) else {
            panic!()
        };
        assert!(
            why.contains(&right.to_string()) && why.contains("6 bytes"),
            "{why}"
        );
        // Past the limit nothing is concluded.
        assert!(matches!(download(&url, &right, 5), Finding::Unchecked(_)));
    }

    #[test]
    fn an_unreachable_url_is_unchecked_not_a_mismatch() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        drop(l);
        assert!(matches!(
            download(&url, &h(OTHER), 10),
            Finding::Unchecked(_)
        ));
    }

    #[tokio::test]
    async fn a_report_names_every_bad_field() {
        let mut spec: TrainingTaskSpec = serde_yaml::from_str(EXAMPLE).unwrap();
        assert_eq!(check(&spec).await, Report::default());
        spec.eval_set.sha256 = OTHER.into();
        let report = check(&spec).await;
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
