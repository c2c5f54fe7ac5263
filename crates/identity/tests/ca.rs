//! The mesh CA: what a leaf looks like, what a CSR may not choose, and loading roots from disk.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::{id, sa};
use identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use identity::{
    CertChain, CertificateAuthority, CsrAndKey, Error, PrivateKey, WorkloadCertificate,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).expect("x509").1
}

fn general_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("san present");
    assert!(san.critical, "SAN must be critical with an empty subject");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("URI:{u}"),
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// A CSR that asks for everything it should not get.
fn evil_csr() -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "istiod.istio-system.svc");
    dn.push(DnType::OrganizationName, "evil");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI(
            "spiffe://evil/ns/istio-system/sa/istiod"
                .try_into()
                .unwrap(),
        ),
        SanType::URI(
            "spiffe://cluster.local/ns/istio-system/sa/istiod"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("istiod.istio-system.svc".try_into().unwrap()),
        SanType::DnsName("*.svc.cluster.local".try_into().unwrap()),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn self_signed_root_looks_like_istios() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    assert!(ca.is_self_signed());
    assert_eq!(ca.roots().len(), 1);
    let root = parse(&ca.roots()[0]);
    assert_eq!(root.subject().to_string(), "O=cluster.local");
    assert_eq!(root.issuer().to_string(), "O=cluster.local");
    assert!(root.basic_constraints().unwrap().unwrap().value.ca);
    let ku = root.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let validity = root.validity();
    let years =
        (validity.not_after.timestamp() - validity.not_before.timestamp()) / (365 * 24 * 3600);
    assert_eq!(years, 10);
    assert_eq!(
        root.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    ); // EC
    assert!(format!("{ca:?}").contains("key: \"[redacted]\""));
    assert!(CertificateAuthority::generate("Cluster.Local").is_err());
}

#[test]
fn sign_ignores_everything_the_csr_asks_for() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let caller = sa("sleep");
    let chain = ca
        .sign_csr(&evil_csr(), &caller, Duration::from_secs(24 * 3600))
        .unwrap();
    let leaf = parse(chain.leaf());
    assert_eq!(
        general_names(&leaf),
        vec!["URI:spiffe://cluster.local/ns/default/sa/sleep"]
    );
    assert_eq!(
        leaf.subject().iter().count(),
        0,
        "Istio leaves have an empty subject"
    );
    assert_eq!(leaf.issuer().to_string(), "O=cluster.local");
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing && !eku.any);
    let validity = leaf.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        24 * 3600 + 60
    );
    assert_eq!(
        identity::SpiffeId::from_certificate_der(chain.leaf()).unwrap(),
        caller
    );
    assert!(chain.intermediates().is_empty());
    assert_eq!(chain.roots(), ca.roots());
}

#[test]
fn sign_checks_the_request() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let csr = CsrAndKey::generate(&sa("sleep")).unwrap().csr_pem;

    // A CSR whose signature was tampered with proves nothing about the key.
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let mut bad = der.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let bad_pem = pem_encode("CERTIFICATE REQUEST", &bad);
    assert!(matches!(
        ca.sign_csr(&bad_pem, &sa("sleep"), Duration::from_secs(60)),
        Err(Error::CsrSignature)
    ));

    let err = ca
        .sign_csr("garbage", &sa("sleep"), Duration::from_secs(60))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CSR: no CERTIFICATE REQUEST block"),
        "{err}"
    );
    let err = ca
        .sign_csr(
            &csr,
            &id("spiffe://other.td/ns/a/sa/b"),
            Duration::from_secs(60),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CA for trust domain \"cluster.local\" cannot sign spiffe://other.td/ns/a/sa/b: other trust domain"
    );
    assert!(matches!(
        ca.sign_csr(&csr, &sa("sleep"), Duration::ZERO),
        Err(Error::ZeroTtl)
    ));
}

#[test]
fn ttl_is_capped() {
    let ca = CertificateAuthority::generate("cluster.local")
        .unwrap()
        .with_max_ttl(Duration::from_secs(3600));
    let csr = CsrAndKey::generate(&sa("sleep")).unwrap().csr_pem;
    let chain = ca
        .sign_csr(&csr, &sa("sleep"), Duration::from_secs(48 * 3600))
        .unwrap();
    let v = parse(chain.leaf()).validity().clone();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        3600 + 60
    );
}

