//! What every route shares: problem documents and the error type that becomes them
//! ([`problem`]), resources that answer OPTIONS and wrong methods themselves, the deadline and
//! exact-size JSON answers ([`resource`]), the OpenAPI document and the docs page ([`openapi`]),
//! and the API key ([`auth`]).

pub mod auth;
pub mod openapi;
pub mod problem;
pub mod resource;
