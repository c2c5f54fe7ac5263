//! SPIFFE ids of mesh workloads, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! and reading them out of X.509-SVIDs.
//!
//! The grammar is the SPIFFE spec's (trust domain of lowercase letters, digits, `.`, `-`, `_`;
//! path segments of letters, digits, `.`, `-`, `_`, neither `.` nor `..`; at most 2048 bytes)
//! narrowed to Istio's Kubernetes shape: the path is exactly `/ns/<namespace>/sa/<account>`.
//! Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

use crate::Error;

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The identity of a mesh workload: its trust domain, Kubernetes namespace and service account.
///
/// Always valid once built ([`SpiffeId::new`], [`SpiffeId::parse`] or [`FromStr`]); displays as
/// the URI `spiffe://cluster.local/ns/default/sa/default`. Cheap to clone (three short strings);
/// compares and hashes component-wise.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an id from its parts, validating each as [`SpiffeId::parse`] would.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let input = || id.to_string();
        check_trust_domain(&id.trust_domain).map_err(|kind| SpiffeIdError::new(input(), kind))?;
        check_segment("namespace", &id.namespace)
            .map_err(|kind| SpiffeIdError::new(input(), kind))?;
        check_segment("service account", &id.service_account)
            .map_err(|kind| SpiffeIdError::new(input(), kind))?;
        if input().len() > MAX_ID_LEN {
            return Err(SpiffeIdError::new(input(), SpiffeIdErrorKind::TooLong));
        }
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    ///
    /// The error says which part is wrong and why. The scheme is matched case-insensitively (URI
    /// schemes are); everything else must already be in canonical form.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let err = |kind| SpiffeIdError::new(input.to_string(), kind);
        if input.len() > MAX_ID_LEN {
            return Err(err(SpiffeIdErrorKind::TooLong));
        }
        let rest = match input.get(..SCHEME.len()) {
            Some(scheme) if scheme.eq_ignore_ascii_case(SCHEME) => &input[SCHEME.len()..],
            _ => return Err(err(SpiffeIdErrorKind::MissingScheme)),
        };
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(trust_domain).map_err(err)?;
        let parts: Vec<&str> = path.split('/').collect();
        let (namespace, service_account) = match parts.as_slice() {
            ["", "ns", ns, "sa", sa] => (*ns, *sa),
            _ => {
                return Err(err(SpiffeIdErrorKind::Path {
                    path: path.to_string(),
                }));
            }
        };
        check_segment("namespace", namespace).map_err(err)?;
        check_segment("service account", service_account).map_err(err)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Reads the id from the single `spiffe://` URI SAN of a DER X.509 certificate (an
    /// X.509-SVID). Other SANs are ignored; none or several `spiffe://` URIs is an error.
    ///
    /// Costs one X.509 parse; no signature or validity check (that is the verifier's job).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::certificate("certificate", e))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::certificate("certificate", format!("subjectAltName: {e}")))?;
        let uris: Vec<&str> = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .filter(|uri| {
                        uri.get(..SCHEME.len())
                            .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [] => Err(Error::NoSpiffeId),
            [uri] => Ok(SpiffeId::parse(uri)?),
            many => Err(Error::MultipleSpiffeIds(many.len())),
        }
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace, e.g. `default`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account, e.g. `default`.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        SpiffeId::parse(s)
    }
}

/// Why a string is not a valid mesh SPIFFE id; displays as
/// `invalid SPIFFE id "spiffe://Cluster.local/…": trust domain "Cluster.local" has 'C' …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE id {input:?}: {kind}")]
pub struct SpiffeIdError {
    input: String,
    kind: SpiffeIdErrorKind,
}

impl SpiffeIdError {
    fn new(input: String, kind: SpiffeIdErrorKind) -> Self {
        SpiffeIdError { input, kind }
    }

    /// The text that was refused.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &SpiffeIdErrorKind {
        &self.kind
    }
}

/// What is wrong with a SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdErrorKind {
    /// It does not start with `spiffe://`.
    #[error("must start with \"spiffe://\"")]
    MissingScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// The trust domain has a character outside `[a-z0-9._-]` (uppercase, port, user info …).
    #[error(
        "trust domain {trust_domain:?} has {ch:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar {
        /// The trust domain as given.
        trust_domain: String,
        /// The first offending character.
        ch: char,
    },
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("path must be /ns/<namespace>/sa/<service-account>, got {path:?}")]
    Path {
        /// The path as given (empty when missing).
        path: String,
    },
    /// The namespace or service account is empty.
    #[error("{field} is empty")]
    EmptySegment {
        /// `namespace` or `service account`.
        field: &'static str,
    },
    /// The namespace or service account has a character outside `[A-Za-z0-9._-]`.
    #[error("{field} {value:?} has {ch:?}; only letters, digits, '.', '-' and '_' are allowed")]
    SegmentChar {
        /// `namespace` or `service account`.
        field: &'static str,
        /// The segment as given.
        value: String,
        /// The first offending character.
        ch: char,
    },
    /// The namespace or service account is `.` or `..`.
    #[error("{field} must not be \".\" or \"..\"")]
    DotSegment {
        /// `namespace` or `service account`.
        field: &'static str,
    },
    /// The whole id is longer than 2048 bytes.
    #[error("longer than 2048 bytes")]
    TooLong,
}

