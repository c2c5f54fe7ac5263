//! The building blocks of object validation: a list of problems found so far, each with the
//! path of its field, and the checks Istio's and Kubernetes' validators share (ports, weights,
//! percentages, label selectors, host names, IP addresses and ranges).
//!
//! A check never stops at the first problem: it records it and goes on, so the user sees every
//! mistake of a document at once. Paths are written as in the YAML: `spec.http[0].route[1].weight`.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The problems found in one object, in the order found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems {
    list: Vec<Problem>,
}

/// One problem: the path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field (`spec.http[0].route[1].weight`); empty for the whole object.
    pub field: String,
    /// What is wrong, quoting the value where that helps.
    pub message: String,
}

impl Problems {
    /// Records a problem with `field`.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems, in order.
    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }

    /// Checks that a port number is 1..65535.
    pub fn port(&mut self, field: impl Into<String>, port: u32) {
        if !(1..=65535).contains(&port) {
            self.add(field, format!("{port} is not a port: must be 1..65535"));
        }
    }

    /// Checks that a percentage is 0..100.
    pub fn percent(&mut self, field: impl Into<String>, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.add(field, format!("{value} must be 0..100 (a percentage)"));
        }
    }

    /// Checks that a regular expression compiles. Istio's validation compiles RE2; the `regex`
    /// crate's syntax is RE2's (no back-references, no look-around), so what it refuses Envoy
    /// would refuse too.
    pub fn regex(&mut self, field: impl Into<String>, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let first = e.to_string();
            let reason = first.lines().last().unwrap_or("invalid").trim().to_string();
            self.add(
                field,
                format!("\"{re}\" is not a regular expression (RE2 syntax): {reason}"),
            );
        }
    }

    /// Checks that a count is not negative.
    pub fn non_negative(&mut self, field: impl Into<String>, value: i64) {
        if value < 0 {
            self.add(field, format!("{value} must be 0 or more"));
        }
    }

    /// Checks the labels of a selector (`matchLabels`, Istio's `selector`): valid Kubernetes
    /// label keys and values, and no wildcard.
    pub fn selector_labels(&mut self, field: &str, labels: &BTreeMap<String, String>) {
        for (key, value) in labels {
            let at = format!("{field}[\"{key}\"]");
            if let Err(m) = label_key(key) {
                self.add(at.clone(), m);
            }
            if value.contains('*') {
                self.add(
                    at,
                    format!("\"{value}\": wildcards are not allowed in selectors"),
                );
            } else if let Err(m) = label_value(value) {
                self.add(at, m);
            }
        }
    }

    /// Checks a host name of Istio config: a DNS name, optionally starting with the wildcard
    /// `*.`, or `*` alone.
    pub fn host(&mut self, field: impl Into<String>, host: &str) {
        if let Err(m) = wildcard_host(host) {
            self.add(field, m);
        }
    }
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of `[A-Za-z0-9._-]` starting and ending with a letter or digit.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || dns_name(prefix, false).is_err())
    {
        return Err(format!(
            "\"{key}\" is not a label key: the prefix must be a DNS subdomain"
        ));
    }
    if name.is_empty() || label_value(name).is_err() {
        return Err(format!(
            "\"{key}\" is not a label key: the name must be 1 to 63 letters, digits, '-', '_' or \
             '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 characters of `[A-Za-z0-9._-]` starting and
/// ending with a letter or digit.
pub fn label_value(value: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "\"{value}\" is not a label value: at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        )
    };
    if value.is_empty() {
        return Ok(());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let first_last_ok = value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if value.len() > 63 || !value.chars().all(ok_char) || !first_last_ok {
        return Err(bad());
    }
    Ok(())
}

/// Checks a DNS name (RFC 1123 labels, dots between them); with `allow_upper`, upper-case
/// letters are accepted too.
pub fn dns_name(name: &str, allow_upper: bool) -> Result<(), String> {
    let bad = |why: &str| format!("\"{name}\" is not a DNS name: {why}");
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let name_only = name.strip_suffix('.').unwrap_or(name);
    for label in name_only.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label must be 1 to 63 characters"));
        }
        let ok = label.chars().all(|c| {
            c.is_ascii_digit()
                || c == '-'
                || c.is_ascii_lowercase()
                || (allow_upper && c.is_ascii_uppercase())
        });
        if !ok || label.starts_with('-') || label.ends_with('-') {
            return Err(bad(
                "labels hold letters, digits and '-', and do not start or end with '-'",
            ));
        }
    }
    Ok(())
}

/// Checks a host of Istio config: `*`, `*.example.com` or a DNS name. Istio allows upper case
/// (it matches case-insensitively).
pub fn wildcard_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.contains('*') {
        return Err(format!(
            "\"{host}\": a wildcard is allowed only as the first label (\"*.example.com\")"
        ));
    }
    dns_name(rest, true).map_err(|_| {
        format!("\"{host}\" is not a host name (a DNS name, \"*.\" followed by one, or \"*\")")
    })
}

/// Checks an IP address or CIDR range (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
pub fn ip_or_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("\"{s}\" is not an IP address or CIDR range");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if let Some(prefix) = prefix {
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > if addr.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
    }
    Ok(())
}

/// `[namespace/]name`, the way Istio refers to a Gateway, or `mesh` for the sidecars.
pub fn gateway_ref(name: &str) -> Result<(), String> {
    let bad = || {
        format!("\"{name}\" is not a gateway reference (\"mesh\", \"name\" or \"namespace/name\")")
    };
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        [n] if dns_name(n, false).is_ok() => Ok(()),
        [ns, n] if dns_name(ns, false).is_ok() && dns_name(n, false).is_ok() => Ok(()),
        _ => Err(bad()),
    }
}

/// `namespace/host` as Sidecar egress and Gateway servers write it: the namespace is a name,
/// `*` (any), `.` (this one) or `~` (none, for Sidecar only); the host is a [`wildcard_host`].
pub fn namespaced_host(s: &str) -> Result<(), String> {
    let Some((ns, host)) = s.split_once('/') else {
        return Err(format!(
            "\"{s}\" must be namespace/host (\"*/\", \"./\" or a namespace, then a host)"
        ));
    };
    if !matches!(ns, "*" | "." | "~") && dns_name(ns, false).is_err() {
        return Err(format!(
            "\"{s}\": \"{ns}\" is not a namespace (a name, \"*\", \".\" or \"~\")"
        ));
    }
    wildcard_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(label_key("app").is_ok());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("-app").is_err());
        assert!(label_key("a/b/").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("v1 ").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn hosts_and_addresses() {
        assert!(wildcard_host("*").is_ok());
        assert!(wildcard_host("*.example.com").is_ok());
        assert!(wildcard_host("reviews").is_ok());
        assert!(wildcard_host("Reviews.default.svc.cluster.local").is_ok());
        assert!(wildcard_host("a.*.com").is_err());
        assert!(wildcard_host("bad_host").is_err());
        assert!(ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(ip_or_cidr("::1").is_ok());
        assert!(ip_or_cidr("10.0.0.0/33").is_err());
        assert!(gateway_ref("mesh").is_ok());
        assert!(gateway_ref("istio-system/ingress").is_ok());
        assert!(gateway_ref("a/b/c").is_err());
        assert!(namespaced_host("./*").is_ok());
        assert!(namespaced_host("istio-system/*.example.com").is_ok());
        assert!(namespaced_host("example.com").is_err());
    }
}
