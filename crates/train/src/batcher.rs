//! Turning samples into model batches, with the training augmentation.
//!
//! Augmentation (random crop with zero padding, horizontal flip) works on
//! the stored low-resolution image; the batcher then applies the model crate's [`resize`] and
//! [`normalize_into`], exactly what the server does to an upload. When the run distils, each
//! batch also carries the teacher's answers for exactly the views drawn ([`View`],
//! [`crate::teacher`]): read from its stored answers, or from a live teacher run on the batch's
//! own pixels, which may then be mixed (mixup) first.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use image::RgbImage;
use model::preprocess::{normalize_into, resize, to_tensor};
use model::{IMAGE_FLOATS, NUM_CLASSES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use model::dataset::Sample;

use crate::teacher::{Answers, TeacherLogits, log_answer};

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
    /// Where the teacher's answers come from, when the run distils.
    teacher: Option<Teacher>,
    /// Blend each image with its partner in the batch (needs a live teacher to label them).
    mixup: bool,
    rng: Arc<Mutex<StdRng>>,
}

/// Where a distilling batch's teacher answers come from.
#[derive(Clone)]
enum Teacher {
    /// Stored answers for every view of every training image (`train teach`).
    Stored(Arc<TeacherLogits>),
    /// A network run on each batch's pixels: behind a lock, since loader workers share it.
    Live(Arc<Mutex<Box<dyn Answers>>>),
}

