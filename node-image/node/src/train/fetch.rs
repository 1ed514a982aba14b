//! Getting dataset and model bytes from a locator — a local path or `file://` path, an
//! `http(s)://` URL, `builtin:digits`, or `pot://<sha256>` (a blob a node fetched from its
//! peers) — always checked against the SHA-256 the task names, and kept in a content-addressed
//! cache so a second run neither downloads nor trusts anything again. The cache has the layout
//! of a node's artifact store (`artifacts::store`), so a node's cache *is* its store.

use std::path::{Path, PathBuf};

use pot_protocol::Hash;

use super::datasets::{BUILTINS, builtin};
use crate::artifacts::BlobStore;

pub use pot_protocol::task::MAX_DOWNLOAD;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{locator}: SHA-256 is {actual}, the task says {expected}; nothing was used")]
    HashMismatch {
        locator: String,
        expected: Hash,
        actual: Hash,
    },
    #[error("{locator}: {why}")]
    Unavailable { locator: String, why: String },
    #[error("unknown built-in dataset {0:?} (known: {known})", known = known_builtins())]
    UnknownBuiltin(String),
}

/// Verified bytes kept by their SHA-256: a node's artifact store (`<dir>/blobs/<hex>`).
#[derive(Clone, Debug)]
pub struct Cache {
    store: BlobStore,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            store: BlobStore::at(dir.into()),
        }
    }

    /// Cached bytes for `h`, re-checked (a corrupted cache entry is dropped, not used).
    fn get(&self, h: &Hash) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.store.path(h)).ok()?;
        if Hash::digest(&bytes) == *h {
            Some(bytes)
        } else {
            let _ = self.store.remove(h);
            None
        }
    }
}

fn known_builtins() -> String {
    let names: Vec<String> = BUILTINS
        .iter()
        .map(|b| format!("builtin:{}", b.name))
        .collect();
    names.join(", ")
}

/// The bytes at `locator`, which must hash to `sha256`.
pub fn fetch(locator: &str, sha256: &Hash, cache: &Cache) -> Result<Vec<u8>, FetchError> {
    let unavailable = |why: String| FetchError::Unavailable {
        locator: locator.to_string(),
        why,
    };
    if let Some(bytes) = cache.get(sha256) {
        return Ok(bytes);
    }
    let bytes = if let Some(hex) = locator.strip_prefix("pot://") {
        let why = match hex.parse::<Hash>() {
            Ok(h) if h == *sha256 => format!(
                "not in {}; pot:// blobs are fetched from peers by a running node (`pot-node \
                 run`)",
                cache.store.root().display()
            ),
            Ok(h) => format!("names blob {h}, but the task says its SHA-256 is {sha256}"),
            Err(e) => format!("not a pot://<sha256> locator: {e}"),
        };
        return Err(unavailable(why));
    } else if let Some(name) = locator.strip_prefix("builtin:") {
        match builtin(name) {
            Some(b) => b.csv_gz.to_vec(),
            None => return Err(FetchError::UnknownBuiltin(name.to_string())),
        }
    } else if locator.starts_with("http://") || locator.starts_with("https://") {
        let mut resp = ureq::get(locator)
            .call()
            .map_err(|e| unavailable(e.to_string()))?;
        resp.body_mut()
            .with_config()
            .limit(MAX_DOWNLOAD)
            .read_to_vec()
            .map_err(|e| unavailable(e.to_string()))?
    } else {
        let path = locator.strip_prefix("file://").unwrap_or(locator);
        std::fs::read(Path::new(path)).map_err(|e| unavailable(e.to_string()))?
    };
    let actual = Hash::digest(&bytes);
    if actual != *sha256 {
        return Err(FetchError::HashMismatch {
            locator: locator.to_string(),
            expected: *sha256,
            actual,
        });
    }
    cache
        .store
        .put(&bytes)
        .map_err(|e| unavailable(format!("caching: {e:#}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serve `body` to at most `n` requests on a loopback port.
    fn serve(body: Vec<u8>, n: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in l.incoming().take(n) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(&body).unwrap();
            }
        });
        format!("http://{addr}/data.csv")
    }

    #[test]
    fn url_is_checked_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let body = b"1,2,0\n3,4,1\n".to_vec();
        let h = Hash::digest(&body);
        let url = serve(body.clone(), 1);
        assert_eq!(fetch(&url, &h, &cache).unwrap(), body);
        // The server is gone; the cache answers.
        assert_eq!(fetch(&url, &h, &cache).unwrap(), body);

        let url = serve(b"tampered".to_vec(), 1);
        let other = Hash::digest(b"something else");
        let e = fetch(&url, &other, &cache).unwrap_err();
        assert!(matches!(e, FetchError::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("nothing was used"));
        assert!(cache.get(&other).is_none());
    }

    #[test]
    fn paths_builtins_and_a_corrupted_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let file = dir.path().join("d.csv");
        std::fs::write(&file, b"5,6,1\n").unwrap();
        let h = Hash::digest(b"5,6,1\n");
        assert!(fetch(file.to_str().unwrap(), &h, &cache).is_ok());
        // Corrupt the cached copy: it is detected, dropped, and the file read again.
        std::fs::write(cache.store.path(&h), b"junk").unwrap();
        assert!(fetch(file.to_str().unwrap(), &h, &cache).is_ok());
        assert_eq!(std::fs::read(cache.store.path(&h)).unwrap(), b"5,6,1\n");

        use crate::train::datasets::DIGITS_CSV_GZ;
        let digits = Hash::digest(DIGITS_CSV_GZ);
        assert_eq!(
            fetch("builtin:digits", &digits, &cache).unwrap().len(),
            DIGITS_CSV_GZ.len()
        );
        let unknown = fetch("builtin:mnist", &Hash::ZERO, &cache).unwrap_err();
        assert!(matches!(unknown, FetchError::UnknownBuiltin(_)));
        assert!(
            unknown
                .to_string()
                .contains("known: builtin:digits, builtin:mnist-5k"),
            "{unknown}"
        );
        assert!(matches!(
            fetch("/no/such/file", &Hash::ZERO, &cache),
            Err(FetchError::Unavailable { .. })
        ));
    }
}
