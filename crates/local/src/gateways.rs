//! The gateways `ama up` runs, as an installation profile installs them in a cluster.
//!
//! The objects are `ama manifest generate`'s ([`manifest::gateways`]): for the demo profile
//! (what Istio's tasks assume) `istio-ingressgateway` and `istio-egressgateway` in
//! `istio-system`. Their Deployments are Istio's gateway shape (`inject.istio.io/templates:
//! gateway`, an `istio-proxy` container with `image: auto`), so they go through the same
//! injection as in a cluster: no `istio-init`, and `ama proxy router` as `istio-proxy`.
//! An object of DIR with the same kind, namespace and name wins over the profile's.

use manifest::Profile;

use crate::manifests::{self, Manifests};

/// The namespace the gateways run in.
pub const NAMESPACE: &str = "istio-system";

/// The name of the ingress gateway's Service, which the host port forwards to.
pub const INGRESS_SERVICE: &str = manifest::gateways::INGRESS.name;

/// Adds the gateways of `profile` to `manifests`, after DIR's objects, leaving out any object
/// DIR declares itself.
pub fn add(manifests: &mut Manifests, profile: Profile) {
    let objects = manifest::gateways::objects(profile, NAMESPACE);
    if objects.is_empty() {
        return;
    }
    let text = manifest::render(&objects);
    let (docs, _) = manifests::parse(&text, &format!("profile {}", profile.as_str()));
    let new: Vec<_> = docs
        .into_iter()
        .filter(|d| !manifests.docs.iter().any(|m| m.key() == d.key()))
        .collect();
    manifests.docs.extend(new);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{LaunchInputs, Role, launch};
    use crate::manifests::{Labels, parse_ok};
    use crate::plan::pod_groups;
    use std::net::Ipv4Addr;
    use std::path::Path;

    #[test]
    fn demo_runs_both_gateways_as_routers_without_capture() {
        let mut m = Manifests::default();
        m.merge(parse_ok(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n",
            "ns.yaml",
        ));
        add(&mut m, Profile::Demo);
        let (groups, notes) = pod_groups(&m);
        assert!(notes.is_empty(), "{notes:?}");
        let keys: Vec<String> = groups.iter().map(|g| g.key()).collect();
        assert_eq!(
            keys,
            [
                "Deployment/istio-system/istio-ingressgateway",
                "Deployment/istio-system/istio-egressgateway",
            ]
        );
        let services: Vec<String> = m
            .docs
            .iter()
            .filter(|d| d.object.kind() == "Service")
            .map(|d| format!("{}/{}", d.key().1, d.key().2))
            .collect();
        assert_eq!(
            services,
            [
                "istio-system/istio-ingressgateway",
                "istio-system/istio-egressgateway"
            ]
        );
        let settings = m.mesh();
        let empty = Labels::new();
        for group in &groups {
            let l = launch(LaunchInputs {
                group,
                pod_name: "gw-1",
                ip: Ipv4Addr::new(10, 244, 0, 9),
                namespace_labels: &empty,
                mesh: &settings,
                ama: Path::new("/usr/bin/ama"),
                host_ip: Ipv4Addr::new(10, 244, 0, 1),
                node_name: "local",
            })
            .expect("launch");
            assert!(l.init.is_empty(), "no istio-init: {:?}", l.init);
            assert!(l.injected());
            assert_eq!(l.containers.len(), 1);
            let proxy = &l.containers[0];
            assert_eq!(proxy.role, Role::Sidecar);
            assert_eq!(
                proxy.argv,
                [
                    "/usr/bin/ama",
                    "proxy",
                    "router",
                    "--domain",
                    "istio-system.svc.cluster.local",
                    "--proxyLogLevel=warning",
                    "--proxyComponentLogLevel=misc:error",
                    "--log_output_level=default:info",
                ]
            );
            assert_eq!(proxy.user, Some((1337, 1337)));
            assert_eq!(
                proxy.probe,
                crate::launch::Probe::Http {
                    port: 15021,
                    path: "/healthz/ready".into()
                }
            );
            let env = |k: &str| {
                proxy
                    .env
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(env("POD_NAMESPACE").as_deref(), Some("istio-system"));
            assert_eq!(env("POD_NAME").as_deref(), Some("gw-1"));
            assert_eq!(env("JWT_POLICY").as_deref(), Some("third-party-jwt"));
            assert!(
                l.pod.pointer("/metadata/labels/istio").is_some(),
                "{}",
                l.pod
            );
        }
    }

    #[test]
    fn minimal_runs_none_and_dir_objects_win() {
        let mut m = Manifests::default();
        add(&mut m, Profile::Minimal);
        assert!(m.docs.is_empty());
        let own = "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  selector: {istio: mine}\n  ports: [{port: 80}]\n";
        m.merge(parse_ok(own, "own.yaml"));
        add(&mut m, Profile::Default);
        let services: Vec<_> = m
            .docs
            .iter()
            .filter(|d| d.object.kind() == "Service")
            .collect();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].source, "own.yaml");
        assert!(m.docs.iter().any(|d| d.object.kind() == "Deployment"));
    }
}
