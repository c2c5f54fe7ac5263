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

impl Action {
    /// The name as written (`ALLOW`).
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
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
    /// Peer service accounts, `namespace/name` or `name` (in the policy's namespace), from the
    /// peer identity (Istio 1.24). Exclude `principals` and `namespaces`.
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    pub not_service_accounts: Vec<String>,
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

/// The attributes a condition can test (besides the bracketed ones, [`MAP_KEYS`]), as Istio's
/// validation (`security.ValidateAttribute`) accepts them.
const CONDITION_KEYS: [&str; 11] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// The attributes written `NAME[KEY]`: request headers, JWT claims, and Envoy's filter metadata.
const MAP_KEYS: [&str; 3] = [
    "request.headers",
    "request.auth.claims",
    EXPERIMENTAL_KEY_PREFIX,
];

/// The annotation that makes an AuthorizationPolicy a dry run: evaluated, counted and logged,
/// never enforced (Istio's `istio.io/dry-run`).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The dry-run annotation's value as pilot reads it (Go's `strconv.ParseBool`, so case matters:
/// `True` is true, `tRUE` is no boolean); `None` for a value Istio's validation rejects (pilot,
/// were it to see one, would enforce the policy).
pub fn parse_dry_run(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Whether a policy with `annotations` and `action` is a dry run on the sidecars: the annotation
/// reads true and the action is ALLOW or DENY (Istio's validation rejects it on the others;
/// Ama enforces them, which for CUSTOM denies more than written).
pub fn is_dry_run(
    annotations: &std::collections::BTreeMap<String, String>,
    action: Action,
) -> bool {
    matches!(action, Action::Allow | Action::Deny)
        && annotations
            .get(DRY_RUN_ANNOTATION)
            .and_then(|v| parse_dry_run(v))
            == Some(true)
}

/// The prefix of the condition keys that read Envoy's dynamic filter metadata
/// (`experimental.envoy.filters.network.mysql_proxy[db.table]`): nothing in Ama sets any, so Ama
/// cannot evaluate them.
pub const EXPERIMENTAL_KEY_PREFIX: &str = "experimental.envoy.filters.";

/// Whether Ama's proxy evaluates a condition on `key`, a key Istio's validation accepts: every
/// one but `experimental.envoy.filters.*`.
pub fn condition_key_evaluated(key: &str) -> bool {
    !key.starts_with(EXPERIMENTAL_KEY_PREFIX)
}

/// What a rule becomes when Ama cannot evaluate part of it, by action (see
/// [`AuthorizationPolicy::unevaluable`]).
pub fn unevaluable_consequence(action: Action) -> &'static str {
    match action {
        Action::Allow => "in this ALLOW policy the rule allows nothing",
        Action::Deny => {
            "in this DENY policy the condition is taken as matching: the rule denies more than \
             written"
        }
        Action::Custom => {
            "in this CUSTOM policy the condition is taken as matching: the rule denies more than \
             written"
        }
        Action::Audit => "in this AUDIT policy the rule logs nothing",
    }
}

/// A part of a rule that Ama cannot evaluate (see [`AuthorizationPolicy::unevaluable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unevaluable {
    /// Index of the rule in `rules`.
    pub rule: usize,
    /// Path of the field under `spec` (`rules[0].when[1].key`).
    pub field: String,
    /// What it is (`key experimental.envoy.filters.a[b]`).
    pub what: String,
}

/// The `NAME[KEY]` form of a bracketed key with attribute `base` (Istio's `validateMapKey`):
/// `base`, then `[`, at least one character, and `]` at the end. Headers and claims take the
/// bracket right after their name and no empty `[]` (nested claims: `request.auth.claims[a][b]`),
/// as the proxy reads them; Envoy's filter metadata keys go on with the filter's name.
fn map_key_well_formed(base: &str, key: &str) -> bool {
    let well_formed = key
        .find('[')
        .is_some_and(|open| open > 0 && open + 2 < key.len() && key.ends_with(']'));
    let rest = &key[base.len()..];
    well_formed
        && (base == EXPERIMENTAL_KEY_PREFIX || (rest.starts_with('[') && !rest.contains("[]")))
}

