//! What every handler shares: the engine, the budgets, the served models, the settings.

use std::sync::{Arc, Mutex};

use actix_web::web;
use model::{Backend, Preprocessor};

use crate::config::ServerConfig;
use crate::inference::engine::Engine;
use crate::inference::explain::Explanations;
use crate::inference::models::{Models, Watcher};
use crate::ingest::decode::DecodeBudget;
use crate::ingest::upload::BodyBudget;
use crate::ops::lifecycle::Draining;
use crate::ops::metrics::Metrics;

/// Shared by every handler.
pub struct AppState {
    /// The inference thread's queue: admits images and batches requests together.
    pub engine: Engine,
    /// Request-body bytes all requests together may hold ([`ServerConfig::body_memory`]).
    pub body_budget: BodyBudget,
    /// Bytes all decodes together may take ([`ServerConfig::decode_memory`]).
    pub decode_budget: DecodeBudget,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
    /// The record served now, and its reloads.
    pub models: Arc<Models>,
    /// Set at the first stop signal: readiness answers 503 from then on.
    pub draining: Draining,
    /// The record file's watcher (`--watch-model`), kept for the server's lifetime.
    pub watcher: Mutex<Option<Watcher>>,
    /// The backend inference runs on, for `/model/info`.
    pub backend: Backend,
    /// Decodes uploads under [`ServerConfig::max_pixels`].
    pub preprocessor: Preprocessor,
    /// The settings the server was started with.
    pub config: ServerConfig,
    /// The OpenAPI document served at `/openapi.json`.
    pub openapi: web::Bytes,
    /// The explanations in progress ([`ServerConfig::max_explanations`]).
    pub explanations: Explanations,
}

impl AppState {
    /// Ready for traffic: the model has run once, and no stop signal has come.
    pub fn is_ready(&self) -> bool {
        self.engine.is_ready() && !self.draining.is_set()
    }
}
