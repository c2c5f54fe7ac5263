//! The data plane: `ama proxy sidecar`.
//!
//! Module ownership while the crate is being built: `telemetry/` (access log, metrics),
//! `admin.rs` (127.0.0.1:15000) and `status.rs` (15020, 15021, 15090) form the observability side;
//! everything else is the traffic side.

pub mod admin;
pub mod status;
pub mod telemetry;
