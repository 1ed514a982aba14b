//! Content-addressed blobs under the data directory: `blobs/<sha256>` holds bytes whose SHA-256
//! is the file name, and nothing else ever does. A blob appears whole or not at all (written to
//! `tmp/`, synced, renamed); a download in progress keeps its verified chunks in
//! `partial/<sha256>/` so that a restart resumes it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pot_protocol::Hash;
use sha2::{Digest, Sha256};

/// The unit of transfer: a blob travels as chunks of this many bytes (the last may be shorter).
pub const CHUNK: u64 = 1 << 20;

/// A download not touched for this long is dropped when the store opens.
const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// How many chunks a blob of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// The store at `root`, touching nothing until it is written to (what the training cache
    /// needs; a node opens its store with `open`).
    pub fn at(root: PathBuf) -> BlobStore {
        BlobStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Open (creating) the store at `root`, dropping what an interrupted write left in `tmp/`.
    pub fn open(root: &Path) -> anyhow::Result<BlobStore> {
        for sub in ["blobs", "manifests", "partial", "tmp"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        // Downloads nobody has touched for a week will not be resumed.
        for entry in std::fs::read_dir(root.join("partial"))? {
            let entry = entry?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_PARTIAL);
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(BlobStore { root: root.into() })
    }

    pub fn path(&self, blob: &Hash) -> PathBuf {
        self.root.join("blobs").join(blob.to_hex())
    }

    pub fn contains(&self, blob: &Hash) -> bool {
        self.path(blob).is_file()
    }

    /// The size of a stored blob.
    pub fn size(&self, blob: &Hash) -> Option<u64> {
        std::fs::metadata(self.path(blob)).ok().map(|m| m.len())
    }

    /// Every stored blob.
    pub fn list(&self) -> anyhow::Result<Vec<Hash>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("blobs"))? {
            if let Some(h) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Hash>().ok())
            {
                out.push(h);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every stored blob with the seconds since it was written.
    pub fn list_with_age(&self) -> anyhow::Result<Vec<(Hash, f64)>> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|h| {
                let age = std::fs::metadata(self.path(&h))
                    .and_then(|m| m.modified())
                    .ok()?
                    .elapsed()
                    .map_or(0.0, |d| d.as_secs_f64());
                Some((h, age))
            })
            .collect())
    }

    /// Mark a stored blob as just written (a sweep spares young blobs).
    fn touch(&self, blob: &Hash) {
        if let Ok(f) = File::options().write(true).open(self.path(blob)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Store `bytes`; returns their hash.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<Hash> {
        let hash = Hash::digest(bytes);
        if self.contains(&hash) {
            self.touch(&hash);
        } else {
            let mut tmp = self.temp_file()?;
            tmp.write_all(bytes).context("writing a blob")?;
            self.commit(tmp, &hash)?;
        }
        Ok(hash)
    }

    /// Store a copy of the file at `src`; returns its hash.
    pub fn put_file(&self, src: &Path) -> anyhow::Result<Hash> {
        let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        let mut tmp = self.temp_file()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = input
                .read(&mut buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).context("writing a blob")?;
        }
        let hash = Hash(hasher.finalize().into());
        if self.contains(&hash) {
            self.touch(&hash);
        } else {
            self.commit(tmp, &hash)?;
        }
        Ok(hash)
    }

    /// The whole blob, checked against its name (a disk that flipped a bit is an error, not a
    /// wrong answer).
    pub fn read(&self, blob: &Hash) -> anyhow::Result<Vec<u8>> {
        let path = self.path(blob);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if Hash::digest(&bytes) != *blob {
            bail!(
                "stored blob {} is corrupt (its bytes hash differently)",
                path.display()
            );
        }
        Ok(bytes)
    }

    /// Chunk `index` of a stored blob, `None` if the blob is not here or has no such chunk.
    pub fn read_chunk(&self, blob: &Hash, index: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let Ok(mut f) = File::open(self.path(blob)) else {
            return Ok(None);
        };
        let size = f.metadata()?.len();
        if index >= chunk_count(size) {
            return Ok(None);
        }
        let start = index * CHUNK;
        let len = CHUNK.min(size - start);
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        Ok(Some(buf))
    }

    /// The SHA-256 of each chunk of a stored blob (what a downloader checks chunks against).
    /// Computed once and kept beside the blob, so that peers asking again and again cost a
    /// file read, not a pass over a large dataset.
    pub fn chunk_hashes(&self, blob: &Hash) -> anyhow::Result<Option<(u64, Vec<Hash>)>> {
        let Some(size) = self.size(blob) else {
            return Ok(None);
        };
        let kept = self.root.join("manifests").join(blob.to_hex());
        if let Ok(bytes) = std::fs::read(&kept)
            && let Ok((s, hashes)) = borsh::from_slice::<(u64, Vec<Hash>)>(&bytes)
            && s == size
            && hashes.len() as u64 == chunk_count(size)
        {
            return Ok(Some((s, hashes)));
        }
        // One pass over the file, chunk by chunk.
        let mut file = File::open(self.path(blob))?;
        let mut hashes = Vec::with_capacity(chunk_count(size) as usize);
        let mut whole = Sha256::new();
        let mut chunk = Vec::with_capacity(CHUNK as usize);
        for _ in 0..chunk_count(size) {
            chunk.clear();
            (&mut file).take(CHUNK).read_to_end(&mut chunk)?;
            whole.update(&chunk);
            hashes.push(Hash::digest(&chunk));
        }
        if Hash(whole.finalize().into()) != *blob {
            // A disk that changed the bytes: never serve them as the blob.
            tracing::warn!(%blob, "a stored blob is corrupt; removing it");
            self.remove(blob)?;
            return Ok(None);
        }
        // Keeping the list only saves work; a failure to keep it costs nothing else.
        let keep = || -> anyhow::Result<()> {
            std::fs::create_dir_all(self.root.join("manifests"))?;
            let mut tmp = self.temp_file()?;
            tmp.write_all(&borsh::to_vec(&(size, hashes.clone()))?)?;
            tmp.persist(&kept)?;
            Ok(())
        };
        if let Err(e) = keep() {
            tracing::warn!(%blob, "keeping a chunk list: {e:#}");
        }
        Ok(Some((size, hashes)))
    }

    pub fn remove(&self, blob: &Hash) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.root.join("manifests").join(blob.to_hex()));
        match std::fs::remove_file(self.path(blob)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Where a download of `blob` keeps its verified chunks until it is whole.
    pub fn partial(&self, blob: &Hash) -> anyhow::Result<Partial> {
        let dir = self.root.join("partial").join(blob.to_hex());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Partial {
            store: self.clone(),
            blob: *blob,
            dir,
        })
    }

    /// A file in `tmp/` that is removed unless committed.
    fn temp_file(&self) -> anyhow::Result<tempfile::NamedTempFile> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir)
            .and_then(|()| tempfile::NamedTempFile::new_in(&dir))
            .with_context(|| format!("creating a file in {}", dir.display()))
    }

    /// Sync `tmp` and move it to the blob's place, durably.
    fn commit(&self, tmp: tempfile::NamedTempFile, hash: &Hash) -> anyhow::Result<()> {
        tmp.as_file().sync_all().context("syncing a blob")?;
        let dest = self.path(hash);
        std::fs::create_dir_all(self.root.join("blobs"))?;
        tmp.persist(&dest)
            .with_context(|| format!("storing {}", dest.display()))?;
        File::open(self.root.join("blobs"))?.sync_all()?;
        Ok(())
    }
}

