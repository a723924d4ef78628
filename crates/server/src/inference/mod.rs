//! The model side of the server: the batching engine that runs every request's images through
//! the network ([`engine`]), the records being served, reloaded and retired ([`models`]), and
//! what the model has done ([`stats`]), and explanations of its predictions ([`explain`]).
//! It uses `model` and `ops/metrics`, and knows nothing of the protocols that feed it: the HTTP
//! modules above it turn its [`engine::EngineError`] into their own errors.

pub mod engine;
pub mod explain;
pub mod models;
pub mod stats;
