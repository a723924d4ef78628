//! The same weights on the CPU backend and on wgpu give the same logits.
//!
//! Built with `--features wgpu`, as `scripts/test` builds every test; on a machine without a GPU, Mesa's
//! lavapipe (Debian package `mesa-vulkan-drivers`) gives wgpu a real Vulkan adapter.
#![cfg(feature = "wgpu")]

use burn::prelude::*;
use model::preprocess::to_tensor;
use model::{Backend, Preprocessor, testdata};

#[test]
fn wgpu_logits_match_the_cpu_backend() {
    let cpu = Backend::available()
        .into_iter()
        .find(|b| *b != Backend::Wgpu)
        .expect("a CPU backend is compiled in");
    let cpu_device = cpu.device();
    let gpu_device = Backend::Wgpu.device();

    let net = crate::fresh_net(&cpu_device);
    let p = Preprocessor::default();
    let images = testdata::images("test", 2);
    let pixels: Vec<f32> = images
        .iter()
        .flat_map(|i| p.preprocess(&i.bytes).unwrap())
        .collect();
    let n = images.len();

    let on_cpu: Vec<f32> = net
        .forward(to_tensor(pixels.clone(), n, &cpu_device))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let gpu_net = net.to_device(&gpu_device);
    let on_gpu: Vec<f32> = gpu_net
        .forward(to_tensor(pixels, n, &gpu_device))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(on_cpu.len(), n * 10);
    let max_diff = on_cpu
        .iter()
        .zip(&on_gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{n} images, {} logits: max |cpu - wgpu| = {max_diff:e}",
        on_cpu.len()
    );
    assert!(max_diff < 1e-3, "logits differ by {max_diff}");
}
