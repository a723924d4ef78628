//! Turning samples into model batches, with the training augmentation.
//!
//! Augmentation (random crop with zero padding, horizontal flip) works on
//! the stored low-resolution image; the batcher then applies the model crate's [`resize`] and
//! [`normalize_into`], exactly what the server does to an upload.

use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use image::RgbImage;
use model::IMAGE_FLOATS;
use model::preprocess::{normalize_into, resize, to_tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use model::dataset::Sample;

/// A batch of normalised images and their labels.
#[derive(Clone, Debug)]
pub struct CifarBatch {
    /// `[n, 3, 64, 64]`, preprocessed exactly as the server preprocesses an upload.
    pub images: Tensor<4>,
    /// `[n]` class indices (into `model::CLASSES`), the cross-entropy targets.
    pub targets: Tensor<1, Int>,
}

/// Builds [`CifarBatch`]es; augments when asked. Clones share one seeded generator, so a run
/// with one loader worker draws the same augmentations every time.
#[derive(Clone)]
pub struct CifarBatcher {
    /// Crop padding in pixels when augmenting; `None`: images pass as they are.
    augment: Option<u32>,
    rng: Arc<Mutex<StdRng>>,
}

impl CifarBatcher {
    /// A batcher that augments with `augment` pixels of crop padding (`None`: no augmentation,
    /// for validation and test), drawing from a generator seeded with `seed`.
    pub fn new(augment: Option<u32>, seed: u64) -> Self {
        Self {
            augment,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Normalised CHW floats for `items`, concatenated.
    pub fn pixels(&self, items: &[Sample]) -> Vec<f32> {
        let mut floats = vec![0.0; items.len() * IMAGE_FLOATS];
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (item, out) in items.iter().zip(floats.chunks_exact_mut(IMAGE_FLOATS)) {
            match self.augment {
                Some(pad) => normalize_into(&resize(&augment(&item.image, pad, &mut *rng)), out),
                None => normalize_into(&resize(&item.image), out),
            }
        }
        floats
    }
}

impl Batcher<Sample, CifarBatch> for CifarBatcher {
    fn batch(&self, items: Vec<Sample>, device: &Device) -> CifarBatch {
        let n = items.len();
        let images = to_tensor(self.pixels(&items), n, device);
        let labels: Vec<i64> = items.iter().map(|s| i64::from(s.label)).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device);
        CifarBatch { images, targets }
    }
}

/// Random crop from the image padded with black by `pad` pixels, then a coin-flip mirror.
pub fn augment(src: &RgbImage, pad: u32, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = src.dimensions();
    let pad = i64::from(pad);
    let dx = rng.random_range(-pad..=pad);
    let dy = rng.random_range(-pad..=pad);
    let flip = rng.random_bool(0.5);
    RgbImage::from_fn(w, h, |x, y| {
        let sx = i64::from(if flip { w - 1 - x } else { x }) + dx;
        let sy = i64::from(y) + dy;
        if sx < 0 || sy < 0 || sx >= i64::from(w) || sy >= i64::from(h) {
            image::Rgb([0, 0, 0])
        } else {
            *src.get_pixel(sx as u32, sy as u32)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augment_keeps_size_and_content() {
        let src = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 100]));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let out = augment(&src, 4, &mut rng);
            assert_eq!(out.dimensions(), (32, 32));
            // The crop moves by at most 4 pixels: the centre pixel's blue channel survives.
            assert_eq!(out.get_pixel(16, 16)[2], 100);
        }
    }

    #[test]
    fn plain_batches_match_the_server_path() {
        let src = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut png = std::io::Cursor::new(Vec::new());
        src.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let served = model::Preprocessor::default()
            .preprocess(png.get_ref())
            .unwrap();
        let trained = CifarBatcher::new(None, 0).pixels(&[Sample {
            image: src,
            label: 0,
        }]);
        assert_eq!(served, trained);
    }
}
