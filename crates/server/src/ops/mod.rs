//! Running the service: signals, reload and drain ([`lifecycle`]), logs ([`logging`]),
//! Prometheus metrics ([`metrics`]) and the memory bound the server states ([`memory`]).

pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
