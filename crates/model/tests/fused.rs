//! The fused convolution blocks (`model::fused`) against Burn's generic ops on burn-flex, with
//! autodiff: the same logits and the same gradient for every parameter (relative 1e-4), on
//! real CIFAR-10 batches of 1, 7 and 64 images, with the shipped weights and with random ones,
//! on a batch made of exact ties inside the pooling windows, and under both of Burn's
//! checkpointing strategies; and the same logits without autodiff (inference, validation).

use burn::prelude::*;
use model::preprocess::to_tensor;
use model::{Cnn, Preprocessor, testdata};

/// `n` real CIFAR-10 test images, preprocessed.
fn cifar(n: usize) -> Vec<f32> {
    let pre = Preprocessor::default();
    testdata::images("test", n.div_ceil(10))
        .iter()
        .take(n)
        .flat_map(|img| pre.preprocess(&img.bytes).unwrap())
        .collect()
}

/// `images` with a small deterministic dither (±2e-3, under a grey level of 7.8e-3).
///
/// Why the random-weight cases need it: JPEG-quantised CIFAR images have flat regions where a
/// pooling window sees four identical 3×3 patches. Mathematically those are exact ties; our
/// GEMM computes them bit-identical and routes the gradient to the first position, as Burn's
/// pooling rule says, while burn-flex's convolution can round identical patches differently by
/// an ulp and so route it elsewhere. With the shipped weights that never moved the weight
/// gradient measurably; with fresh random weights it moved conv1's by 3e-4 (relative) on 64
/// raw images. The dither removes the exact ties; exact ties that both paths compute exactly
/// are tested on their own below.
fn dithered(images: &[f32]) -> Vec<f32> {
    images
        .iter()
        .enumerate()
        .map(|(i, v)| {
            // splitmix64 of the index: no pattern a 3×3 kernel could cancel.
            let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            v + (z >> 40) as f32 / (1u64 << 24) as f32 * 4e-3 - 2e-3
        })
        .collect()
}

/// Images of flat 2×2-aligned blocks of few levels: whole pooling windows see equal inputs, so
/// the convolutions give exact ties inside windows.
fn ties(n: usize) -> Vec<f32> {
    (0..n * 3 * 64 * 64)
        .map(|i| {
            let (x, y, c) = ((i % 64) / 4, (i / 64 % 64) / 4, i / 4096);
            [-0.5f32, 0.25, 0.75][(x + 2 * y + c) % 3]
        })
        .collect()
}

/// Random weights, the same every run.
fn random_net(device: &Device) -> Cnn {
    crate::seeded_net(device, 7)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Logits and the gradients of every parameter of `(logits · r).sum()`.
fn run(net: &Cnn, images: &[f32], device: &Device, fused: bool) -> Vec<(&'static str, Vec<f32>)> {
    let n = images.len() / (3 * 64 * 64);
    let x = to_tensor(images.to_vec(), n, device);
    let logits = if fused {
        net.forward(x)
    } else {
        net.forward_unfused(x)
    };
    let r = Tensor::<2>::from_data(
        TensorData::new(
            (0..n * 10)
                .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                .collect::<Vec<_>>(),
            [n, 10],
        ),
        device,
    );
    let grads = (logits.clone() * r).sum().backward();
    let g4 = |p: &burn::module::Param<Tensor<4>>| values(p.val().grad(&grads).unwrap());
    let g2 = |p: &burn::module::Param<Tensor<2>>| values(p.val().grad(&grads).unwrap());
    let g1 = |p: &Option<burn::module::Param<Tensor<1>>>| {
        values(p.as_ref().unwrap().val().grad(&grads).unwrap())
    };
    vec![
        ("logits", values(logits)),
        ("conv1.weight", g4(&net.conv1.weight)),
        ("conv1.bias", g1(&net.conv1.bias)),
        ("conv2.weight", g4(&net.conv2.weight)),
        ("conv2.bias", g1(&net.conv2.bias)),
        ("fc1.weight", g2(&net.fc1.weight)),
        ("fc1.bias", g1(&net.fc1.bias)),
        ("fc2.weight", g2(&net.fc2.weight)),
        ("fc2.bias", g1(&net.fc2.bias)),
    ]
}

fn assert_close(what: &str, fused: &[(&str, Vec<f32>)], generic: &[(&str, Vec<f32>)]) {
    for ((name, a), (_, b)) in fused.iter().zip(generic) {
        assert_eq!(a.len(), b.len(), "{what} {name}");
        // Relative in the 2-norm, in f64: the two paths sum up to 262,144 products per weight
        // gradient in different orders, so single elements may differ more.
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        let diff = norm(&mut a.iter().zip(b).map(|(x, y)| f64::from(x - y)));
        let scale = norm(&mut b.iter().map(|&y| f64::from(y))).max(1e-12);
        eprintln!("{what} {name}: relative difference {:e}", diff / scale);
        assert!(
            diff <= 1e-4 * scale,
            "{what} {name}: |fused - generic| = {diff:e}, |generic| = {scale:e}"
        );
    }
}

fn check(what: &str, net: &Cnn, images: &[f32], device: &Device) {
    let fused = run(net, images, device, true);
    let generic = run(net, images, device, false);
    assert_close(what, &fused, &generic);
}

#[test]
fn gradients_equal_the_generic_path_on_real_batches() {
    let device = Device::flex().autodiff();
    let (shipped, _) = model::record::load_shipped(&device).unwrap();
    let random = random_net(&device);
    let images = cifar(64);
    for n in [1, 7, 64] {
        let batch = &images[..n * 3 * 64 * 64];
        check(&format!("shipped, batch {n}"), &shipped, batch, &device);
        check(
            &format!("random, batch {n}"),
            &random,
            &dithered(batch),
            &device,
        );
    }
}

#[test]
fn gradients_equal_the_generic_path_on_exact_ties() {
    let device = Device::flex().autodiff();
    let (shipped, _) = model::record::load_shipped(&device).unwrap();
    check("ties", &shipped, &ties(7), &device);
    check("ties, random", &random_net(&device), &ties(7), &device);
}

#[test]
fn gradients_equal_the_generic_path_with_gradient_checkpointing() {
    let device = Device::flex().autodiff().gradient_checkpointing();
    let net = random_net(&device);
    check("checkpointing", &net, &dithered(&cifar(7)), &device);
}

#[test]
fn inference_without_autodiff_gives_the_generic_logits() {
    let device = Device::flex();
    let (net, _) = model::record::load_shipped(&device).unwrap();
    let images = cifar(16);
    let x = || to_tensor(images.clone(), 16, &device);
    let fused = values(net.forward(x()));
    let generic = values(net.forward_unfused(x()));
    assert_close("inference", &[("logits", fused)], &[("logits", generic)]);
}
