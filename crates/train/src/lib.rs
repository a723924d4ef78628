//! Training the CIFAR-10 CNN with Burn's `Learner`.
//!
//! A run reads CIFAR-10 in either layout (see [`model::dataset`]), trains with the recipe in
//! [`TrainConfig`], checkpoints every epoch atomically so `--resume` survives any kill, then
//! evaluates the test set once and writes the record the server and CLI load. Everything
//! lands in one run folder: `config.json`, `metrics.jsonl`, `checkpoint/`,
//! `model.safetensors`, `test.json` and PNG plots ([`plots`]). Without `--data`, [`download`]
//! finds the data set in `$CIFAR10_DATA` or `./data`, or fetches the official release.

pub mod batcher;
pub mod checkpoint;
pub mod config;
pub mod download;
pub mod learner;
pub mod plots;
pub mod progress;
pub mod run;
pub mod time;

pub use config::TrainConfig;
pub use run::{RunOptions, run};
