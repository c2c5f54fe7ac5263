//! The config-file and YAML/CRD parsers, on arbitrary text. The first byte picks the parser:
//!
//! 0. `xds::ProxyResources::parse`, the sidecar's `--config` file, then the proxy's snapshot
//!    built from it (`proxy::config::Snapshot::build`, what the sidecar serves with). Valid
//!    resources survive a JSON round trip unchanged (the file may be YAML or JSON).
//! 1. `api::objects::parse_stream`, the multi-document YAML/CRD parser behind `ama apply`,
//!    `ama up`'s manifests, discovery's file registry and the Kubernetes registry. Every error
//!    names a document of the stream, and every message renders.
//! 2. `api::ProxyConfig::from_yaml` (`proxy.istio.io/config`, `defaultConfig`): a parsed config
//!    reads back from its own JSON (`PROXY_CONFIG`) unchanged and merges with itself unchanged.
//! 3. `api::MeshConfig::from_yaml` (the MeshConfig or the whole `istio` ConfigMap).
//! 4. `api::Values::from_yaml` and `api::InjectConfigFile::from_yaml` (the injector's inputs).
//! 5. `inject::inject_stream` (`ama kube-inject`): its output, injected again, has no errors.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn proxy_cfg() -> &'static proxy::config::ProxyConfig {
    static CFG: OnceLock<proxy::config::ProxyConfig> = OnceLock::new();
    CFG.get_or_init(Default::default)
}

fn proxy_resources(text: &str) {
    let Ok(r) = xds::ProxyResources::parse(text) else {
        return;
    };
    let json = serde_json::to_string(&r).expect("valid resources serialise");
    let back = xds::ProxyResources::parse(&json)
        .unwrap_or_else(|e| panic!("valid resources do not read back from JSON: {e}\n{json}"));
    assert_eq!(back, r, "JSON round trip changed the resources");
    // A route that does not compile (a bad regex) is an error here, never a panic.
    let registry = proxy::cluster::Registry::default();
    // No name is resolved: DNS endpoints stay unresolved, as before the first lookup.
    let dns = proxy::dns::DnsTable::default();
    if let Ok(snap) = proxy::config::Snapshot::build(r, proxy_cfg(), 1, &registry, &dns) {
        let _ = snap.inbound_protocol(80);
    }
}

fn objects(text: &str) {
    let docs = api::yaml::split_documents(text);
    for d in &docs {
        assert!(text.contains(d.text));
    }
    let (objects, errors) = api::objects::parse_stream(text, "fuzz.yaml");
    for o in &objects {
        let _ = (o.kind(), o.metadata(), o.display());
    }
    for e in &errors {
        assert!(
            (1..=docs.len()).contains(&e.doc),
            "error in document {} of {}: {e}",
            e.doc,
            docs.len()
        );
        let _ = e.to_string();
    }
}

fn proxy_config(text: &str) {
    let Ok(pc) = api::ProxyConfig::from_yaml(text) else {
        return;
    };
    let json = pc.to_json();
    let back = api::ProxyConfig::from_yaml(&json)
        .unwrap_or_else(|e| panic!("a ProxyConfig does not read back from its JSON: {e}\n{json}"));
    assert_eq!(back, pc, "JSON round trip changed the ProxyConfig");
    assert_eq!(
        pc.merged_with(&pc),
        pc,
        "merging a ProxyConfig with itself changed it"
    );
}

fn mesh_config(text: &str) {
    if let Ok(m) = api::MeshConfig::from_yaml(text) {
        let _ = m.default_config.to_json();
    }
}

fn injector_inputs(text: &str) {
    let _ = api::Values::from_yaml(text).map(|v| (v.proxy_image(), v.ca_address()));
    let _ = api::InjectConfigFile::from_yaml(text);
}

fn kube_inject(text: &str) {
    static CONFIG: OnceLock<inject::InjectConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(Default::default);
    let first = inject::inject_stream(text, "fuzz.yaml", config);
    for e in &first.errors {
        let _ = e.to_string();
    }
    let second = inject::inject_stream(&first.output, "injected.yaml", config);
    assert!(
        second.errors.is_empty(),
        "kube-inject's own output has errors: {:?}\n{}",
        second.errors,
        first.output
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Files are read as UTF-8 (`read_to_string`): other bytes never reach a parser.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode % 6 {
        0 => proxy_resources(text),
        1 => objects(text),
        2 => proxy_config(text),
        3 => mesh_config(text),
        4 => injector_inputs(text),
        _ => kube_inject(text),
    }
});
