//! Kubernetes mode: the self-signed mesh root lives in the Secret `istio-ca-secret` of the
//! control plane's namespace, as istiod keeps it, so every replica and every restart signs
//! under the same root.
//!
//! [`sync_root`] runs once at start, before the CA is loaded, when no plug-in root (`cacerts`)
//! is given:
//!
//! - the Secret exists: its `ca-cert.pem` and `ca-key.pem` are written to the local CA directory
//!   (`<state>/ca`, memory-backed in the pod), which [`crate::ca_server::load_ca`] then reads;
//! - it does not: a root is generated into that directory and the Secret is created from it;
//!   when another replica created it first (409), theirs wins and is written over ours.
//!
//! I/O: one or two API requests, a few files (the key with mode 0600). The key is never logged.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use identity::CertificateAuthority;
use identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// Istio's Secret holding the self-signed root.
pub const CA_SECRET: &str = "istio-ca-secret";
/// Its type, as istiod writes it.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";

/// Why the root could not be read from or stored in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// An API request failed.
    #[error("Secret {namespace}/{CA_SECRET}: {what}: {reason}")]
    Api {
        /// The Secret's namespace.
        namespace: String,
        /// What was being done.
        what: &'static str,
        /// The API server's answer.
        reason: String,
    },
    /// The Secret exists but is not a CA.
    #[error("Secret {namespace}/{CA_SECRET} has no {key}: fix or delete it")]
    Incomplete {
        /// The Secret's namespace.
        namespace: String,
        /// The missing key.
        key: &'static str,
    },
    /// Generating the root failed.
    #[error("generating the mesh root: {0}")]
    Generate(#[from] identity::Error),
    /// A local file could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Makes `dir` hold the cluster's self-signed root from `namespace`/[`CA_SECRET`], creating the
/// Secret from a new root for `trust_domain` when there is none.
pub async fn sync_root(
    client: &kube::Client,
    namespace: &str,
    dir: &Path,
    trust_domain: &str,
) -> Result<(), CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error = |what| {
        move |e: kube::Error| CaSecretError::Api {
            namespace: namespace.to_string(),
            what,
            reason: describe(&e),
        }
    };
    if let Some(secret) = api.get_opt(CA_SECRET).await.map_err(api_error("reading"))? {
        write_dir(dir, &secret, namespace)?;
        tracing::info!("mesh root from Secret {namespace}/{CA_SECRET}");
        return Ok(());
    }
    let ca = CertificateAuthority::generate(trust_domain)?;
    ca.persist(dir)?;
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|source| CaSecretError::Io { path, source })
    };
    let data = BTreeMap::from([
        (CA_CERT_FILE.to_string(), ByteString(read(CA_CERT_FILE)?)),
        (CA_KEY_FILE.to_string(), ByteString(read(CA_KEY_FILE)?)),
        (CERT_CHAIN_FILE.to_string(), ByteString(Vec::new())),
        (ROOT_CERT_FILE.to_string(), ByteString(Vec::new())),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        type_: Some(CA_SECRET_TYPE.to_string()),
        data: Some(data),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                "generated a self-signed mesh root for {trust_domain}, stored in Secret \
                 {namespace}/{CA_SECRET}"
            );
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica was first: sign under its root.
            let secret = api.get(CA_SECRET).await.map_err(api_error("reading"))?;
            write_dir(dir, &secret, namespace)?;
            tracing::info!(
                "mesh root from Secret {namespace}/{CA_SECRET} (another replica made it)"
            );
            Ok(())
        }
        Err(e) => Err(api_error("creating")(e)),
    }
}

/// Writes the Secret's certificate and key in Istio's plug-in layout (self-signed: the
/// certificate is also the root; no chain).
fn write_dir(dir: &Path, secret: &Secret, namespace: &str) -> Result<(), CaSecretError> {
    let get = |key: &'static str| -> Result<&[u8], CaSecretError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or(CaSecretError::Incomplete {
                namespace: namespace.to_string(),
                key,
            })
    };
    let (cert, key) = (get(CA_CERT_FILE)?, get(CA_KEY_FILE)?);
    let io = |path: PathBuf| move |source| CaSecretError::Io { path, source };
    fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    write_file(&dir.join(CA_KEY_FILE), key, 0o600)?;
    write_file(&dir.join(CA_CERT_FILE), cert, 0o644)?;
    write_file(&dir.join(ROOT_CERT_FILE), cert, 0o644)?;
    let chain = dir.join(CERT_CHAIN_FILE);
    match fs::remove_file(&chain) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(chain)(e)),
        _ => Ok(()),
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaSecretError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| CaSecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)
}

fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} {}", status.code, status.message),
        other => other.to_string(),
    }
}
