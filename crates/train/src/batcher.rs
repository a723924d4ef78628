//! Turning samples into model batches, with the training augmentation.
//!
//! Augmentation (random crop with zero padding, horizontal flip) works on
//! the stored low-resolution image; the batcher then applies the model crate's [`resize`] and
//! [`normalize_into`], exactly what the server does to an upload. When the run distils, each
//! batch also carries the teacher's stored answers for exactly the views drawn ([`View`],
//! [`crate::teacher`]).

use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use image::RgbImage;
use model::preprocess::{normalize_into, resize, to_tensor};
use model::{IMAGE_FLOATS, NUM_CLASSES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use model::dataset::Sample;

use crate::teacher::TeacherLogits;

/// A training or validation image with its position in the data set's training split: the key
/// of the teacher's stored answers.
#[derive(Clone, Debug)]
pub struct Item {
    /// Position in the training split as [`model::dataset`] reads it, before the hold-out.
    pub index: usize,
    /// The image and its label.
    pub sample: Sample,
}

/// Numbers `samples` by their position (the whole training split, in the data set's order).
pub fn numbered(samples: Vec<Sample>) -> Vec<Item> {
    samples
        .into_iter()
        .enumerate()
        .map(|(index, sample)| Item { index, sample })
        .collect()
}

/// A batch of normalised images and their labels.
#[derive(Clone, Debug)]
pub struct CifarBatch {
    /// `[n, 3, 64, 64]`, preprocessed exactly as the server preprocesses an upload.
    pub images: Tensor<4>,
    /// `[n]` class indices (into `model::CLASSES`), the cross-entropy targets.
    pub targets: Tensor<1, Int>,
    /// `[n, 10]` the teacher's log-probabilities for each image's view, when distilling.
    pub teacher: Option<Tensor<2>>,
}

/// Builds [`CifarBatch`]es; augments when asked. Clones share one seeded generator, so a run
/// with one loader worker draws the same augmentations every time.
#[derive(Clone)]
pub struct CifarBatcher {
    /// Crop padding in pixels when augmenting; `None`: images pass as they are.
    augment: Option<u32>,
    /// The teacher's answers for every view, when the run distils.
    teacher: Option<Arc<TeacherLogits>>,
    rng: Arc<Mutex<StdRng>>,
}

impl CifarBatcher {
    /// A batcher that augments with `augment` pixels of crop padding (`None`: no augmentation,
    /// for validation and test), drawing from a generator seeded with `seed`.
    pub fn new(augment: Option<u32>, seed: u64) -> Self {
        Self {
            augment,
            teacher: None,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Batches also carry `teacher`'s answers for the views drawn. The teacher must cover the
    /// crop padding this batcher augments with ([`TeacherLogits::check`]).
    #[must_use]
    pub fn with_teacher(mut self, teacher: Arc<TeacherLogits>) -> Self {
        self.teacher = Some(teacher);
        self
    }

    /// The view each image is shown in: a random one when augmenting, else the image itself.
    fn views(&self, n: usize) -> Vec<View> {
        let Some(pad) = self.augment else {
            return vec![View::PLAIN; n];
        };
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (0..n).map(|_| View::random(pad, &mut *rng)).collect()
    }

    /// Normalised CHW floats for `items`, concatenated.
    pub fn pixels(&self, items: &[Sample]) -> Vec<f32> {
        render(items.iter().map(|s| &s.image), &self.views(items.len()))
    }
}

/// Each image in its view, preprocessed as the server preprocesses an upload, concatenated.
pub(crate) fn render<'a>(images: impl Iterator<Item = &'a RgbImage>, views: &[View]) -> Vec<f32> {
    let mut floats = vec![0.0; views.len() * IMAGE_FLOATS];
    for ((image, view), out) in images.zip(views).zip(floats.chunks_exact_mut(IMAGE_FLOATS)) {
        normalize_into(&resize(&view.apply(image)), out);
    }
    floats
}

impl Batcher<Item, CifarBatch> for CifarBatcher {
    fn batch(&self, items: Vec<Item>, device: &Device) -> CifarBatch {
        let n = items.len();
        let views = self.views(n);
        let floats = render(items.iter().map(|i| &i.sample.image), &views);
        let teacher = self.teacher.as_ref().map(|teacher| {
            let mut answers = vec![0.0f32; n * NUM_CLASSES];
            for ((item, view), out) in items
                .iter()
                .zip(&views)
                .zip(answers.chunks_exact_mut(NUM_CLASSES))
            {
                teacher.read(item.index, *view, out);
            }
            Tensor::<2>::from_data(TensorData::new(answers, [n, NUM_CLASSES]), device)
        });
        let images = to_tensor(floats, n, device);
        let labels: Vec<i64> = items.iter().map(|s| i64::from(s.sample.label)).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device);
        CifarBatch {
            images,
            targets,
            teacher,
        }
    }
}

/// One augmented view of a stored image: the crop's offset and whether it is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Horizontal offset of the crop: the shifted image's pixel `(x, y)` is the stored one's
    /// `(x + dx, y + dy)`, in pixels of the stored image.
    pub dx: i64,
    /// Vertical offset of the crop.
    pub dy: i64,
    /// The shifted image mirrored left to right.
    pub flip: bool,
}

