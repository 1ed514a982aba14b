//! Key files on disk (the format is `pot_protocol::keyfile`), written with owner-only
//! permissions. Pods mount them from Secrets.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use pot_protocol::{SecretKey, keyfile};

/// Write `key` to `path`; refuses to overwrite an existing file so no key is lost by accident.
pub fn write(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(keyfile::encode(key).as_bytes())?;
    Ok(())
}

/// Read a key file and check that its address matches its secret.
pub fn read(path: &Path) -> anyhow::Result<SecretKey> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))?;
    keyfile::decode(&text).with_context(|| format!("key file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let key = SecretKey::from_seed([3; 32]);
        write(&path, &key).unwrap();
        assert_eq!(read(&path).unwrap().address(), key.address());
        assert!(write(&path, &SecretKey::from_seed([4; 32])).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn mismatched_address_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let other = SecretKey::from_seed([5; 32]).address();
        fs::write(
            &path,
            format!(
                "{{\"address\":\"{other}\",\"secret_key\":\"{}\"}}",
                hex::encode(SecretKey::from_seed([6; 32]).seed())
            ),
        )
        .unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("does not belong"), "{err}");
    }
}
