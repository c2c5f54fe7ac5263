//! One module per subcommand.

pub mod discovery;
pub mod iptables;
pub mod kube_inject;
pub mod manifest;
pub mod proxy;
