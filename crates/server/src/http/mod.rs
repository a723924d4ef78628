//! What every route shares: reading request bodies within their limits ([`body`]), problem
//! documents and the error type that becomes them
//! ([`problem`]), resources that answer OPTIONS and wrong methods themselves, the deadline and
//! exact-size JSON answers ([`resource`]), the OpenAPI document and the docs page ([`openapi`]),
//! the API key ([`auth`]), and the middleware that checks it and counts every answer
//! ([`middleware`]).
//!
//! It uses actix-web and the layers below it (`ingest/`, `inference/`, `ops/`), never an API:
//! what differs by API is handed in by [`crate::router`].

pub mod auth;
pub mod body;
pub mod middleware;
pub mod openapi;
pub mod problem;
pub mod resource;
