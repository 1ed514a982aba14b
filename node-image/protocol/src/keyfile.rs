//! The key file format: a small JSON document with the address and the secret seed in hex.
//! `pot-node keygen` writes it, the operator puts it in Secrets, pods read it with `--key`.

use serde::{Deserialize, Serialize};

use crate::crypto::{Address, SecretKey};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    address: Address,
    secret_key: String,
}

/// What is wrong with a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a key file: {0}")]
    Format(String),
    #[error("secret_key: {0}")]
    Secret(String),
    #[error("address {claimed} does not belong to its secret key (which gives {actual})")]
    Mismatch { claimed: Address, actual: Address },
}

/// The key file of `key` (pretty JSON, newline-terminated).
pub fn encode(key: &SecretKey) -> String {
    let doc = KeyFile {
        address: key.address(),
        secret_key: hex::encode(key.seed()),
    };
    let mut text = serde_json::to_string_pretty(&doc).expect("a key file serialises");
    text.push('\n');
    text
}

/// Read a key file, checking that its address belongs to its secret.
pub fn decode(text: &str) -> Result<SecretKey, KeyFileError> {
    let doc: KeyFile =
        serde_json::from_str(text).map_err(|e| KeyFileError::Format(e.to_string()))?;
    // The error never quotes the secret: messages end up in logs and conditions.
    let key: SecretKey = doc.secret_key.parse().map_err(|_| {
        KeyFileError::Secret(format!(
            "not 64 hex digits ({} characters)",
            doc.secret_key.len()
        ))
    })?;
    if key.address() != doc.address {
        return Err(KeyFileError::Mismatch {
            claimed: doc.address,
            actual: key.address(),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_reads_back_as_its_key() {
        let key = SecretKey::from_seed([3; 32]);
        assert_eq!(decode(&encode(&key)).unwrap().address(), key.address());
    }

    #[test]
    fn an_address_of_another_key_is_refused() {
        let other = SecretKey::from_seed([5; 32]).address();
        let text = encode(&SecretKey::from_seed([6; 32])).replace(
            &SecretKey::from_seed([6; 32]).address().to_hex(),
            &other.to_hex(),
        );
        assert!(matches!(decode(&text), Err(KeyFileError::Mismatch { .. })));
        assert!(matches!(decode("{}"), Err(KeyFileError::Format(_))));
        // A damaged secret is reported without quoting what is left of it.
        let secret = hex::encode(SecretKey::from_seed([6; 32]).seed());
        let damaged = encode(&SecretKey::from_seed([6; 32])).replace(&secret, &secret[1..]);
        let err = decode(&damaged).unwrap_err().to_string();
        assert!(!err.contains(&secret[1..20]), "{err}");
    }
}
