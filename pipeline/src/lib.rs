//! Warden's data plane: streams (Kafka and the embedded log), transformation stages, sinks
//! (Delta Lake and documents), CDC and the per-store erasers.
//!
//! The foundation release ships no data plane yet; this crate fixes its place in the
//! dependency order (`sdk` <- `audit` <- `policy` <- `pipeline` <- `gateway`).