#[test]
fn persisted_root_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("cacerts");
    let first = CertificateAuthority::load_or_generate(&ca_dir, "cluster.local").unwrap();
    let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for file in [CA_CERT_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        let text = std::fs::read_to_string(ca_dir.join(file)).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"), "{file}");
    }

    let again = CertificateAuthority::load_or_generate(&ca_dir, "cluster.local").unwrap();
    assert_eq!(again.roots(), first.roots());
    assert_eq!(again.signing_certificate(), first.signing_certificate());
    assert!(again.is_self_signed());
    assert_eq!(
        again.roots_pem(),
        std::fs::read_to_string(ca_dir.join(ROOT_CERT_FILE)).unwrap()
    );

    // The reloaded key signs leaves that the first instance's roots accept.
    let made = CsrAndKey::generate(&sa("sleep")).unwrap();
    let chain = again
        .sign_csr(&made.csr_pem, &sa("sleep"), Duration::from_secs(3600))
        .unwrap();
    let reissued = CertChain::new(chain.leaf().clone(), vec![], first.roots().to_vec()).unwrap();
    WorkloadCertificate::new(&sa("sleep"), made.key, reissued).unwrap();
}

/// An Istio-style plug-in CA: a P-384 root and an RSA intermediate that signs.
struct PlugIn {
    root: rcgen::Certificate,
    intermediate: rcgen::Certificate,
    intermediate_key: KeyPair,
}

fn plug_in() -> PlugIn {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut root_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Istio");
    dn.push(DnType::CommonName, "Root CA");
    root_params.distinguished_name = dn;
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);

    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Istio");
    dn.push(DnType::CommonName, "Intermediate CA");
    dn.push(DnType::LocalityName, "cluster1");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    let intermediate = params.signed_by(&key, &root_issuer).unwrap();
    PlugIn {
        root,
        intermediate,
        intermediate_key: key,
    }
}

fn write_cacerts(dir: &std::path::Path, p: &PlugIn) {
    std::fs::write(dir.join(CA_CERT_FILE), p.intermediate.pem()).unwrap();
    std::fs::write(dir.join(CA_KEY_FILE), p.intermediate_key.serialize_pem()).unwrap();
    std::fs::write(dir.join(ROOT_CERT_FILE), p.root.pem()).unwrap();
    // Istio's samples: cert-chain.pem = ca-cert.pem followed by root-cert.pem.
    std::fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{}{}", p.intermediate.pem(), p.root.pem()),
    )
    .unwrap();
}

#[test]
fn plug_in_cacerts_with_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let p = plug_in();
    write_cacerts(dir.path(), &p);

    let ca = CertificateAuthority::load(dir.path(), "cluster.local").unwrap();
    assert!(!ca.is_self_signed());
    assert_eq!(ca.roots(), [p.root.der().clone()]);
    let made = CsrAndKey::generate(&sa("httpbin")).unwrap();
    let chain = ca
        .sign_csr(&made.csr_pem, &sa("httpbin"), Duration::from_secs(3600))
        .unwrap();
    assert_eq!(chain.intermediates(), [p.intermediate.der().clone()]);
    assert_eq!(chain.roots(), [p.root.der().clone()]);
    let leaf = parse(chain.leaf());
    assert_eq!(
        leaf.issuer().to_string(),
        "O=Istio, CN=Intermediate CA, L=cluster1"
    );
    assert_eq!(
        general_names(&leaf),
        vec!["URI:spiffe://cluster.local/ns/default/sa/httpbin"]
    );

    // The chain verifies leaf -> intermediate -> root, and survives the CreateCertificate PEM list.
    let list = chain.to_pem_list();
    assert_eq!(list.len(), 3);
    let back = CertChain::from_pem_list(&list).unwrap();
    assert_eq!(back, chain);
    let cert = WorkloadCertificate::new(&sa("httpbin"), made.key, back).unwrap();
    assert_eq!(
        cert.certified_key().cert.len(),
        2,
        "leaf and intermediate are presented"
    );

    // Persisting a plugged CA and loading it back gives the same CA.
    let copy = tempfile::tempdir().unwrap();
    ca.persist(copy.path()).unwrap();
    let reloaded = CertificateAuthority::load(copy.path(), "cluster.local").unwrap();
    assert_eq!(reloaded.roots(), ca.roots());
    assert_eq!(reloaded.signing_certificate(), ca.signing_certificate());
}

