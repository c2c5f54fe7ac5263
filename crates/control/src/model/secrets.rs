//! The Secrets that TLS settings name by `credentialName` (a Gateway server's, a
//! DestinationRule's), read as Istio's credential controller reads them: the certificate
//! under `tls.crt` or `cert`, the key under `tls.key` or `key`, the CA under `ca.crt` or
//! `cacert`, else in the Secret `<name>-cacert`. Their values never reach a log or a warning:
//! only the Secret's namespace and name do.

use std::collections::BTreeMap;

use api::objects::{Object, Secret};

/// The Secrets of the objects, by namespace and name.
#[derive(Debug, Default)]
pub(crate) struct Secrets<'a>(BTreeMap<(&'a str, &'a str), &'a Secret>);

/// The PEM texts of one Secret (and of its `-cacert` companion for the CA).
#[derive(Default)]
pub(crate) struct SecretPems {
    /// `tls.crt` or `cert`.
    pub(crate) cert_chain: Option<String>,
    /// `tls.key` or `key`.
    pub(crate) private_key: Option<String>,
    /// `ca.crt` or `cacert`, of the Secret or else of `<name>-cacert`.
    pub(crate) ca_certificates: Option<String>,
}

impl<'a> Secrets<'a> {
    /// Indexes the Secrets among `objects`.
    pub(crate) fn new(objects: &[&'a Object]) -> Secrets<'a> {
        Secrets(
            objects
                .iter()
                .filter_map(|o| match o {
                    Object::Secret(s) => {
                        Some(((s.metadata.namespace.as_str(), s.metadata.name.as_str()), s))
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// The namespaces that have a Secret named `name`.
    pub(crate) fn namespaces_with(&self, name: &str) -> Vec<&'a str> {
        self.0
            .keys()
            .filter(|(_, n)| *n == name)
            .map(|(ns, _)| *ns)
            .collect()
    }

    /// The PEM texts of the Secret `name` in `ns`; its CA from `<name>-cacert` when it has none
    /// and `ca_companion`. Err: why there is none (no value is ever in it).
    pub(crate) fn read(
        &self,
        ns: &str,
        name: &str,
        ca_companion: bool,
    ) -> Result<SecretPems, String> {
        let s = self
            .0
            .get(&(ns, name))
            .ok_or_else(|| "no such Secret".to_string())?;
        let mut pems = SecretPems {
            cert_chain: pem(s, &["tls.crt", "cert"]),
            private_key: pem(s, &["tls.key", "key"]),
            ca_certificates: pem(s, &["ca.crt", "cacert"]),
        };
        if pems.ca_certificates.is_none() && ca_companion {
            let ca_name = format!("{name}-cacert");
            pems.ca_certificates = self
                .0
                .get(&(ns, ca_name.as_str()))
                .and_then(|ca| pem(ca, &["ca.crt", "cacert"]));
        }
        Ok(pems)
    }
}

/// The text under the first of `keys` that `secret` has (None when it is not UTF-8).
fn pem(secret: &Secret, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| secret.data.get(*k))
        .and_then(|b| String::from_utf8(b.clone()).ok())
}
