//! The server's integration tests: the real `server` binary or an in-process server on 127.0.0.1,
//! real CIFAR-10 images, real clients. One test binary, one module per part of the product
//! (one link of the dependency tree instead of one per file: a third of the cold test build's
//! disk).

mod common;

mod api;
mod binary;
mod browser;
mod explain;
mod hostile;
mod lifecycle;
mod memory;
mod methods;
mod observability;
mod openapi;
mod v2;
