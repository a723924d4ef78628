//! What every route shares: problem documents and the error type that becomes them
//! ([`problem`]), the OpenAPI document and the docs page ([`openapi`]), and the API key
//! ([`auth`]).

pub mod auth;
pub mod openapi;
pub mod problem;