/// A download in progress: the chunks verified so far, one file each, so that a restart
/// fetches only what is missing.
#[derive(Clone)]
pub struct Partial {
    store: BlobStore,
    blob: Hash,
    dir: PathBuf,
}

impl Partial {
    fn chunk_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:08}"))
    }

    /// Whether chunk `index` is here and still matches `expected`.
    pub fn has(&self, index: u64, expected: &Hash) -> bool {
        std::fs::read(self.chunk_path(index)).is_ok_and(|b| Hash::digest(&b) == *expected)
    }

    /// Keep a verified chunk (written to a temporary name first, so a crash leaves no torn
    /// chunk behind).
    pub fn put(&self, index: u64, bytes: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!("{index:08}.tmp"));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.chunk_path(index))?;
        Ok(())
    }

    /// Join chunks `0..count` into the blob, check the whole against its hash, and store it.
    /// On a mismatch the chunks are dropped (they were consistent with a manifest that lied
    /// about the blob) and the error says so.
    pub fn finish(self, count: u64) -> anyhow::Result<()> {
        let mut tmp = self.store.temp_file()?;
        let mut hasher = Sha256::new();
        for i in 0..count {
            let bytes = std::fs::read(self.chunk_path(i))
                .with_context(|| format!("chunk {i} of {} is missing", self.blob))?;
            hasher.update(&bytes);
            tmp.write_all(&bytes)?;
        }
        let got = Hash(hasher.finalize().into());
        if got != self.blob {
            drop(tmp);
            let blob = self.blob;
            self.abandon();
            bail!("the assembled blob hashes to {got}, not {blob}: its chunk list was false");
        }
        self.store.commit(tmp, &self.blob)?;
        self.abandon();
        Ok(())
    }

    /// Forget the chunks.
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_stored_under_its_hash_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = vec![7u8; (CHUNK + 5) as usize];
        let h = store.put(&bytes).unwrap();
        assert_eq!(h, Hash::digest(&bytes));
        assert_eq!(store.size(&h), Some(CHUNK + 5));
        assert_eq!(store.list().unwrap(), vec![h]);
        assert_eq!(store.read_chunk(&h, 1).unwrap().unwrap().len(), 5);
        assert!(store.read_chunk(&h, 2).unwrap().is_none());
        let (size, chunks) = store.chunk_hashes(&h).unwrap().unwrap();
        assert_eq!((size, chunks.len()), (CHUNK + 5, 2));
        assert_eq!(store.read(&h).unwrap(), bytes);

        // A flipped bit on disk is found on read.
        let mut corrupt = bytes.clone();
        corrupt[3] ^= 1;
        std::fs::write(store.path(&h), &corrupt).unwrap();
        let err = store.read(&h).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn storing_a_blob_again_makes_it_young_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let h = store.put(b"a checkpoint").unwrap();
        let age_it = || {
            let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
            let f = File::options().write(true).open(store.path(&h)).unwrap();
            f.set_modified(old).unwrap();
        };
        let age = || store.list_with_age().unwrap()[0].1;
        age_it();
        assert!(age() > 7000.0);
        store.put(b"a checkpoint").unwrap();
        assert!(age() < 60.0, "put refreshed it");
        age_it();
        assert!(age() > 7000.0);
        let src = dir.path().join("src");
        std::fs::write(&src, b"a checkpoint").unwrap();
        store.put_file(&src).unwrap();
        assert!(age() < 60.0, "put_file refreshed it");
    }

    #[test]
    fn a_partial_download_resumes_and_is_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..(2 * CHUNK + 10)).map(|i| (i % 251) as u8).collect();
        let blob = Hash::digest(&bytes);
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK as usize).collect();
        let p = store.partial(&blob).unwrap();
        p.put(0, chunks[0]).unwrap();
        drop(p);
        // After a restart the verified chunk is still there.
        let store = BlobStore::open(dir.path()).unwrap();
        let p = store.partial(&blob).unwrap();
        assert!(p.has(0, &Hash::digest(chunks[0])));
        assert!(!p.has(1, &Hash::digest(chunks[1])));
        p.put(1, chunks[1]).unwrap();
        p.put(2, chunks[2]).unwrap();
        p.finish(3).unwrap();
        assert_eq!(store.read(&blob).unwrap(), bytes);

        // Chunks that do not make up the blob are refused and dropped.
        let other = Hash::digest(b"something else");
        let p = store.partial(&other).unwrap();
        p.put(0, chunks[0]).unwrap();
        let err = p.finish(1).unwrap_err().to_string();
        assert!(err.contains("its chunk list was false"), "{err}");
        assert!(!store.contains(&other));
        assert!(
            !store
                .partial(&other)
                .unwrap()
                .has(0, &Hash::digest(chunks[0]))
        );
    }

    #[test]
    fn a_blob_corrupted_on_disk_is_never_listed_as_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let h = store.put(&[5u8; 1000]).unwrap();
        std::fs::write(store.path(&h), [6u8; 1000]).unwrap();
        assert!(store.chunk_hashes(&h).unwrap().is_none());
        assert!(!store.contains(&h));
    }

    #[test]
    fn put_file_streams_and_interrupted_writes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/tmp/leftover"), b"torn").unwrap();
        let src = dir.path().join("data.csv");
        std::fs::write(&src, b"1,2,3\n").unwrap();
        let h = store.put_file(&src).unwrap();
        assert_eq!(h, Hash::digest(b"1,2,3\n"));
        let store = BlobStore::open(&dir.path().join("s")).unwrap();
        assert!(store.contains(&h));
        assert_eq!(
            std::fs::read_dir(dir.path().join("s/tmp")).unwrap().count(),
            0
        );
    }
}
