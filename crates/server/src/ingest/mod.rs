//! Request bodies into images, within budgets: what a body becomes and the budget it is charged
//! to ([`upload`]), and decoding under a memory budget ([`decode`]).
//!
//! It uses `model` and tokio, and names no HTTP type: the HTTP edge reads and meters the bodies
//! (`crate::http::body`) and turns [`decode::DecodeError`] into each API's error.

pub mod decode;
pub mod upload;