#[test]
fn broken_cacerts_say_what_is_wrong() {
    let p = plug_in();

    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), &p);
    std::fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let err = CertificateAuthority::load(dir.path(), "cluster.local").unwrap_err();
    assert!(
        err.to_string().contains("root-cert.pem: No such file"),
        "{err}"
    );

    // cert-chain.pem is optional.
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), &p);
    std::fs::remove_file(dir.path().join(CERT_CHAIN_FILE)).unwrap();
    CertificateAuthority::load(dir.path(), "cluster.local").unwrap();

    // A key that is not ca-cert.pem's.
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), &p);
    std::fs::write(
        dir.path().join(CA_KEY_FILE),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = CertificateAuthority::load(dir.path(), "cluster.local").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("ca-cert.pem: does not match the key in ca-key.pem"),
        "{err}"
    );

    // A root that did not sign the intermediate.
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), &p);
    let other = CertificateAuthority::generate("cluster.local").unwrap();
    std::fs::write(dir.path().join(ROOT_CERT_FILE), other.roots_pem()).unwrap();
    std::fs::write(dir.path().join(CERT_CHAIN_FILE), p.intermediate.pem()).unwrap();
    let err = CertificateAuthority::load(dir.path(), "cluster.local").unwrap_err();
    assert!(
        err.to_string()
            .contains("a leaf it signs does not verify against root-cert.pem"),
        "{err}"
    );

    // A leaf is no CA.
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let made = CsrAndKey::generate(&sa("sleep")).unwrap();
    let chain = ca
        .sign_csr(&made.csr_pem, &sa("sleep"), Duration::from_secs(60))
        .unwrap();
    std::fs::write(dir.path().join(CA_CERT_FILE), &chain.to_pem_list()[0]).unwrap();
    std::fs::write(dir.path().join(CA_KEY_FILE), made.key.to_pem()).unwrap();
    std::fs::write(dir.path().join(ROOT_CERT_FILE), ca.roots_pem()).unwrap();
    let err = CertificateAuthority::load(dir.path(), "cluster.local").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("ca-cert.pem: not a CA certificate (no basicConstraints CA:TRUE)"),
        "{err}"
    );

    // Errors about keys never quote them.
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), &p);
    std::fs::write(
        dir.path().join(CA_KEY_FILE),
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = CertificateAuthority::load(dir.path(), "cluster.local").unwrap_err();
    assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
}

#[test]
fn workload_certificate_checks_what_it_is_given() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let made = CsrAndKey::generate(&sa("sleep")).unwrap();
    let chain = ca
        .sign_csr(&made.csr_pem, &sa("sleep"), Duration::from_secs(3600))
        .unwrap();

    let err =
        WorkloadCertificate::new(&sa("httpbin"), made.key.clone(), chain.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "issued certificate is for spiffe://cluster.local/ns/default/sa/sleep, expected spiffe://cluster.local/ns/default/sa/httpbin"
    );
    let other_key = PrivateKey::generate_p256().unwrap();
    assert!(WorkloadCertificate::new(&sa("sleep"), other_key, chain.clone()).is_err());
    let foreign = CertificateAuthority::generate("cluster.local").unwrap();
    let wrong_root =
        CertChain::new(chain.leaf().clone(), vec![], foreign.roots().to_vec()).unwrap();
    assert!(WorkloadCertificate::new(&sa("sleep"), made.key.clone(), wrong_root).is_err());

    let cert = WorkloadCertificate::new(&sa("sleep"), made.key, chain).unwrap();
    let shown = format!("{cert:?}");
    assert!(
        shown.contains("PrivateKey([redacted])") && shown.contains(&cert.serial_hex()),
        "{shown}"
    );
    assert_eq!(cert.serial().len(), 16);
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}
