//! Status servers: 15020 (merged metrics, health, app probes), 15021 (readiness), 15090 (Envoy-style prometheus).
