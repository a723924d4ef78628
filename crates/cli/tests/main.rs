//! The `cnn` binary's integration tests, one test binary with one module per part (one link of
//! the dependency tree instead of one per file).

mod cli;
mod import;
mod remote;
