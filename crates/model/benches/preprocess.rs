//! Decode + resize + normalise of JPEGs of three sizes: a CIFAR image (32×32), a 512×512
//! photo-sized image and a 4000×3000 camera image; and what follows preprocessing,
//! `Inference::predict`, with test-time augmentation off and on.
//!
//!     cargo bench -p model --bench preprocess
//!     cargo bench -p model --bench preprocess -- predict

// `criterion_group!` defines an undocumented `pub fn`; a bench target exports nothing anyway.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Cursor;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use image::{DynamicImage, ImageFormat, RgbImage};
use model::{Backend, IMAGE_FLOATS, Inference, Preprocessor, testdata};

/// A smooth synthetic photo (gradients and stripes) encoded as JPEG.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            (((x / 7) ^ (y / 5)) & 0xff) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn preprocess(c: &mut Criterion) {
    let p = Preprocessor::default();
    let cifar = testdata::images("test", 1).remove(0).bytes;
    let mut group = c.benchmark_group("preprocess");
    group.bench_function("jpeg_32x32", |b| {
        b.iter(|| black_box(p.preprocess(&cifar).unwrap()));
    });
    let medium = jpeg(512, 512);
    group.bench_function("jpeg_512x512", |b| {
        b.iter(|| black_box(p.preprocess(&medium).unwrap()));
    });
    let large = jpeg(4000, 3000);
    group.sample_size(10);
    group.bench_function("jpeg_4000x3000", |b| {
        b.iter(|| black_box(p.preprocess(&large).unwrap()));
    });
    group.finish();
}

/// The resize alone, ours against the `image` crate's generic resize it reproduces byte for
/// byte, side by side: 32×32 (every training image) and 512×512 → 64×64.
fn resize(c: &mut Criterion) {
    let mut group = c.benchmark_group("resize");
    for side in [32u32, 512] {
        let img = RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x ^ y) & 0xff) as u8])
        });
        group.bench_function(format!("ours_{side}"), |b| {
            b.iter(|| black_box(model::preprocess::resize(&img)));
        });
        group.bench_function(format!("image_{side}"), |b| {
            b.iter(|| {
                black_box(image::imageops::resize(
                    &img,
                    64,
                    64,
                    image::imageops::FilterType::Triangle,
                ));
            });
        });
    }
    group.finish();
}

/// `Inference::predict` (forward pass, softmax, top 3) on the default inference backend (the
/// fast path), test-time augmentation off, flip and crops side by side, at batch 1 and 64 (random
/// weights: speed does not depend on their values).
fn predict(c: &mut Criterion) {
    let backend = Backend::default_inference();
    let net = model::Cnn::init(&backend.device());
    let plain = Inference::new(net.clone(), backend).unwrap();
    let tta = Inference::new(net.clone(), backend)
        .unwrap()
        .with_tta(model::Tta::Flip);
    let crops = Inference::new(net, backend)
        .unwrap()
        .with_tta(model::Tta::Crops);
    let mut group = c.benchmark_group("predict");
    for batch in [1usize, 64] {
        let pixels: Vec<f32> = (0..batch * IMAGE_FLOATS)
            .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
            .collect();
        group.throughput(Throughput::Elements(batch as u64));
        for (name, net) in [("plain", &plain), ("tta", &tta), ("tta-crops", &crops)] {
            group.bench_with_input(BenchmarkId::new(name, batch), &pixels, |b, x| {
                b.iter(|| black_box(net.predict(x, 3)));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, preprocess, resize, predict);
criterion_main!(benches);
