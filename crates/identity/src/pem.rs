//! PEM text in and out: certificates, CSRs and private keys. Pure; the decoding is
//! rustls-pki-types' `PemObject`, the encoding 64-column base64 as OpenSSL and Go write it.

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

use crate::Error;

/// Encodes `der` as one PEM block with the given label (`CERTIFICATE`, `PRIVATE KEY` …).
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Encodes a list of certificates as concatenated PEM blocks.
pub(crate) fn encode_certificates<'a>(
    certs: impl IntoIterator<Item = &'a CertificateDer<'static>>,
) -> String {
    certs
        .into_iter()
        .map(|c| encode("CERTIFICATE", c))
        .collect()
}

/// Decodes every `CERTIFICATE` block of `text`; `what` names the source in errors. Other blocks
/// are skipped. Zero certificates is an error.
pub(crate) fn certificates(what: &str, text: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::pem(what, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::pem(what, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Decodes exactly one `CERTIFICATE` block.
pub(crate) fn certificate(what: &str, text: &[u8]) -> Result<CertificateDer<'static>, Error> {
    let mut certs = certificates(what, text)?;
    if certs.len() != 1 {
        return Err(Error::pem(
            what,
            format!("{} CERTIFICATE blocks; exactly one expected", certs.len()),
        ));
    }
    Ok(certs.remove(0))
}

/// Decodes the first `CERTIFICATE REQUEST` block.
pub(crate) fn csr(text: &[u8]) -> Result<CertificateSigningRequestDer<'static>, Error> {
    CertificateSigningRequestDer::from_pem_slice(text)
        .map_err(|e| Error::pem("CSR", format!("no CERTIFICATE REQUEST block ({e})")))
}

/// Decodes the first private key block (PKCS#8, SEC1 or PKCS#1). The error never quotes the
/// input, which may be key material.
pub(crate) fn private_key(what: &str, text: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(text).map_err(|e| {
        let reason = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".to_string(),
            _ => "bad PEM private key".to_string(),
        };
        Error::pem(what, reason)
    })
}
