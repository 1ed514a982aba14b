//! A fleet's identities: one key per pod ordinal, added before a pod with that ordinal first
//! starts and never replaced or removed (the key owns the pod's balance and bonds), and the
//! token the operator drains its pods with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use pot_protocol::{Address, SecretKey, keyfile};

use super::children::{self, Names};
use crate::crd::miner::Miner;
use crate::error::{Error, Result};

/// What the fleet's pods are.
pub struct Identity {
    /// Each ordinal's address, for ordinals `0..n` of [`ensure`].
    pub addresses: Vec<Address>,
    /// The bearer token of the pods' `POST /v1/node/drain`.
    pub drain_token: String,
}

/// The annotation on a fleet's keys Secret naming the `Miner` (by uid) the keys were made
/// for. The Secret outlives its fleet (the keys hold funds), so without it a new `Miner` that
/// takes a deleted fleet's name — made by anyone who may create Miners, running an image of
/// their choosing — would mount the old fleet's funded keys.
pub const MINER_UID_ANNOTATION: &str = "pot.dev/miner-uid";

/// Whether the keys Secret `s` was made for (or handed to) Miner `m`.
pub fn keys_belong_to(s: &Secret, m: &Miner) -> bool {
    let uid = m.uid().unwrap_or_default();
    !uid.is_empty() && s.annotations().get(MINER_UID_ANNOTATION) == Some(&uid)
}

/// Make sure ordinals `0..n` have keys (keeping every key already made, for any ordinal) and
/// the drain token exists.
pub async fn ensure(m: &Miner, client: &kube::Client, n: usize) -> Result<Identity> {
    let ns = m.namespace().unwrap_or_default();
    let names = Names::of(m);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let existing = secrets.get_opt(&names.keys_secret()).await?;
    // Keys made by an operator before the annotation existed belong to the fleet whose
    // StatefulSet (owned by this very Miner) runs on them: adopt those, stamping the uid.
    let adopt = match &existing {
        Some(s) if !s.annotations().contains_key(MINER_UID_ANNOTATION) => {
            runs_on_them(m, client, &ns, &names).await?
        }
        _ => false,
    };
    if let Some(s) = &existing
        && !keys_belong_to(s, m)
        && !adopt
    {
        let name = names.keys_secret();
        return Err(Error::needs(
            "KeysOfAnotherFleet",
            format!(
                "Secret {name} holds keys made for another Miner (uid {}), which may hold \
                 funds and bonds; the operator does not hand them to a new fleet on its own. To \
                 let this fleet use them: `kubectl annotate secret {name} \
                 {MINER_UID_ANNOTATION}={} --overwrite`; to start with new keys, rename or \
                 delete that Secret (after moving its funds)",
                s.annotations()
                    .get(MINER_UID_ANNOTATION)
                    .map_or("unknown", String::as_str),
                m.uid().unwrap_or_default()
            ),
        ));
    }
    let mut files: BTreeMap<String, String> = existing
        .iter()
        .flat_map(|s| s.data.iter().flatten())
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    let mut addresses = Vec::with_capacity(n);
    let mut added = false;
    for i in 0..n {
        let pod = names.pod(i);
        match files.get(&pod) {
            Some(text) => {
                // A key that does not read is a person's to look at: overwriting it could
                // orphan a funded account.
                let key = keyfile::decode(text).map_err(|e| {
                    Error::needs(
                        "KeysInvalid",
                        format!("Secret {}: the key for {pod}: {e}", names.keys_secret()),
                    )
                })?;
                addresses.push(key.address());
            }
            None => {
                let key = SecretKey::generate();
                addresses.push(key.address());
                files.insert(pod, keyfile::encode(&key));
                added = true;
            }
        }
    }
    let mut secret = children::keys_secret(m, &files);
    secret
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(MINER_UID_ANNOTATION.into(), m.uid().unwrap_or_default());
    match existing {
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
        Some(old) if added || adopt => {
            // Optimistic concurrency: a racing writer makes this fail (and retry) instead of
            // one of two new keys being lost after a pod started with it.
            secret.metadata.resource_version = old.metadata.resource_version;
            secret.metadata.annotations = old.metadata.annotations;
            secrets
                .replace(&names.keys_secret(), &PostParams::default(), &secret)
                .await?;
        }
        Some(_) => {}
    }
    let drain_token = drain_token(m, &secrets).await?;
    Ok(Identity {
        addresses,
        drain_token,
    })
}

/// Whether the fleet's StatefulSet exists and is controlled by this Miner (by uid).
async fn runs_on_them(m: &Miner, client: &kube::Client, ns: &str, names: &Names) -> Result<bool> {
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), ns);
    let uid = m.uid().unwrap_or_default();
    Ok(sts.get_opt(&names.statefulset()).await?.is_some_and(|s| {
        !uid.is_empty()
            && s.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
    }))
}

/// The fleet's drain token: the Secret's, or a new random one.
async fn drain_token(m: &Miner, secrets: &Api<Secret>) -> Result<String> {
    let name = Names::of(m).drain_secret();
    if let Some(s) = secrets.get_opt(&name).await? {
        let token = s
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
            .unwrap_or_default();
        if token.len() < 32 {
            return Err(Error::needs(
                "DrainTokenInvalid",
                format!(
                    "Secret {name} has no `token` of at least 32 characters; delete it and the operator makes a new one"
                ),
            ));
        }
        return Ok(token);
    }
    let token = hex::encode(SecretKey::generate().seed());
    match secrets
        .create(&PostParams::default(), &children::drain_secret(m, &token))
        .await
    {
        Ok(_) => Ok(token),
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(drain_token(m, secrets)).await,
        Err(e) => Err(e.into()),
    }
}