/// Checks a path of `to.operation.paths` as Istio's `CheckValidPathTemplate` does: `{*}` and
/// `{**}` are whole segments, `{**}` the last operator, and no other `{` or `}`.
fn path_template(path: &str) -> Result<(), String> {
    let mut any_seen = false;
    for segment in path.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if any_seen => {
                return Err(format!(
                    "\"{path}\": {{**}} must be the last operator of a path template"
                ));
            }
            "{*}" => {}
            "{**}" => any_seen = true,
            s if s.contains(['{', '}']) => {
                return Err(format!(
                    "\"{path}\": '{{' and '}}' are allowed only in the operators {{*}} and {{**}}, \
                     each a whole segment"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The target kinds Istio's validation accepts, as (canonical group, kind).
const TARGET_KINDS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

impl PolicyTargetReference {
    /// The group, `core` for the empty group.
    pub fn canonical_group(&self) -> &str {
        if self.group.is_empty() {
            "core"
        } else {
            &self.group
        }
    }

    /// Whether it names a Service (of the policy's namespace).
    pub fn is_service(&self) -> bool {
        self.canonical_group() == "core" && self.kind == "Service"
    }
}

/// Checks the selector and target references of a policy (AuthorizationPolicy or
/// RequestAuthentication) as Istio's validation does.
pub(crate) fn validate_targets(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    at: &str,
    p: &mut Problems,
) {
    if let Some(s) = selector {
        p.selector_labels(&format!("{at}.selector.matchLabels"), &s.match_labels);
    }
    if selector.is_some() && (target_ref.is_some() || !target_refs.is_empty()) {
        p.add(at, "selector and targetRef exclude each other: set one");
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        p.add(at, "targetRef and targetRefs exclude each other: set one");
    }
    for (field, t) in targets(target_ref, target_refs, at) {
        if t.kind.is_empty() {
            p.add(
                format!("{field}.kind"),
                "missing: a target reference needs a kind",
            );
        } else if !TARGET_KINDS.contains(&(t.canonical_group(), t.kind.as_str())) {
            p.add(
                format!("{field}.kind"),
                format!(
                    "\"{}/{}\": a policy can target a Service, a ServiceEntry \
                     (networking.istio.io), a Gateway or a GatewayClass \
                     (gateway.networking.k8s.io)",
                    t.group, t.kind
                ),
            );
        }
        if t.name.is_empty() {
            p.add(
                format!("{field}.name"),
                "missing: a target reference needs a name",
            );
        }
        if !t.namespace.is_empty() {
            p.add(
                format!("{field}.namespace"),
                "must not be set: a policy targets resources of its own namespace only",
            );
        }
    }
}

/// Each target reference with its path (`spec.targetRef`, `spec.targetRefs[1]`).
pub fn targets<'a>(
    target_ref: Option<&'a PolicyTargetReference>,
    target_refs: &'a [PolicyTargetReference],
    at: &str,
) -> Vec<(String, &'a PolicyTargetReference)> {
    target_ref
        .map(|t| (format!("{at}.targetRef"), t))
        .into_iter()
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("{at}.targetRefs[{i}]"), t)),
        )
        .collect()
}

impl AuthorizationPolicy {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        validate_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            at,
            p,
        );
        let action = self.action();
        if matches!(action, Action::Deny | Action::Custom) && self.rules.is_empty() {
            p.add(
                format!("{at}.rules"),
                format!(
                    "missing: a {} policy without rules never matches; add an empty rule `{{}}` \
                     to match every request",
                    action.name()
                ),
            );
        }
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
                    Some(s) => s.validate(&format!("{at}.source"), action, p),
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
                c.validate(&format!("{at}.when[{j}]"), action, p);
            }
        }
    }

    /// The action (ALLOW when unset).
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }

    /// The parts of the rules that Ama cannot evaluate: conditions on keys that
    /// [`condition_key_evaluated`] refuses. The control plane marks them in the rule it sends
    /// (the proxy errs on the side of denying, see [`unevaluable_consequence`]) and
    /// [`crate::support`] reports each one.
    pub fn unevaluable(&self) -> Vec<Unevaluable> {
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, c) in rule.when.iter().enumerate() {
                if !condition_key_evaluated(&c.key) {
                    out.push(Unevaluable {
                        rule: i,
                        field: format!("rules[{i}].when[{j}].key"),
                        what: format!("key {}", c.key),
                    });
                }
            }
        }
        out
    }
}

