//! The CPU fast path computes what the reference backend computes: same weights (the shipped
//! record and a freshly initialised network), real CIFAR-10 test images, logits compared.

use model::{Backend, Inference, Preprocessor, testdata};

fn real_images(n: usize) -> Vec<f32> {
    let pre = Preprocessor::default();
    testdata::images("test", n)
        .iter()
        .flat_map(|img| pre.preprocess(&img.bytes).expect("test image decodes"))
        .collect()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fast_path_logits_match_the_reference_backend() {
    let reference = Backend::default();
    let device = reference.device();
    let pixels = real_images(10); // 10 per class: 100 images
    let shipped = model::record::load_shipped(&device)
        .expect("shipped record")
        .0;
    let random = crate::fresh_net(&device);
    for (name, net) in [("shipped", shipped), ("random init", random)] {
        let burn = Inference::new(net.clone(), reference).unwrap();
        let fast = Inference::new(net, Backend::Fast).unwrap();
        // Batches of 1 and 100 take different threading paths in the fast path.
        for batch in [1usize, 100] {
            for chunk in pixels.chunks(batch * model::IMAGE_FLOATS) {
                let want = burn.logits(chunk);
                let got = fast.logits(chunk);
                let diff = max_difference(&got, &want);
                assert!(
                    diff < 1e-4,
                    "{name}, batch {batch}: max |fast - burn| = {diff}"
                );
            }
        }
        let want = burn.predict(&pixels, 3);
        let got = fast.predict(&pixels, 3);
        let same = want
            .iter()
            .zip(&got)
            .filter(|(a, b)| a.best.class_index == b.best.class_index)
            .count();
        assert_eq!(same, want.len(), "{name}: every top-1 class agrees");
    }
}

#[test]
fn empty_input_gives_no_predictions() {
    let inference = Inference::new(crate::fresh_net(&Backend::Fast.device()), Backend::Fast)
        .expect("fast path");
    assert!(inference.predict(&[], 3).is_empty());
}
