//! The wire contract between the control plane and the proxies.
//!
//! This crate holds the resources a proxy consumes, at the level of the mesh rather than Envoy's
//! listener/cluster model (see `shared/DESIGN.md`, "Control plane ↔ proxy"):
//!
//! - [`Workload`]: one pod (or VM) with its addresses, identity, labels and ports;
//! - [`Service`]: a hostname with VIPs, ports (and their protocols) and endpoints;
//! - [`HttpRoutes`]: HTTP routing for a host (translated from VirtualService);
//! - [`TrafficPolicy`]: per-host client policy (translated from DestinationRule);
//! - [`Authorization`]: PeerAuthentication, AuthorizationPolicy and RequestAuthentication;
//! - [`GatewayListener`]: for gateway proxies, what to serve on a port ([`gateway`]).
//!
//! They arrive in a [`ProxyResources`] bundle, read from a local file (YAML or JSON, camelCase
//! field names like Istio's and ztunnel's YAML) or pushed by the control plane over Delta ADS
//! ([`ads`], the same types as JSON in `Any`); [`ca`] is Istio's certificate service, and
//! [`grpc`] gRPC's message framing for those that frame messages by hand.
//! [`ProxyResources::parse`] checks everything and reports each problem with its path
//! (`services[2].ports[0].port: must be 1..65535`), so a bad push or file is rejected whole and the
//! previous version stays in force.
//!
//! The resource types are pure (no I/O beyond [`ProxyResources::load`], which reads one file);
//! [`ads`] and [`ca`] are the network side.

#![forbid(unsafe_code)]

pub mod ads;
mod authorization;
pub mod ca;
pub mod gateway;
pub mod grpc;
mod policy;
mod resources;
mod routes;
mod service;
pub mod telemetry;
mod validate;
mod workload;

pub use authorization::{
    Action, Authorization, AuthorizationPolicy, CONDITION_KEYS, ClaimToHeader, Condition,
    EffectiveMtls, JwtHeader, JwtRule, MtlsMode, Operation, PeerAuthentication,
    RequestAuthentication, Rule, Source, condition_key_known,
};
pub use gateway::{
    GatewayListener, GatewayProtocol, GatewayServer, ServerCredential, ServerTls, ServerTlsMode,
    TlsVersion,
};
pub use policy::{
    ClientCredential, ClientTls, ClientTlsMode, ConnectionPool, ConsistentHash, HashAlgorithm,
    HashKey, HttpPool, LoadBalancer, OutlierDetection, Policy, PortSettings, Settings, Subset,
    TcpKeepalive, TcpPool, TrafficPolicy,
};
pub use resources::{LoadError, NodeRef, OutboundTrafficPolicy, ProxyResources};
pub use routes::{
    AbortStatus, Cors, DirectResponse, Fault, FaultAbort, FaultDelay, HeaderOps, Headers,
    HttpRoute, HttpRouteMatch, HttpRoutes, L4Match, L4Route, Mirror, Redirect, RedirectPort,
    RegexRewrite, RetryPolicy, Rewrite, RouteDestination, StringMatch, UnmatchedPreflights,
};
pub use service::{DnsEndpoint, Endpoint, LbPolicy, Resolution, Service, ServicePort};
pub use telemetry::{
    AccessLog, AccessLogFormat, AccessLogging, CollectorProtocol, IstioMetric, MetricOverride,
    MetricsConfig, ModeMetrics, TagOverride, Tracing, TracingCollector, TracingTag,
};
pub use validate::{ValidationError, ValidationErrors};
pub use workload::{Protocol, TlsMode, Workload, WorkloadPort};
