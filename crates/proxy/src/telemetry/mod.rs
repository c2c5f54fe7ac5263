//! Access log and Istio metrics, recorded off the hot path.
