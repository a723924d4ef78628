//! Running the service: signals, reload and drain ([`lifecycle`]), logs ([`logging`]),
//! Prometheus metrics ([`metrics`]) and the memory bound the server states ([`memory`]).
//!
//! `metrics` and `logging` sit below everything (the engine counts into `metrics`); `lifecycle`
//! (which reloads the served models and stops the server) and `memory` (which sums each layer's
//! worst case from the settings) look at the layers they govern, and nothing there looks back.

pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
