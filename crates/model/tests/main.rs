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

/// Burn's generator is seeded per device and shared by every test of this binary: every draw of
/// fresh weights takes this lock, so that a seeded draw ([`seeded_net`]) gives the same weights
/// every run whatever runs beside it.
static DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A network with fresh random weights on `device`.
pub(crate) fn fresh_net(device: &burn::tensor::Device) -> model::Cnn {
    let _one = DRAWS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    model::Cnn::init(device)
}

/// A network with the random weights `seed` gives, the same every run.
pub(crate) fn seeded_net(device: &burn::tensor::Device, seed: u64) -> model::Cnn {
    let _one = DRAWS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    model::Cnn::init(device)
}
