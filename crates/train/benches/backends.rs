//! Inference (batch 1, 16, 64) and one Adam training step (batch 64) on every CPU backend
//! compiled in, the inference-only fast path included. Build both Burn CPU backends to
//! compare them:
//!
//!     cargo bench -p train --features ndarray --bench backends

// `criterion_group!` defines an undocumented `pub fn`; a bench target exports nothing anyway.
#![allow(missing_docs)]

use std::hint::black_box;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use model::{Backend, IMAGE_FLOATS, Inference};
use train::batcher::CifarBatch;
use train::learner::Classifier;

fn images(n: usize, device: &Device) -> Tensor<4> {
    let data: Vec<f32> = (0..n * 3 * 64 * 64)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(data, [n, 3, 64, 64]), device)
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("inference");
    for backend in Backend::available()
        .into_iter()
        .filter(|b| *b != Backend::Wgpu)
    {
        let device = backend.device();
        let net = Inference::new(model::Cnn::init(&device), backend).unwrap();
        for batch in [1usize, 16, 64] {
            let pixels = images(batch, &device)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(pixels.len(), batch * IMAGE_FLOATS);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(backend.name(), batch), &batch, |b, _| {
                b.iter(|| black_box(net.logits(&pixels)));
            });
        }
    }
    group.finish();
}

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    for backend in Backend::available()
        .into_iter()
        .filter(|b| *b != Backend::Wgpu && b.trains())
    {
        let device = backend.device().autodiff();
        let batch = 64;
        let mut model = Some(Classifier::new(
            model::Cnn::init(&device),
            0.1,
            0.0,
            &device,
        ));
        let mut optim = AdamConfig::new().init();
        let x = images(batch, &device);
        let targets: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(targets, [batch]), &device);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new(backend.name(), batch), |b| {
            b.iter(|| {
                let m = model.take().unwrap();
                let out = burn::train::TrainStep::step(
                    &m,
                    CifarBatch {
                        images: x.clone(),
                        targets: y.clone(),
                        teacher: None,
                    },
                );
                black_box(&out.item.loss);
                model = Some(optim.step(1e-3, m, out.grads));
            });
        });
    }
    group.finish();
}

/// One AdamW step at batch 64 on burn-flex, the convolution blocks fused (what `train` runs)
/// and as Burn's generic ops, side by side; with 44 MFLOP per image, images/s × 44e6 is the
/// FLOP rate (README, "Speed").
fn flex_step(c: &mut Criterion) {
    // As the `train` binary runs.
    train::keep_large_blocks_in_the_heap();
    let mut group = c.benchmark_group("flex_step");
    group.sample_size(20);
    let device = Device::flex().autodiff();
    let batch = 64;
    let x = images(batch, &device);
    let targets: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(targets, [batch]), &device);
    let loss = CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.1))
        .init(&device);
    group.throughput(Throughput::Elements(batch as u64));
    for (name, fused) in [("fused", true), ("generic", false)] {
        let mut net = Some(model::Cnn::init(&device));
        let mut optim = AdamWConfig::new().with_weight_decay(0.05).init();
        group.bench_function(BenchmarkId::new(name, batch), |b| {
            b.iter(|| {
                let n = net.take().unwrap();
                let logits = if fused {
                    n.forward(x.clone())
                } else {
                    n.forward_unfused(x.clone())
                };
                let l = loss.forward(logits, y.clone());
                let grads = GradientsParams::from_grads(l.backward(), &n);
                net = Some(optim.step(1e-3, n, grads));
            });
        });
    }
    group.finish();
}

/// One update of the weights' moving average (after every training step when `--ema-decay`
/// is set): its cost beside `flex_step`'s.
fn ema_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("ema_update");
    let device = Device::flex().autodiff();
    let current = model::Cnn::init(&device);
    let mut average = Some(train::learner::detached_copy(&current));
    group.bench_function("flex", |b| {
        b.iter(|| {
            let a = average.take().unwrap();
            average = Some(train::learner::blend(a, &current, 0.999));
        });
    });
    group.finish();
}

criterion_group!(benches, inference, train_step, flex_step, ema_update);
criterion_main!(benches);
