//! The Secrets of `ama create secret tls|generic`, as `kubectl create secret` makes them.
//!
//! The object goes to the running mesh like any `ama apply` ([`crate::runtime::apply`]), so
//! discovery's registry has it (a gateway's `credentialName`); creating it again replaces it,
//! which is how a certificate is rotated here. Errors name the file and what is wrong with it;
//! nothing here prints or returns the data in an error.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value, json};

/// Why a Secret could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what its flag asks for.
    #[error("{flag} {path}: {message}")]
    BadFile {
        /// `--cert`, `--key` or `--from-file`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never its content).
        message: String,
    },
    /// A key of `--from-file`/`--from-literal` is not a valid Secret key.
    #[error("{flag} {given}: {message}")]
    BadKey {
        /// The flag.
        flag: &'static str,
        /// The argument as given (for `--from-literal`, the key only).
        given: String,
        /// What is wrong.
        message: String,
    },
    /// The Secret's name is not a DNS subdomain.
    #[error("secret name {name:?}: {message}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, SecretError> {
    std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn check_name(name: &str) -> Result<(), SecretError> {
    api::check::dns_name(name, true).map_err(|message| SecretError::BadName {
        name: name.to_string(),
        message,
    })
}

/// Whether `text` holds a PEM block whose label ends with `label` (`CERTIFICATE`,
/// `PRIVATE KEY` for PKCS#8, RSA and EC keys).
fn has_pem_block(bytes: &[u8], label: &str) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    })
}

fn secret(name: &str, namespace: &str, kind: &str, data: Map<String, Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": kind,
        "data": data,
    })
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `kubectl create secret tls NAME --cert CERT --key KEY -n NAMESPACE`: a
/// `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`.
pub fn tls(name: &str, namespace: &str, cert: &Path, key: &Path) -> Result<Value, SecretError> {
    check_name(name)?;
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    if !has_pem_block(&cert_pem, "CERTIFICATE") {
        return Err(SecretError::BadFile {
            flag: "--cert",
            path: cert.to_path_buf(),
            message: "no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".into(),
        });
    }
    if !has_pem_block(&key_pem, "PRIVATE KEY") {
        return Err(SecretError::BadFile {
            flag: "--key",
            path: key.to_path_buf(),
            message: "no PEM private key (\"-----BEGIN … PRIVATE KEY-----\")".into(),
        });
    }
    let mut data = Map::new();
    data.insert("tls.crt".into(), b64(&cert_pem));
    data.insert("tls.key".into(), b64(&key_pem));
    Ok(secret(name, namespace, "kubernetes.io/tls", data))
}

/// One entry of `kubectl create secret generic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--from-file=[key=]path`: the file's content under `key` (its base name by default).
    File(String),
    /// `--from-literal=key=value`.
    Literal(String),
}

/// A Secret key as Kubernetes allows them: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn check_key(flag: &'static str, given: &str, key: &str) -> Result<(), SecretError> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && key != "."
        && key != "..";
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadKey {
            flag,
            given: given.to_string(),
            message: format!(
                "{key:?} is not a valid Secret key (letters, digits, '-', '_' and '.')"
            ),
        })
    }
}

/// `kubectl create secret generic NAME --from-file=… --from-literal=… -n NAMESPACE`: an
/// `Opaque` Secret; a key given twice is an error, as kubectl has it.
pub fn generic(name: &str, namespace: &str, sources: &[Source]) -> Result<Value, SecretError> {
    check_name(name)?;
    let mut data = Map::new();
    for source in sources {
        let (flag, key, bytes, given) = match source {
            Source::File(arg) => {
                let (key, path) = match arg.split_once('=') {
                    Some((key, path)) => (key.to_string(), PathBuf::from(path)),
                    None => {
                        let path = PathBuf::from(arg);
                        let key = path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or_default()
                            .to_string();
                        (key, path)
                    }
                };
                if path.is_dir() {
                    return Err(SecretError::BadFile {
                        flag: "--from-file",
                        path,
                        message: "is a directory (name each file)".into(),
                    });
                }
                let bytes = read(&path)?;
                ("--from-file", key, bytes, arg.clone())
            }
            Source::Literal(arg) => {
                let Some((key, value)) = arg.split_once('=') else {
                    return Err(SecretError::BadKey {
                        flag: "--from-literal",
                        given: String::new(),
                        message: "expected key=value".into(),
                    });
                };
                // The value is secret: only the key is ever shown.
                (
                    "--from-literal",
                    key.to_string(),
                    value.as_bytes().to_vec(),
                    key.to_string(),
                )
            }
        };
        check_key(flag, &given, &key)?;
        if data.contains_key(&key) {
            return Err(SecretError::BadKey {
                flag,
                given,
                message: format!("key {key:?} is given twice"),
            });
        }
        data.insert(key, b64(&bytes));
    }
    Ok(secret(name, namespace, "Opaque", data))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn decode(v: &Value) -> String {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn tls_secret_is_kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        let s = tls("httpbin-credential", "istio-system", &cert, &key).unwrap();
        assert_eq!(s["kind"], "Secret");
        assert_eq!(s["type"], "kubernetes.io/tls");
        assert_eq!(s["metadata"]["namespace"], "istio-system");
        assert_eq!(s["metadata"]["name"], "httpbin-credential");
        assert_eq!(decode(&s["data"]["tls.crt"]), CERT);
        assert_eq!(decode(&s["data"]["tls.key"]), KEY);
        // The two files swapped: refused, naming the flag and the file, not the content.
        let err = tls("x", "istio-system", &key, &cert)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--cert "), "{err}");
        assert!(err.contains("a.key"), "{err}");
        assert!(!err.contains("MIIE"), "{err}");
        let err = tls("Bad_Name", "istio-system", &cert, &key).unwrap_err();
        assert!(matches!(err, SecretError::BadName { .. }));
        let missing = dir.path().join("missing.pem");
        let err = tls("x", "ns", &missing, &key).unwrap_err().to_string();
        assert!(err.starts_with("cannot read"), "{err}");
        // The object ama up reads back.
        let text = s.to_string();
        let (docs, findings) = crate::manifests::parse(&text, "create");
        assert!(findings.iter().all(|f| !f.is_error()), "{findings:?}");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn generic_secret_takes_files_and_literals() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("example.com.crt");
        std::fs::write(&ca, CERT).unwrap();
        let s = generic(
            "httpbin-credential",
            "istio-system",
            &[
                Source::File(format!("cacert={}", ca.display())),
                Source::File(ca.display().to_string()),
                Source::Literal("token=s3cr3t".into()),
            ],
        )
        .unwrap();
        assert_eq!(s["type"], "Opaque");
        assert_eq!(decode(&s["data"]["cacert"]), CERT);
        assert_eq!(decode(&s["data"]["example.com.crt"]), CERT);
        assert_eq!(decode(&s["data"]["token"]), "s3cr3t");
        let err = generic(
            "x",
            "ns",
            &[Source::Literal("k=1".into()), Source::Literal("k=2".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("given twice"), "{err}");
        let err = generic("x", "ns", &[Source::Literal("bad key=hidden".into())])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hidden"), "{err}");
        assert!(err.contains("not a valid Secret key"), "{err}");
    }
}
