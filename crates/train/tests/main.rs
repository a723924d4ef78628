//! The train crate's integration tests: the `train` binary and its pieces on real CIFAR-10
//! images. One test binary, one module per part (one link of the dependency tree instead of one
//! per file).

mod distill;
mod download;
mod fused_steps;
mod train;
mod wgpu;
