//! Workload identities: `ama up` holds the mesh's CA (self-signed, for this run only) and gives
//! each pod with a sidecar its certificate in Istio's file-mounted layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`, the sidecar's `--cert-dir`), for its SPIFFE
//! id `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`. The sidecars then speak
//! mTLS to each other as in a cluster (auto mTLS, XFCC, peer identities in the access log).
//!
//! Certificates live 24 hours and are issued again at half life ([`RENEW_AFTER`]); the
//! sidecar re-reads the directory when the files change. The key is readable only by the
//! sidecar's uid (1337). When `ama discovery` serves Istio's CA to local meshes, the sidecars
//! can ask it instead (`CA_ADDR`); the files stay the simple path.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use identity::{CertificateAuthority, CsrAndKey, SpiffeId};

use crate::Error;
use crate::state::write_atomic;

/// Lifetime of a workload certificate.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// When a certificate is issued again.
pub const RENEW_AFTER: Duration = Duration::from_secs(12 * 3600);

/// The mesh's CA.
#[derive(Debug)]
pub struct MeshCa {
    ca: CertificateAuthority,
}

impl MeshCa {
    /// A new self-signed CA for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<MeshCa, Error> {
        let ca =
            CertificateAuthority::generate(trust_domain).map_err(|source| Error::Certificate {
                id: format!("the mesh CA of {trust_domain}"),
                source,
            })?;
        Ok(MeshCa { ca })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// Writes the certificate of `namespace`/`service_account` into `dir`, its key owned by
    /// `owner` (uid, gid) with mode 0600.
    pub fn issue(
        &self,
        dir: &Path,
        namespace: &str,
        service_account: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), Error> {
        let id_text = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.ca.trust_domain()
        );
        let cert_error = |source| Error::Certificate {
            id: id_text.clone(),
            source,
        };
        let id = SpiffeId::new(self.ca.trust_domain(), namespace, service_account)
            .map_err(|e| cert_error(identity::Error::from(e)))?;
        let CsrAndKey { key, csr_pem } = CsrAndKey::generate(&id).map_err(cert_error)?;
        let chain = self.ca.sign_csr(&csr_pem, &id, TTL).map_err(cert_error)?;
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(Error::io(dir))?;
        // The key first, so the chain never names a key that is not there yet.
        let key_path = dir.join("key.pem");
        let tmp = dir.join(".key.pem.tmp");
        fs::write(&tmp, key.to_pem()).map_err(Error::io(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(Error::io(&tmp))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(Error::io(&tmp))?;
        }
        fs::rename(&tmp, &key_path).map_err(Error::io(&key_path))?;
        write_atomic(&dir.join("root-cert.pem"), chain.roots_pem().as_bytes())?;
        write_atomic(&dir.join("cert-chain.pem"), chain.chain_pem().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_istio_layout() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        ca.issue(&certs, "default", "default", None).unwrap();
        for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
            assert!(certs.join(f).is_file(), "{f}");
        }
        let mode = fs::metadata(certs.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let chain = fs::read_to_string(certs.join("cert-chain.pem")).unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