impl Source {
    fn validate(&self, at: &str, action: Action, p: &mut Problems) {
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
        let service_accounts = [
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
        ];
        let by_identity = [
            &self.principals,
            &self.not_principals,
            &self.namespaces,
            &self.not_namespaces,
        ];
        if service_accounts.iter().any(|(_, l)| !l.is_empty())
            && by_identity.iter().any(|l| !l.is_empty())
        {
            p.add(
                at,
                "serviceAccounts and notServiceAccounts exclude principals, notPrincipals, \
                 namespaces and notNamespaces: set one kind",
            );
        }
        for (name, list) in service_accounts {
            // The CRD's maxItems.
            if list.len() > MAX_SERVICE_ACCOUNTS {
                p.add(
                    format!("{at}.{name}"),
                    format!("at most {MAX_SERVICE_ACCOUNTS} service accounts"),
                );
            }
            for (k, v) in list.iter().enumerate() {
                // An empty one is reported below, with the other lists'.
                if !v.is_empty()
                    && let Err(m) = service_account(v)
                {
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
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
        ] {
            no_empty_values(at, name, list, p);
            // The external authorizer is asked before identities are known (Istio's check).
            if action == Action::Custom && !list.is_empty() {
                p.add(
                    format!("{at}.{name}"),
                    "not supported with the CUSTOM action",
                );
            }
        }
        for (name, list) in [
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ] {
            no_empty_values(at, name, list, p);
        }
    }
}

/// Istio's `CheckEmptyValues`: no item of a list may be empty.
fn no_empty_values(at: &str, name: &str, list: &[String], p: &mut Problems) {
    for (k, v) in list.iter().enumerate() {
        if v.is_empty() {
            p.add(format!("{at}.{name}[{k}]"), "must not be empty");
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
        for (name, list) in [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
        ] {
            no_empty_values(at, name, list, p);
        }
        for (name, list) in [("paths", &self.paths), ("notPaths", &self.not_paths)] {
            no_empty_values(at, name, list, p);
            for (k, path) in list.iter().enumerate() {
                if let Err(m) = path_template(path) {
                    p.add(format!("{at}.{name}[{k}]"), m);
                }
            }
        }
    }
}

impl Condition {
    fn validate(&self, at: &str, action: Action, p: &mut Problems) {
        if self.key.is_empty() {
            p.add(format!("{at}.key"), "missing: a condition needs a key");
        } else {
            let map = MAP_KEYS.iter().find(|k| self.key.starts_with(*k));
            let known = CONDITION_KEYS.contains(&self.key.as_str())
                || map.is_some_and(|base| map_key_well_formed(base, &self.key));
            if !known {
                p.add(
                    format!("{at}.key"),
                    format!(
                        "\"{}\" is not a condition key (such as source.ip, \
                         request.headers[NAME] or request.auth.claims[NAME])",
                        self.key
                    ),
                );
            }
            let custom_refused = self.key == "source.namespace"
                || self.key == "source.serviceAccount"
                || self.key == "source.principal"
                || self.key.starts_with("request.auth.");
            if action == Action::Custom && custom_refused {
                p.add(
                    format!("{at}.key"),
                    format!("\"{}\" is not supported with the CUSTOM action", self.key),
                );
            }
            for (name, list) in [("values", &self.values), ("notValues", &self.not_values)] {
                no_empty_values(at, name, list, p);
                for (k, v) in list.iter().enumerate() {
                    let problem = match self.key.as_str() {
                        "source.ip" | "remote.ip" | "destination.ip" => ip_or_cidr(v).err(),
                        "destination.port" => {
                            (!v.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)))
                                .then(|| format!("\"{v}\" is not a port: must be 1..65535"))
                        }
                        "source.serviceAccount" => service_account(v).err(),
                        _ => None,
                    };
                    if let Some(m) = problem {
                        p.add(format!("{at}.{name}[{k}]"), m);
                    }
                }
            }
        }
        if self.values.is_empty() && self.not_values.is_empty() {
            p.add(at, "needs values or notValues");
        }
    }
}

/// How many `serviceAccounts` (or `notServiceAccounts`) one source may list (Istio's CRD).
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// Istio's `CheckServiceAccount`: `name` or `namespace/name`, no wildcard, at most 320
/// characters.
fn service_account(v: &str) -> Result<(), String> {
    let ok = !v.contains('*')
        && v.len() <= 320
        && match v.split_once('/') {
            Some((ns, sa)) => !ns.is_empty() && !sa.is_empty() && !sa.contains('/'),
            None => !v.is_empty(),
        };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{v}\" is not a service account: 'name' or 'namespace/name', without wildcards"
        ))
    }
}
