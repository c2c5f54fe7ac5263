//! AuthorizationPolicy: which requests a workload allows or denies (Istio's
//! `authorization_policy.proto`).

use serde::Deserialize;

use crate::check::{Problems, ip_or_cidr};
use crate::networking::WorkloadSelector;

/// The spec of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads it applies to (the namespace, or the mesh in the root namespace, when unset).
    pub selector: Option<WorkloadSelector>,
    /// A resource it applies to instead of a selector (a Gateway API reference).
    pub target_ref: Option<PolicyTargetReference>,
    /// Several such resources.
    pub target_refs: Vec<PolicyTargetReference>,
    /// Requests that match (any rule). No rules: nothing matches (DENY) or nothing is allowed
    /// (ALLOW).
    pub rules: Vec<Rule>,
    /// What to do with a match (ALLOW when unset).
    pub action: Option<Action>,
    /// The external authorizer of a CUSTOM action.
    pub provider: Option<ExtensionProvider>,
}

/// A reference to the resource a policy is attached to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group.
    pub group: String,
    /// Kind. Required.
    pub kind: String,
    /// Name. Required.
    pub name: String,
    /// Namespace (the policy's).
    pub namespace: String,
}

/// An external authorizer, by its name in the MeshConfig.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name of a MeshConfig extension provider.
    pub name: String,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests.
    Allow,
    /// Deny matching requests.
    Deny,
    /// Log matching requests.
    Audit,
    /// Ask the external authorizer.
    Custom,
}

/// A rule: sources AND operations AND conditions; within each list, any item.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Who sends the request.
    pub from: Vec<From>,
    /// What the request does.
    pub to: Vec<To>,
    /// Further conditions.
    pub when: Vec<Condition>,
}

/// A source clause.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    /// The source. Required.
    pub source: Option<Source>,
}

/// An operation clause.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    /// The operation. Required.
    pub operation: Option<Operation>,
}

/// Properties of the sender; all set fields must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (`cluster.local/ns/default/sa/sleep`).
    pub principals: Vec<String>,
    /// Identities that must not match.
    pub not_principals: Vec<String>,
    /// Request identities (`iss/sub` of a JWT).
    pub request_principals: Vec<String>,
    /// Request identities that must not match.
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    pub not_namespaces: Vec<String>,
    /// Peer addresses (IPs or CIDRs).
    pub ip_blocks: Vec<String>,
    /// Addresses that must not match.
    pub not_ip_blocks: Vec<String>,
    /// Original client addresses (X-Forwarded-For).
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that must not match.
    pub not_remote_ip_blocks: Vec<String>,
}

/// Properties of the request; all set fields must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (`Host` header).
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings.
    pub ports: Vec<String>,
    /// Ports that must not match.
    pub not_ports: Vec<String>,
    /// Methods.
    pub methods: Vec<String>,
    /// Methods that must not match.
    pub not_methods: Vec<String>,
    /// Paths (exact, `prefix*`, `*suffix` or `*`).
    pub paths: Vec<String>,
    /// Paths that must not match.
    pub not_paths: Vec<String>,
}

/// A condition on an attribute of the request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute (`source.ip`, `request.headers[x-user]` …). Required.
    pub key: String,
    /// Values that match.
    pub values: Vec<String>,
    /// Values that must not match.
    pub not_values: Vec<String>,
}

/// The attributes a condition can test (besides `request.headers[NAME]` and
/// `experimental.envoy.filters.*`).
const CONDITION_KEYS: [&str; 13] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "source.serviceAccount",
    "request.auth.claims",
    "request.headers",
];

