//! Traffic capture for the sidecar: the iptables rules istio-iptables installs in a pod, for the
//! same settings, as iptables-restore text; and installing and removing them. Also the Service
//! rules kube-proxy would install, for pods without a sidecar ([`services`]).
//!
//! - [`config`]: the settings (istio-iptables' flags) as typed values.
//! - [`rules`]: the rules for a config and their restore text. Pure, so `--dry-run` and the tests
//!   see exactly what would be loaded.
//! - [`restore`]: [`apply`] and [`cleanup`], which run `iptables-restore --noflush` (and
//!   `ip6tables-restore`) in the calling thread's network namespace.
//! - [`flags`]: istio-iptables' capture flags as text and the one check `ama iptables` and
//!   injection share ([`CaptureFlags::check`]).
//! - [`host`]: what the rules need from the namespace: IPv6 addresses, DNS servers, the proxy
//!   user, CAP_NET_ADMIN.
//! - [`services`]: kube-proxy's part for a pod without a sidecar under `ama up`: Service VIPs
//!   DNATed to their endpoints.
//!
//! ```
//! let config = netfilter::Config {
//!     inbound_ports: "*".parse().unwrap(),
//!     outbound_ranges: "*".parse().unwrap(),
//!     ..netfilter::Config::default()
//! };
//! let text = netfilter::render(&config).unwrap().to_string();
//! assert!(text.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
//! ```

#![deny(unsafe_code)]

pub mod config;
mod error;
pub mod flags;
pub mod host;
pub mod restore;
pub mod rules;
pub mod services;

pub use config::{Config, ParseError};
pub use error::Error;
pub use flags::{CaptureFlags, Flag, FlagError};
pub use restore::{Applied, Cleaned, apply, check_installed, cleanup};
pub use rules::{Family, Rendered, RestoreScript, render};