impl CifarBatcher {
    /// A batcher that augments with `augment` pixels of crop padding (`None`: no augmentation,
    /// for validation and test), drawing from a generator seeded with `seed`.
    pub fn new(augment: Option<u32>, seed: u64) -> Self {
        Self {
            augment,
            teacher: None,
            mixup: false,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Batches also carry `teacher`'s answers for the views drawn. The teacher must cover the
    /// crop padding this batcher augments with ([`TeacherLogits::check`]).
    #[must_use]
    pub fn with_teacher(mut self, teacher: Arc<TeacherLogits>) -> Self {
        self.teacher = Some(Teacher::Stored(teacher));
        self
    }

    /// Batches also carry `teacher`'s answers for their own pixels, computed as each batch is
    /// made; with `mixup`, those pixels are blends ([`mix`]) of the batch's images.
    #[must_use]
    pub fn with_live_teacher(mut self, teacher: Box<dyn Answers>, mixup: bool) -> Self {
        self.teacher = Some(Teacher::Live(Arc::new(Mutex::new(teacher))));
        self.mixup = mixup;
        self
    }

    /// The generator, whatever a panicking holder left ([`locked`]).
    fn rng(&self) -> MutexGuard<'_, StdRng> {
        locked(&self.rng)
    }

    /// The view each image is shown in: a random one when augmenting, else the image itself.
    fn views(&self, n: usize) -> Vec<View> {
        let Some(pad) = self.augment else {
            return vec![View::PLAIN; n];
        };
        let mut rng = self.rng();
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
        let mut floats = render(items.iter().map(|i| &i.sample.image), &views);
        if self.mixup {
            let weight = self.rng().random::<f32>();
            floats = mix(&floats, weight);
        }
        let teacher = self.teacher.as_ref().map(|teacher| {
            let answers = match teacher {
                Teacher::Stored(stored) => {
                    let mut answers = vec![0.0f32; n * NUM_CLASSES];
                    for ((item, view), out) in items
                        .iter()
                        .zip(&views)
                        .zip(answers.chunks_exact_mut(NUM_CLASSES))
                    {
                        stored.read(item.index, *view, out);
                    }
                    answers
                }
                Teacher::Live(live) => locked(live)
                    .probabilities(&floats)
                    .into_iter()
                    .map(log_answer)
                    .collect(),
            };
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

/// `mutex`'s guard even when a holder panicked: what the batcher shares (the generator, a
/// teacher network) holds no half-made state, and a lost batch must not stop the loader.
fn locked<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Mixup over a batch of preprocessed images: image `i` becomes `weight · image i + (1 − weight)
/// · image n−1−i` (the batch reversed is the partner: no second draw, and every image is
/// blended). Blending normalised floats is blending pixels: normalisation is affine and the
/// weights sum to 1.
pub(crate) fn mix(floats: &[f32], weight: f32) -> Vec<f32> {
    let images: Vec<&[f32]> = floats.chunks_exact(IMAGE_FLOATS).collect();
    images
        .iter()
        .zip(images.iter().rev())
        .flat_map(|(a, b)| {
            a.iter()
                .zip(b.iter())
                .map(move |(a, b)| weight * a + (1.0 - weight) * b)
        })
        .collect()
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
    use crate::teacher::LOWEST;

    /// A batch tensor's values, in order.
    fn floats<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    /// `n` (at most 7) made-up images, each unlike the others and unlike its own shifted views
    /// (hashed pixels), labelled with their number. Their blue channels are flat and far apart
    /// (40 × the number) so that a blend's weight can be read back from one blue pixel.
    fn made_up(n: u32) -> Vec<Sample> {
        assert!(n <= 7, "blue 40 × n fits a byte");
        (0..n)
            .map(|i| Sample {
                image: RgbImage::from_fn(32, 32, |x, y| {
                    let v = (x * 7 + y * 13 + i * 31).wrapping_mul(2_654_435_761) >> 24;
                    image::Rgb([v as u8, (v >> 3) as u8, (i * 40) as u8])
                }),
                label: i as u8,
            })
            .collect()
    }

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
        let samples = made_up(6);
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
            let images = floats(batch.images);
            let taught = floats(batch.teacher.unwrap());
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

    /// A made-up teacher whose answer is a function of the pixels it is given: the
    /// probabilities of a softmax over each image's first 10 floats.
    struct PixelTeacher;

    impl Answers for PixelTeacher {
        fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
            pixels
                .chunks_exact(IMAGE_FLOATS)
                .flat_map(|image| model::predict::softmax(&image[..NUM_CLASSES], NUM_CLASSES))
                .collect()
        }
    }

    /// With a live teacher and mixup, each batch holds blends of its own images' views by one
    /// weight, and the teacher's answer for exactly the blended pixels the student is shown.
    #[test]
    fn a_live_teacher_answers_for_the_mixed_pixels_the_student_sees() {
        let samples = made_up(5);
        let plain = CifarBatcher::new(None, 0).pixels(&samples);
        let batcher = CifarBatcher::new(None, 5).with_live_teacher(Box::new(PixelTeacher), true);
        let device = model::Backend::default().device();
        let mut weights = Vec::new();
        for _ in 0..4 {
            let batch = batcher.batch(numbered(samples.clone()), &device);
            let images = floats(batch.images);
            // The one weight that blends image 0 with image 4 (their blue channels differ).
            let blue = 2 * 64 * 64;
            let (a, b) = (plain[blue], plain[4 * IMAGE_FLOATS + blue]);
            let weight = (images[blue] - b) / (a - b);
            assert!((0.0..=1.0).contains(&weight), "{weight}");
            let expected = mix(&plain, weight);
            for (got, want) in images.iter().zip(&expected) {
                assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            }
            let taught = floats(batch.teacher.unwrap());
            let answers = PixelTeacher.probabilities(&images);
            for (t, p) in taught.iter().zip(&answers) {
                assert!((t - p.ln().max(LOWEST)).abs() < 1e-5, "{t} vs {p}");
            }
            weights.push(weight);
        }
        assert!(
            weights.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3),
            "a weight is drawn for every batch: {weights:?}"
        );
    }

    #[test]
    fn mixup_blends_each_image_with_the_batch_reversed() {
        let floats: Vec<f32> = (0..3 * IMAGE_FLOATS)
            .map(|i| (i / IMAGE_FLOATS) as f32)
            .collect();
        let mixed = mix(&floats, 0.25);
        // Images 0, 1, 2 hold 0, 1, 2 everywhere: 0 with 2, 1 with itself, 2 with 0.
        assert!(mixed[..IMAGE_FLOATS].iter().all(|&v| v == 1.5));
        assert!(
            mixed[IMAGE_FLOATS..2 * IMAGE_FLOATS]
                .iter()
                .all(|&v| v == 1.0)
        );
        assert!(mixed[2 * IMAGE_FLOATS..].iter().all(|&v| v == 0.5));
    }
}