impl AuthorizationPolicy {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if let Some(s) = &self.selector {
            p.selector_labels(&format!("{at}.selector.matchLabels"), &s.match_labels);
        }
        if self.selector.is_some() && (self.target_ref.is_some() || !self.target_refs.is_empty()) {
            p.add(at, "selector and targetRef exclude each other: set one");
        }
        for (i, t) in self.target_ref.iter().chain(&self.target_refs).enumerate() {
            let at = if self.target_ref.is_some() && i == 0 {
                format!("{at}.targetRef")
            } else {
                let i = i - usize::from(self.target_ref.is_some());
                format!("{at}.targetRefs[{i}]")
            };
            if t.kind.is_empty() {
                p.add(
                    format!("{at}.kind"),
                    "missing: a target reference needs a kind",
                );
            }
            if t.name.is_empty() {
                p.add(
                    format!("{at}.name"),
                    "missing: a target reference needs a name",
                );
            }
        }
        let action = self.action.unwrap_or(Action::Allow);
        match (action, &self.provider) {
            (Action::Custom, None) => p.add(
                format!("{at}.provider"),
                "missing: a CUSTOM action needs a provider",
            ),
            (Action::Custom, Some(pr)) if pr.name.is_empty() => p.add(
                format!("{at}.provider.name"),
                "missing: a provider needs a name",
            ),
            (Action::Custom, Some(_)) | (_, None) => {}
            (_, Some(_)) => p.add(
                format!("{at}.provider"),
                "only a CUSTOM action has a provider",
            ),
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rules[{i}]");
            for (j, f) in rule.from.iter().enumerate() {
                let at = format!("{at}.from[{j}]");
                match &f.source {
                    None => p.add(
                        format!("{at}.source"),
                        "missing: a from clause needs a source",
                    ),
                    Some(s) => s.validate(&format!("{at}.source"), p),
                }
            }
            for (j, t) in rule.to.iter().enumerate() {
                let at = format!("{at}.to[{j}]");
                match &t.operation {
                    None => p.add(
                        format!("{at}.operation"),
                        "missing: a to clause needs an operation",
                    ),
                    Some(o) => o.validate(&format!("{at}.operation"), p),
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                c.validate(&format!("{at}.when[{j}]"), p);
            }
        }
    }
}

impl Source {
    fn validate(&self, at: &str, p: &mut Problems) {
        if self == &Source::default() {
            p.add(at, "must set at least one field");
        }
        for (name, list) in [
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ] {
            for (k, ip) in list.iter().enumerate() {
                if let Err(m) = ip_or_cidr(ip) {
                    p.add(format!("{at}.{name}[{k}]"), m);
                }
            }
        }
        for (name, list) in [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
        ] {
            for (k, v) in list.iter().enumerate() {
                if v.is_empty() {
                    p.add(format!("{at}.{name}[{k}]"), "must not be empty");
                }
            }
        }
    }
}

impl Operation {
    fn validate(&self, at: &str, p: &mut Problems) {
        if self == &Operation::default() {
            p.add(at, "must set at least one field");
        }
        for (name, list) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            for (k, port) in list.iter().enumerate() {
                match port.parse::<u32>() {
                    Ok(n) => p.port(format!("{at}.{name}[{k}]"), n),
                    Err(_) => p.add(
                        format!("{at}.{name}[{k}]"),
                        format!("\"{port}\" is not a port: must be 1..65535"),
                    ),
                }
            }
        }
        for (name, list) in [("paths", &self.paths), ("notPaths", &self.not_paths)] {
            for (k, path) in list.iter().enumerate() {
                if path.is_empty() {
                    p.add(format!("{at}.{name}[{k}]"), "must not be empty");
                }
            }
        }
    }
}

impl Condition {
    fn validate(&self, at: &str, p: &mut Problems) {
        if self.key.is_empty() {
            p.add(format!("{at}.key"), "missing: a condition needs a key");
        } else {
            let base = self
                .key
                .split_once('[')
                .map_or(self.key.as_str(), |(b, _)| b);
            let known = CONDITION_KEYS.contains(&base)
                || self.key.starts_with("experimental.envoy.filters.");
            let bracketed = matches!(base, "request.headers" | "request.auth.claims");
            if !known || (bracketed && !(self.key.contains('[') && self.key.ends_with(']'))) {
                p.add(
                    format!("{at}.key"),
                    format!(
                        "\"{}\" is not a condition key (such as source.ip, \
                         request.headers[NAME] or request.auth.claims[NAME])",
                        self.key
                    ),
                );
            }
            if matches!(base, "source.ip" | "remote.ip" | "destination.ip") {
                for (name, list) in [("values", &self.values), ("notValues", &self.not_values)] {
                    for (k, v) in list.iter().enumerate() {
                        if let Err(m) = ip_or_cidr(v) {
                            p.add(format!("{at}.{name}[{k}]"), m);
                        }
                    }
                }
            }
            if base == "destination.port" {
                for (name, list) in [("values", &self.values), ("notValues", &self.not_values)] {
                    for (k, v) in list.iter().enumerate() {
                        if !v.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)) {
                            p.add(
                                format!("{at}.{name}[{k}]"),
                                format!("\"{v}\" is not a port: must be 1..65535"),
                            );
                        }
                    }
                }
            }
        }
        if self.values.is_empty() && self.not_values.is_empty() {
            p.add(at, "needs values or notValues");
        }
    }
}
