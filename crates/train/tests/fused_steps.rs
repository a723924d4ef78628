//! Training through the fused convolution blocks follows the generic Burn path: five AdamW
//! steps from the same weights on the same real CIFAR-10 batches give the same losses.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use model::preprocess::to_tensor;
use model::{CLASSES, Preprocessor, testdata};

fn losses(fused: bool) -> Vec<f32> {
    let device = Device::flex().autodiff();
    let (mut net, _) = model::record::load_shipped(&device).unwrap();
    let loss = CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.1))
        .init(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.05).init();
    let pre = Preprocessor::default();
    let images = testdata::images("train", 8);
    let mut out = Vec::new();
    for batch in images.chunks(16).take(5) {
        let pixels: Vec<f32> = batch
            .iter()
            .flat_map(|img| pre.preprocess(&img.bytes).unwrap())
            .collect();
        let labels: Vec<i64> = batch
            .iter()
            .map(|img| CLASSES.iter().position(|c| *c == img.class).unwrap() as i64)
            .collect();
        let x = to_tensor(pixels, batch.len(), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), &device);
        let logits = if fused {
            net.forward(x)
        } else {
            net.forward_unfused(x)
        };
        let l = loss.forward(logits, y);
        out.push(l.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(l.backward(), &net);
        net = optim.step(2e-3, net, grads);
    }
    out
}

#[test]
fn five_adamw_steps_give_the_same_losses_on_both_paths() {
    let (fused, generic) = (losses(true), losses(false));
    eprintln!("fused {fused:?}\ngeneric {generic:?}");
    assert_eq!(fused.len(), 5);
    for (a, b) in fused.iter().zip(&generic) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{fused:?} vs {generic:?}");
    }
    // The steps changed the weights: the losses are not all the same.
    assert!(fused.windows(2).any(|w| w[0] != w[1]));
}
