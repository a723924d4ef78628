//! Forward pass of the fast path at batch 1, 16 and 64 (random weights: speed does not depend
//! on their values), on the widest instruction set the CPU has and, where that is AVX-512, on
//! AVX2 too. The same batches through Burn are in `cargo bench -p model --bench inference`.
//!
//!     cargo bench -p fastcnn

// `criterion_group!` defines an undocumented `pub fn`; a bench target exports nothing anyway.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastcnn::{FastCnn, IMAGE_FLOATS, Isa, Weights};

fn filled(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 * scale - scale)
        .collect()
}

fn forward(c: &mut Criterion) {
    eprintln!("fastcnn: GEMMs on {}", fastcnn::simd());
    let net = FastCnn::new(Weights {
        conv1_weight: filled(16 * 3 * 9, 0.3),
        conv1_bias: filled(16, 0.1),
        conv2_weight: filled(32 * 16 * 9, 0.1),
        conv2_bias: filled(32, 0.1),
        fc1_weight: filled(8192 * 100, 0.01),
        fc1_bias: filled(100, 0.1),
        fc2_weight: filled(100 * 10, 0.1),
        fc2_bias: filled(10, 0.1),
    })
    .expect("weights sized for the architecture");
    // Called from a worker of the rayon pool, as the server's inference thread calls it: a
    // fork then keeps one half on the calling thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool");
    // The AVX2 path too where the CPU has more (what an AVX2-only machine runs).
    // Reported as `fastcnn/<batch>`, `fastcnn/int8/<batch>`, `fastcnn/avx2/<batch>`, ...
    let calibration = net.calibrate(&filled(16 * IMAGE_FLOATS, 1.0));
    let int8 = net.clone().quantized(calibration);
    let mut nets = vec![("", net.clone()), ("int8/", int8.clone())];
    if net.isa() == Isa::Avx512 {
        nets.extend(net.with_isa(Isa::Avx2).map(|net| ("avx2/", net)));
        nets.extend(int8.with_isa(Isa::Avx2).map(|net| ("int8/avx2/", net)));
    }
    let mut group = c.benchmark_group("fastcnn");
    for (name, net) in &nets {
        for batch in [1usize, 16, 64] {
            let images = filled(batch * IMAGE_FLOATS, 1.0);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::from_parameter(format!("{name}{batch}")),
                &images,
                |b, x| {
                    b.iter_custom(|iters| {
                        pool.install(|| {
                            let start = Instant::now();
                            for _ in 0..iters {
                                black_box(net.forward(x));
                            }
                            start.elapsed()
                        })
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
