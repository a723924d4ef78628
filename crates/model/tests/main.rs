//! The model crate's integration tests on the shipped record and real CIFAR-10 images. One test
//! binary, one module per part (one link of the dependency tree instead of one per file);
//! `decode_cost` stays its own binary, for its counting global allocator.

mod dataset;
mod explain;
mod fast;
mod fused;
mod preprocess;
mod properties;
mod record;
mod shipped;
mod wgpu;
