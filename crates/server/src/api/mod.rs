//! The two APIs the server speaks, each owning its routes, its wire types, its errors and its
//! part of the OpenAPI document: the original service's ([`classic`]) and the Open Inference
//! Protocol's ([`v2`]). They use `http/`, `ingest/` and `inference/` below them, never each
//! other.

pub mod classic;
pub mod v2;
