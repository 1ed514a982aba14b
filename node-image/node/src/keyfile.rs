//! Key files: a small JSON document with the address and the secret seed, written with
//! owner-only permissions. Pods mount them from Secrets.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use pot_protocol::{Address, SecretKey};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    address: Address,
    secret_key: String,
}

/// Write `key` to `path`; refuses to overwrite an existing file so no key is lost by accident.
pub fn write(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    let doc = KeyFile {
        address: key.address(),
        secret_key: hex_seed(key),
    };
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
    f.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

/// Read a key file and check that its address matches its secret.
pub fn read(path: &Path) -> anyhow::Result<SecretKey> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))?;
    let doc: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("key file {} is not valid", path.display()))?;
    let key: SecretKey = doc
        .secret_key
        .parse()
        .with_context(|| format!("key file {}: secret_key", path.display()))?;
    if key.address() != doc.address {
        bail!(
            "key file {}: address {} does not belong to its secret key (which gives {})",
            path.display(),
            doc.address,
            key.address()
        );
    }
    Ok(key)
}

fn hex_seed(key: &SecretKey) -> String {
    key.seed().iter().map(|b| format!("{b:02x}")).collect()
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
                hex_seed(&SecretKey::from_seed([6; 32]))
            ),
        )
        .unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("does not belong"), "{err}");
    }
}
