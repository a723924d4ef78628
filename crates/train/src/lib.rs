//! Training the CIFAR-10 CNN with Burn's `Learner`.
//!
//! A run reads CIFAR-10 in either layout (see [`model::dataset`]), trains with the recipe in
//! [`TrainConfig`], checkpoints every epoch atomically so `--resume` survives any kill, then
//! evaluates the test set once and writes the record the server and CLI load. Everything
//! lands in one run folder: `config.json`, `metrics.jsonl`, `checkpoint/`,
//! `model.safetensors`, `test.json` and PNG plots ([`plots`]). Without `--data`, [`download`]
//! finds the data set in `$CIFAR10_DATA` or `./data`, or fetches the official release.
//!
//! The same runs train a wider teacher (`--arch`, [`model::teacher`]: validation only, its
//! record `teacher.safetensors`), and [`teacher`] distils the served network from stored
//! answers of an ensemble of records.

pub mod batcher;
pub mod checkpoint;
pub mod config;
pub mod download;
pub mod learner;
pub mod metrics_log;
pub mod plots;
pub mod renderer;
pub mod run;
pub mod teacher;
pub mod time;

pub use config::TrainConfig;
pub use run::{RunOptions, run};

/// Every training step allocates and frees the same few large buffers (activations, gradients:
/// up to 17 MB). glibc serves blocks over its mmap threshold with fresh mappings and returns
/// them with munmap, so each step paid page faults and cross-core TLB shootdowns for memory it
/// had just given back (measured: about 9% of a training run's cycles in the kernel). Raising the
/// threshold keeps those blocks in the heap for reuse.
pub fn keep_large_blocks_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds, under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
