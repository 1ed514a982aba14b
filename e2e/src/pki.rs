//! Keys and certificates for one control plane: a CA, the API server's serving certificate for
//! the loopback address, the service-account token signing key, and the pair the API server and
//! the local kubelet use to talk to each other (`kubectl logs`): a serving certificate for the
//! kubelet and a client certificate for the API server, both from the same CA, so each side
//! checks the other.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// File paths of the written material.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub kubelet_serving_cert: PathBuf,
    pub kubelet_serving_key: PathBuf,
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
}

/// Generate everything and write it under `dir` (PEM files, keys mode 0600).
pub fn write(dir: &Path) -> anyhow::Result<PkiFiles> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pot-e2e control-plane CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let (serving_cert, serving_key) = leaf(
        &ca,
        &["127.0.0.1", "localhost", "kubernetes.default.svc"],
        "kube-apiserver",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let sa_key = KeyPair::generate()?;
    let (kubelet_cert, kubelet_key) = leaf(
        &ca,
        &["127.0.0.1"],
        "pot-e2e kubelet",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        &ca,
        &[],
        "kube-apiserver-kubelet-client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        kubelet_serving_cert: dir.join("kubelet.crt"),
        kubelet_serving_key: dir.join("kubelet.key"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    };
    write_file(&files.ca_cert, &ca.pem(), false)?;
    write_file(&files.serving_cert, &serving_cert.pem(), false)?;
    write_file(&files.serving_key, &serving_key.serialize_pem(), true)?;
    write_file(&files.sa_key, &sa_key.serialize_pem(), true)?;
    write_file(&files.sa_pub, &sa_key.public_key_pem(), false)?;
    write_file(&files.kubelet_serving_cert, &kubelet_cert.pem(), false)?;
    write_file(
        &files.kubelet_serving_key,
        &kubelet_key.serialize_pem(),
        true,
    )?;
    write_file(&files.kubelet_client_cert, &client_cert.pem(), false)?;
    write_file(&files.kubelet_client_key, &client_key.serialize_pem(), true)?;
    Ok(files)
}

/// A certificate for `names` with common name `cn`, for one purpose, signed by `ca`.
fn leaf(
    ca: &CertifiedIssuer<'_, KeyPair>,
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert, key))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
