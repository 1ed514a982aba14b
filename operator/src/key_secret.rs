//! Keys that users keep in Secrets (a fleet's funding key, a task's publisher key), read when
//! a transaction is to be signed and never copied anywhere else.
//!
//! The operator can read every Secret of a namespace it serves, but whoever may create a
//! `TrainingTask` or `Miner` there must not thereby spend every key in it (the faucet, the
//! coordinators' or miners' own keys, another team's publisher key): a key is used only if
//! its Secret carries `pot.dev/signer-for`, naming the kinds its owner lets sign with it.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use pot_protocol::{SecretKey, keyfile};

use crate::crd::SecretKeyRef;
use crate::error::{Error, Result};

/// The annotation on a key's Secret that lets resources of the kinds it lists (comma
/// separated, e.g. `TrainingTask,Miner`) sign with it.
pub const SIGNER_FOR_ANNOTATION: &str = "pot.dev/signer-for";

/// Whether `annotations` let a resource of `kind` sign with the Secret's key.
pub fn allows(annotations: &std::collections::BTreeMap<String, String>, kind: &str) -> bool {
    annotations
        .get(SIGNER_FOR_ANNOTATION)
        .is_some_and(|v| v.split(',').any(|k| k.trim() == kind))
}

/// The key file at `r` in namespace `ns`, for a resource of `kind`. A missing Secret or key,
/// a Secret whose owner did not allow `kind` to sign with it, or a file that does not read,
/// is `reason` (for a person to fix); the message never quotes the secret.
///
/// `signed_before` is the address this resource already signed with (a submitted task's
/// publisher): that key may finish the resource's work — reveal the eval set, without which
/// the bounty burns — even if the mark was added after it signed, or removed since.
pub async fn read(
    client: &kube::Client,
    ns: &str,
    r: &SecretKeyRef,
    kind: &str,
    reason: &'static str,
    signed_before: Option<&str>,
) -> Result<SecretKey> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::needs(reason, format!("Secret {} does not exist", r.name)))?;
    let key = decode(&secret, r, reason)?;
    let finishing = signed_before.is_some_and(|a| a == key.address().to_hex());
    if !finishing && !allows(secret.annotations(), kind) {
        return Err(Error::needs(
            reason,
            format!(
                "Secret {name} is not marked for signing by a {kind}: its owner allows that with \
                 `kubectl annotate secret {name} {SIGNER_FOR_ANNOTATION}={kind}` (the operator \
                 signs only with keys so marked, so that creating a {kind} does not grant the \
                 use of every key in the namespace)",
                name = r.name
            ),
        ));
    }
    Ok(key)
}

fn decode(secret: &Secret, r: &SecretKeyRef, reason: &'static str) -> Result<SecretKey> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| Error::needs(reason, format!("Secret {} has no key {:?}", r.name, r.key)))?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| Error::needs(reason, format!("Secret {}/{}: not UTF-8", r.name, r.key)))?;
    // The decoder's own message can quote the file (a serde error names the value it saw), and
    // this one goes into conditions and Events: say what is wrong, never what is there.
    keyfile::decode(text).map_err(|e| {
        let what = match e {
            keyfile::KeyFileError::Format(_) => "not a key file (`pot-node keygen` writes one)",
            keyfile::KeyFileError::Secret(_) => "its secret_key is not a valid key",
            keyfile::KeyFileError::Mismatch { .. } => "its address does not match its secret key",
        };
        Error::needs(reason, format!("Secret {}/{}: {what}", r.name, r.key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn marked(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(SIGNER_FOR_ANNOTATION.to_string(), v.to_string())])
    }

    #[test]
    fn a_key_signs_only_for_the_kinds_its_secret_names() {
        assert!(!allows(&BTreeMap::new(), "TrainingTask"));
        assert!(allows(&marked("TrainingTask"), "TrainingTask"));
        assert!(allows(&marked("Miner, TrainingTask"), "TrainingTask"));
        assert!(!allows(&marked("Miner"), "TrainingTask"));
        // No prefix or case games: the kind must be listed exactly.
        assert!(!allows(&marked("TrainingTasks"), "TrainingTask"));
        assert!(!allows(&marked("trainingtask"), "TrainingTask"));
        assert!(!allows(&marked("*"), "TrainingTask"));
    }
}