/// Checks a bare trust domain (as a CA is configured with), with the same rules as in an id.
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    check_trust_domain(td).map_err(|kind| SpiffeIdError::new(td.to_string(), kind))
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdErrorKind> {
    if td.is_empty() {
        return Err(SpiffeIdErrorKind::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdErrorKind::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(ch) => Err(SpiffeIdErrorKind::TrustDomainChar {
            trust_domain: td.to_string(),
            ch,
        }),
        None => Ok(()),
    }
}

fn check_segment(field: &'static str, value: &str) -> Result<(), SpiffeIdErrorKind> {
    if value.is_empty() {
        return Err(SpiffeIdErrorKind::EmptySegment { field });
    }
    if value == "." || value == ".." {
        return Err(SpiffeIdErrorKind::DotSegment { field });
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(ch) => Err(SpiffeIdErrorKind::SegmentChar {
            field,
            value: value.to_string(),
            ch,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(input: &str) -> SpiffeIdErrorKind {
        SpiffeId::parse(input).expect_err(input).kind().clone()
    }

    #[test]
    fn parses_and_displays_istio_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/default").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "default");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
        assert_eq!(
            format!("{id:?}"),
            "SpiffeId(spiffe://cluster.local/ns/default/sa/default)"
        );

        let id: SpiffeId = "SPIFFE://td_1.example-2/ns/istio-system/sa/istio.ingress_gw"
            .parse()
            .unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://td_1.example-2/ns/istio-system/sa/istio.ingress_gw"
        );
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "sleep")
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(
            kind("http://cluster.local/ns/a/sa/b"),
            SpiffeIdErrorKind::MissingScheme
        );
        assert_eq!(
            kind("cluster.local/ns/a/sa/b"),
            SpiffeIdErrorKind::MissingScheme
        );
        assert_eq!(kind("spiffe:/"), SpiffeIdErrorKind::MissingScheme);
        assert_eq!(
            kind("spiffe:///ns/a/sa/b"),
            SpiffeIdErrorKind::EmptyTrustDomain
        );
        assert_eq!(
            kind("spiffe://Cluster.local/ns/a/sa/b"),
            SpiffeIdErrorKind::TrustDomainChar {
                trust_domain: "Cluster.local".into(),
                ch: 'C'
            }
        );
        assert_eq!(
            kind("spiffe://td:8080/ns/a/sa/b"),
            SpiffeIdErrorKind::TrustDomainChar {
                trust_domain: "td:8080".into(),
                ch: ':'
            }
        );
        assert_eq!(
            kind("spiffe://td"),
            SpiffeIdErrorKind::Path { path: "".into() }
        );
        assert_eq!(
            kind("spiffe://td/"),
            SpiffeIdErrorKind::Path { path: "/".into() }
        );
        assert_eq!(
            kind("spiffe://td/ns/a/sa/b/"),
            SpiffeIdErrorKind::Path {
                path: "/ns/a/sa/b/".into()
            }
        );
        assert_eq!(
            kind("spiffe://td/sa/b/ns/a"),
            SpiffeIdErrorKind::Path {
                path: "/sa/b/ns/a".into()
            }
        );
        assert_eq!(
            kind("spiffe://td/ns//sa/b"),
            SpiffeIdErrorKind::EmptySegment { field: "namespace" }
        );
        assert_eq!(
            kind("spiffe://td/ns/a/sa/"),
            SpiffeIdErrorKind::EmptySegment {
                field: "service account"
            }
        );
        assert_eq!(
            kind("spiffe://td/ns/../sa/b"),
            SpiffeIdErrorKind::DotSegment { field: "namespace" }
        );
        assert_eq!(
            kind("spiffe://td/ns/a/sa/b?x=1"),
            SpiffeIdErrorKind::SegmentChar {
                field: "service account",
                value: "b?x=1".into(),
                ch: '?'
            }
        );
        assert_eq!(
            kind("spiffe://td/ns/a%20/sa/b"),
            SpiffeIdErrorKind::SegmentChar {
                field: "namespace",
                value: "a%20".into(),
                ch: '%'
            }
        );
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2048));
        assert_eq!(kind(&long), SpiffeIdErrorKind::TooLong);
        let long_td = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
        assert_eq!(kind(&long_td), SpiffeIdErrorKind::TrustDomainTooLong);
        assert_eq!(
            SpiffeId::new("td", "a/b", "c").unwrap_err().kind(),
            &SpiffeIdErrorKind::SegmentChar {
                field: "namespace",
                value: "a/b".into(),
                ch: '/'
            }
        );
    }

    #[test]
    fn error_text_names_input_and_reason() {
        let err = SpiffeId::parse("spiffe://Cluster.local/ns/a/sa/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SPIFFE id \"spiffe://Cluster.local/ns/a/sa/b\": trust domain \"Cluster.local\" \
             has 'C'; only lowercase letters, digits, '.', '-' and '_' are allowed"
        );
        let err = SpiffeId::parse("spiffe://td/ns/a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SPIFFE id \"spiffe://td/ns/a\": path must be /ns/<namespace>/sa/<service-account>, got \"/ns/a\""
        );
    }

    #[test]
    fn non_ascii_input_does_not_panic() {
        assert_eq!(
            kind("spïffe://td/ns/a/sa/b"),
            SpiffeIdErrorKind::MissingScheme
        );
        assert!(matches!(
            kind("spiffe://tdé/ns/a/sa/b"),
            SpiffeIdErrorKind::TrustDomainChar { ch: 'é', .. }
        ));
    }
}