impl View {
    /// The image as it is.
    pub const PLAIN: Self = Self {
        dx: 0,
        dy: 0,
        flip: false,
    };

    /// A view drawn uniformly: shifts in `-pad..=pad`, then a coin-flip mirror.
    pub fn random(pad: u32, rng: &mut impl Rng) -> Self {
        let pad = i64::from(pad);
        let dx = rng.random_range(-pad..=pad);
        let dy = rng.random_range(-pad..=pad);
        let flip = rng.random_bool(0.5);
        Self { dx, dy, flip }
    }

    /// How many distinct views a crop padding of `pad` gives: `(2·pad + 1)² × 2`.
    pub fn count(pad: u32) -> usize {
        let side = 2 * pad as usize + 1;
        side * side * 2
    }

    /// This view's place in [`View::all`]`(pad)`.
    pub fn index(self, pad: u32) -> usize {
        let pad = i64::from(pad);
        let side = 2 * pad + 1;
        (((self.dy + pad) * side + self.dx + pad) * 2) as usize + usize::from(self.flip)
    }

    /// Every view of crop padding `pad`, in index order.
    pub fn all(pad: u32) -> impl Iterator<Item = Self> {
        let pad = i64::from(pad);
        (-pad..=pad).flat_map(move |dy| {
            (-pad..=pad).flat_map(move |dx| [false, true].map(|flip| Self { dx, dy, flip }))
        })
    }

    /// The view of `src`: cropped at the offsets (uncovered pixels black), then mirrored if
    /// asked.
    pub fn apply(self, src: &RgbImage) -> RgbImage {
        let (w, h) = src.dimensions();
        RgbImage::from_fn(w, h, |x, y| {
            let sx = i64::from(if self.flip { w - 1 - x } else { x }) + self.dx;
            let sy = i64::from(y) + self.dy;
            if sx < 0 || sy < 0 || sx >= i64::from(w) || sy >= i64::from(h) {
                image::Rgb([0, 0, 0])
            } else {
                *src.get_pixel(sx as u32, sy as u32)
            }
        })
    }
}

/// Random crop from the image padded with black by `pad` pixels, then a coin-flip mirror.
pub fn augment(src: &RgbImage, pad: u32, rng: &mut impl Rng) -> RgbImage {
    View::random(pad, rng).apply(src)
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

    #[test]
    fn views_are_numbered_densely_in_their_listing_order() {
        for pad in [0, 2, 4] {
            let all: Vec<View> = View::all(pad).collect();
            assert_eq!(all.len(), View::count(pad));
            for (i, view) in all.iter().enumerate() {
                assert_eq!(view.index(pad), i, "{view:?}");
            }
        }
        assert_eq!(View::count(2), 50);
        assert_eq!(View::PLAIN.index(0), 0);
    }

    #[test]
    fn a_drawn_view_is_among_the_listed_ones() {
        let mut rng = StdRng::seed_from_u64(3);
        let all: Vec<View> = View::all(2).collect();
        let mut seen = vec![false; all.len()];
        for _ in 0..2000 {
            let view = View::random(2, &mut rng);
            assert_eq!(all[view.index(2)], view);
            seen[view.index(2)] = true;
        }
        assert!(seen.iter().all(|s| *s), "every view is drawn");
    }

    /// The teacher's answer in each batch is the one for the view that image is shown in: a
    /// made-up teacher whose answer names its image and view, checked against the pixels.
    #[test]
    fn each_image_comes_with_the_teachers_answer_for_its_own_view() {
        let samples: Vec<Sample> = (0..6u32)
            .map(|i| Sample {
                image: RgbImage::from_fn(32, 32, |x, y| {
                    let v = (x * 7 + y * 13 + i * 31).wrapping_mul(2_654_435_761) >> 24;
                    image::Rgb([v as u8, (v >> 1) as u8, i as u8])
                }),
                label: i as u8,
            })
            .collect();
        let views = View::count(2);
        let mut answers = vec![-25.0f32; samples.len() * views * NUM_CLASSES];
        for code in 0..samples.len() * views {
            // Exact in fp16 (steps of 1/16 below 32) and above the stored floor of -30.
            answers[code * NUM_CLASSES] = -(code as f32) / 16.0;
        }
        let teacher = TeacherLogits::from_log_probs(&samples, 2, &answers);
        let batcher = CifarBatcher::new(Some(2), 7).with_teacher(Arc::new(teacher));
        let device = model::Backend::default().device();
        let all: Vec<View> = View::all(2).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let batch = batcher.batch(numbered(samples.clone()), &device);
            let images = batch.images.into_data().try_to_vec::<f32>().unwrap();
            let taught = batch
                .teacher
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for (i, sample) in samples.iter().enumerate() {
                let code = (-taught[i * NUM_CLASSES] * 16.0).round() as usize;
                let (image, view) = (code / views, all[code % views]);
                assert_eq!(image, i);
                let expected = render(std::iter::once(&sample.image), &[view]);
                assert_eq!(
                    images[i * IMAGE_FLOATS..(i + 1) * IMAGE_FLOATS],
                    expected[..]
                );
                seen.insert(code % views);
            }
        }
        assert!(seen.len() > 30, "the views vary: {} seen", seen.len());
    }
}
