//! One module per subcommand.

pub mod analyze;
pub mod apply;
pub mod create;
pub mod dashboard;
pub mod delete;
pub mod describe;
pub mod discovery;
pub mod down;
pub mod exec;
pub mod get;
pub mod iptables;
pub mod kube_inject;
pub mod local;
pub mod logs;
pub mod manifest;
pub mod mesh_http;
pub mod proxy;
pub mod proxy_config;
pub mod proxy_hooks;
pub mod proxy_status;
pub mod sample;
pub mod sandbox;
pub mod scale;
pub mod up;
pub mod userns;
pub mod version;
