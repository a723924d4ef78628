//! The APIs the server speaks, each owning its routes, its wire types, its errors and its
//! part of the OpenAPI document: the original service's ([`classic`]), explanations beside it
//! ([`explain`], in the original's style: multipart uploads, problem documents), and the Open
//! Inference Protocol's ([`v2`]). They use `http/`, `ingest/` and `inference/` below them;
//! `classic` and `v2` never name each other.

pub mod classic;
pub mod explain;
pub mod v2;
