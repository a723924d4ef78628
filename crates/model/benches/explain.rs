//! What one explanation costs at batch 1, per method, on a real CIFAR-10 test image and the
//! shipped record, beside the prediction it explains (the fast path's forward pass):
//! Grad-CAM (one forward pass through Burn and the closed-form gradient), occlusion (64
//! greyed copies through the fast path, as the server runs them), gradient × input (one
//! forward and backward pass through Burn's autodiff) and integrated gradients (32 and 128
//! steps, in chunks of 16).
//!
//!     cargo bench -p model --bench explain

// `criterion_group!` defines an undocumented `pub fn`; a bench target exports nothing anyway.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use model::explain::{self, Explainer, Method};
use model::{Backend, Inference, Preprocessor, testdata};

fn explanations(c: &mut Criterion) {
    let backend = Backend::default_inference();
    let (net, _) = model::record::load_shipped(&backend.device()).unwrap();
    let explainer = Explainer::new(&net).unwrap();
    let inference = Inference::new(net, backend).unwrap();
    let image = testdata::images("test", 1).remove(3).bytes;
    let x = Preprocessor::default().preprocess(&image).unwrap();
    let target = explain::target(None, &inference.probabilities(&x));
    let mut group = c.benchmark_group("explain");
    group.bench_function("predict (fast path)", |b| {
        b.iter(|| black_box(inference.probabilities(&x)));
    });
    group.bench_function("forward (Burn, untracked autodiff device)", |b| {
        b.iter(|| black_box(explainer.features(&x)));
    });
    group.bench_function("gradcam", |b| {
        b.iter(|| black_box(explainer.explain(Method::GradCam, &x, target, 0)));
    });
    group.bench_function("occlusion (fast path)", |b| {
        b.iter(|| {
            let batch: Vec<f32> = x
                .iter()
                .copied()
                .chain(explain::occlusion_inputs(&x))
                .collect();
            black_box(explain::occlusion(&inference.probabilities(&batch), target))
        });
    });
    group.bench_function("saliency", |b| {
        b.iter(|| black_box(explainer.explain(Method::Saliency, &x, target, 0)));
    });
    for steps in [32, 128] {
        group.bench_function(format!("integrated-gradients {steps} steps"), |b| {
            b.iter(|| black_box(explainer.explain(Method::IntegratedGradients, &x, target, steps)));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = explanations
}
criterion_main!(benches);
