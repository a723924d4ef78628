//! Distillation's teacher, stored: the teacher's answer for every augmented view of every
//! training image, computed once before the student trains.
//!
//! The augmentation has few distinct views per image (crop offsets × mirror: 50 at the shipped
//! crop padding of 2 px), so instead of running a teacher beside every student step, its
//! answers are computed once and the student's loss reads the answer for exactly the view it
//! was given ("consistent" distillation: Beyer et al., arXiv 2106.05237, find that a student
//! must see the teacher's answer for its own view). The teacher is an ensemble of records (the
//! served network's, or wider teachers' from `train --arch teacher-…`), averaged in
//! probability; what is stored is the log of that mean, in fp16: 50,000 images × 50 views × 10
//! classes × 2 bytes = 50 MB.
//!
//! The file is keyed by the image's position in the data set's training split as
//! [`model::dataset`] reads it, and carries a fingerprint of those images and labels, so a
//! file made from other data (or another crop padding) is refused instead of teaching wrong
//! answers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use half::f16;
use model::dataset::{self, OnCorrupt, Sample};
use model::predict::values;
use model::preprocess::to_tensor;
use model::teacher::{TeacherNet, load_teacher, teacher_config};
use model::{Backend, IMAGE_FLOATS, Inference, NUM_CLASSES, Network, softmax};

use crate::batcher::{View, render};

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"CNNTEACH";
/// The layout's version, after the magic.
const VERSION: u32 = 1;
/// Magic, version, images, views, crop padding, classes, fingerprint.
const HEADER_BYTES: usize = 8 + 4 * 5 + 8;
/// The least log-probability stored: the log of a probability that rounds to 0 would be -inf
/// (and 0 · -inf is NaN in the loss); e^-30 is far below anything a softmax at a distillation
/// temperature can see.
pub(crate) const LOWEST: f32 = -30.0;

/// A teacher's probability as its answer is kept and read by the loss: its log, floored at
/// [`LOWEST`].
pub(crate) fn log_answer(p: f32) -> f32 {
    p.ln().max(LOWEST)
}
/// Images per teacher forward pass (× the views of each).
const IMAGES_PER_PASS: usize = 8;

/// Why a teacher file cannot be written, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// The file could not be read or written.
    #[error("teacher file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not one this module writes, or is cut short.
    #[error("{path} is not a teacher file ({why})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file was made for other images, another crop padding or another class count.
    #[error(
        "teacher file {path} was made for {made}, but this run trains on {here}: make it again \
         with `train teach` on this data and crop padding"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What the file says it covers.
        made: String,
        /// What this run has.
        here: String,
    },
    /// No record to teach with, or no images.
    #[error("a teacher needs at least one record and one image")]
    Empty,
}

/// A network that can teach: class probabilities (`n × classes`, row-major) for preprocessed
/// images (`n × 3 × 64 × 64` floats).
pub trait Answers: Send {
    /// The probabilities of every class for each image of `pixels`.
    fn probabilities(&self, pixels: &[f32]) -> Vec<f32>;
}

/// A served network's record, on the engine that runs it (the fast path where built).
impl Answers for Inference {
    fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        Inference::probabilities(self, pixels)
    }
}

/// Several teachers as one: the mean of their probabilities (an ensemble).
pub struct Mean(pub Vec<Box<dyn Answers>>);

impl Answers for Mean {
    fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        let mut mean: Vec<f32> = Vec::new();
        for teacher in &self.0 {
            let p = teacher.probabilities(pixels);
            if mean.is_empty() {
                mean = p;
            } else {
                for (m, p) in mean.iter_mut().zip(p) {
                    *m += p;
                }
            }
        }
        let scale = 1.0 / self.0.len().max(1) as f32;
        for m in &mut mean {
            *m *= scale;
        }
        mean
    }
}

/// A wider teacher ([`model::teacher`]), run by Burn on the CPU backend (its fused blocks):
/// the fast path runs the served network's shape only.
pub struct WideTeacher {
    net: TeacherNet,
    device: burn::tensor::Device,
}

/// Images per forward pass of a wide teacher: bounds its working memory (a 64-channel map of
/// 32×32 floats is 256 KiB an image, several of them alive at once).
const WIDE_BATCH: usize = 256;

impl WideTeacher {
    /// A copy of `net` without gradients, on the CPU backend's device.
    pub fn new(net: &TeacherNet) -> Self {
        let device = Backend::default().device();
        let net = net.valid().to_device(&device);
        Self { net, device }
    }

    /// The teacher record at `path`.
    pub fn load(path: &Path) -> Result<Self, model::RecordError> {
        Ok(Self::new(&load_teacher(
            path,
            &Backend::default().device(),
        )?))
    }

    /// The network.
    pub fn net(&self) -> &TeacherNet {
        &self.net
    }
}

impl Answers for WideTeacher {
    fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        // Whole images only, as `Inference` takes them.
        let whole = pixels.len() / IMAGE_FLOATS * IMAGE_FLOATS;
        let mut out = Vec::with_capacity(whole / IMAGE_FLOATS * NUM_CLASSES);
        for chunk in pixels[..whole].chunks(WIDE_BATCH * IMAGE_FLOATS) {
            let x = to_tensor(chunk.to_vec(), chunk.len() / IMAGE_FLOATS, &self.device);
            out.extend(softmax(&values(self.net.forward(x)), NUM_CLASSES));
        }
        out
    }
}

/// The teacher's log-probabilities for every view of every training image.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherLogits {
    images: usize,
    pad: u32,
    fingerprint: u64,
    /// `[image][view][class]`.
    values: Vec<f16>,
}

impl TeacherLogits {
    /// Runs every record on every view of every image of `samples` (the whole training split,
    /// in the data set's order) and keeps the log of their mean probabilities. `progress` is
    /// told how many images are done.
    pub fn compute(
        teachers: &Mean,
        samples: &[Sample],
        pad: u32,
        mut progress: impl FnMut(usize),
    ) -> Result<Self, TeacherError> {
        if teachers.0.is_empty() || samples.is_empty() {
            return Err(TeacherError::Empty);
        }
        let views: Vec<View> = View::all(pad).collect();
        let per_image = views.len() * NUM_CLASSES;
        let mut values = Vec::with_capacity(samples.len() * per_image);
        for (done, chunk) in samples.chunks(IMAGES_PER_PASS).enumerate() {
            let images = chunk
                .iter()
                .flat_map(|s| std::iter::repeat_n(&s.image, views.len()));
            let chunk_views: Vec<View> = views
                .iter()
                .copied()
                .cycle()
                .take(chunk.len() * views.len())
                .collect();
            let pixels = render(images, &chunk_views);
            let pixels = pixels.as_slice();
            values.extend(
                teachers
                    .probabilities(pixels)
                    .iter()
                    .map(|&m| f16::from_f32(log_answer(m))),
            );
            progress((done * IMAGES_PER_PASS + chunk.len()).min(samples.len()));
        }
        Ok(Self::new(samples, pad, values))
    }

    /// Answers given directly: `log_probs` holds `[image][view][class]` for every image of
    /// `samples` and every view of crop padding `pad` (a teacher made some other way, or a test's
    /// made-up one).
    ///
    /// # Panics
    /// If `log_probs` is not that long.
    pub fn from_log_probs(samples: &[Sample], pad: u32, log_probs: &[f32]) -> Self {
        assert_eq!(
            log_probs.len(),
            samples.len() * View::count(pad) * NUM_CLASSES,
            "one answer per image, view and class"
        );
        Self::new(
            samples,
            pad,
            log_probs
                .iter()
                .map(|&v| f16::from_f32(v.max(LOWEST)))
                .collect(),
        )
    }

    fn new(samples: &[Sample], pad: u32, values: Vec<f16>) -> Self {
        Self {
            images: samples.len(),
            pad,
            fingerprint: fingerprint(samples),
            values,
        }
    }

    /// How many training images the file covers.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The crop padding whose views the file covers.
    pub fn crop_padding(&self) -> u32 {
        self.pad
    }

    /// The teacher's log-probabilities for `view` of image `image` (its position in the
    /// training split), written into `out`.
    pub fn read(&self, image: usize, view: View, out: &mut [f32]) {
        let views = View::count(self.pad);
        let at = (image * views + view.index(self.pad)) * NUM_CLASSES;
        for (o, v) in out.iter_mut().zip(&self.values[at..at + NUM_CLASSES]) {
            *o = v.to_f32();
        }
    }

    /// Refuses to teach a run whose training images, labels or crop padding differ from those
    /// the file was made for.
    pub fn check(&self, path: &Path, samples: &[Sample], pad: u32) -> Result<(), TeacherError> {
        let here = (samples.len(), pad, fingerprint(samples));
        if here != (self.images, self.pad, self.fingerprint) {
            return Err(TeacherError::Mismatch {
                path: path.to_owned(),
                made: describe(self.images, self.pad, self.fingerprint),
                here: describe(here.0, here.1, here.2),
            });
        }
        Ok(())
    }

    /// The file's bytes: a header, then the values as little-endian fp16.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.values.len() * 2);
        bytes.extend_from_slice(MAGIC);
        for n in [
            VERSION,
            u32::try_from(self.images).expect("fewer than 2^32 images"),
            u32::try_from(View::count(self.pad)).expect("few views"),
            self.pad,
            NUM_CLASSES as u32,
        ] {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        bytes.extend_from_slice(&self.fingerprint.to_le_bytes());
        for v in &self.values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    /// Writes the file atomically (a stopped `train teach` leaves no partial file behind).
    pub fn save(&self, path: &Path) -> Result<(), TeacherError> {
        crate::checkpoint::write_atomic(path, &self.to_bytes()).map_err(|e| TeacherError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("{e:#}")),
        })
    }

    /// Reads a file [`TeacherLogits::save`] wrote, checking its header and length.
    pub fn load(path: &Path) -> Result<Self, TeacherError> {
        let io = |source| TeacherError::Io {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        Self::from_bytes(&bytes).map_err(|why| TeacherError::Format {
            path: path.to_owned(),
            why,
        })
    }

    /// Parses [`TeacherLogits::to_bytes`]' layout; `Err` says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err("no teacher header".into());
        }
        let word = |i: usize| {
            let at = 8 + 4 * i;
            u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
        };
        let (version, images, views, pad, classes) = (word(0), word(1), word(2), word(3), word(4));
        if version != VERSION {
            return Err(format!(
                "layout version {version}, this build reads {VERSION}"
            ));
        }
        if classes as usize != NUM_CLASSES || pad > 16 || views as usize != View::count(pad) {
            return Err(format!(
                "{views} views of crop padding {pad} and {classes} classes do not fit together"
            ));
        }
        let fingerprint = u64::from_le_bytes(bytes[28..36].try_into().expect("8 bytes"));
        let count = images as usize * views as usize * NUM_CLASSES;
        let body = &bytes[HEADER_BYTES..];
        if body.len() != count * 2 {
            return Err(format!(
                "{} bytes of values where {images} images × {views} views need {}",
                body.len(),
                count * 2
            ));
        }
        let values: Vec<f16> = body
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect();
        if values.iter().any(|v| !v.is_finite() || *v > f16::ZERO) {
            return Err("values that are not log-probabilities".into());
        }
        Ok(Self {
            images: images as usize,
            pad,
            fingerprint,
            values,
        })
    }
}

fn describe(images: usize, pad: u32, fingerprint: u64) -> String {
    format!("{images} images (fingerprint {fingerprint:016x}) at crop padding {pad}")
}

/// FNV-1a over every label and pixel of `samples`, in order: two data sets (or two orders of
/// one) that differ anywhere differ here.
pub fn fingerprint(samples: &[Sample]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for sample in samples {
        eat(sample.label);
        for &byte in sample.image.as_raw() {
            eat(byte);
        }
    }
    hash
}

/// A record that can teach, from a file or a run folder holding one (`model::record::find`):
/// a teacher run's `teacher.safetensors` ([`WideTeacher`]), or a served network's record on
/// `engine` (the fast path where built).
pub fn load_answers(path: &Path, engine: Backend) -> anyhow::Result<Box<dyn Answers>> {
    use anyhow::Context as _;
    let load = || -> anyhow::Result<Box<dyn Answers>> {
        let file = model::record::find(path)?;
        if teacher_config(&file)?.is_some() {
            return Ok(Box::new(WideTeacher::load(&file)?));
        }
        let (net, _) = model::load_model(&file, &engine.device())?;
        Ok(Box::new(Inference::new(net, engine)?))
    };
    load().with_context(|| format!("cannot load teacher record {}", path.display()))
}

/// `train teach`: averages `records` (files, or run folders holding one) over every view of
/// every training image of `data` and writes the answers to `out`.
pub fn teach(
    records: &[PathBuf],
    data: &Path,
    pad: u32,
    out: &Path,
    on_corrupt: OnCorrupt,
) -> anyhow::Result<()> {
    let engine = Backend::default_inference();
    let teachers = records
        .iter()
        .map(|path| load_answers(path, engine))
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Mean)?;
    let train = dataset::detect(data)?.train(on_corrupt)?;
    let started = Instant::now();
    let total = train.samples.len();
    println!(
        "teaching with {} record(s) on {total} images × {} views (crop padding {pad}; served \
         records on {engine}, wide teachers on {})",
        teachers.0.len(),
        View::count(pad),
        Backend::default()
    );
    let mut shown = 0;
    let logits = TeacherLogits::compute(&teachers, &train.samples, pad, |done| {
        if done >= shown + total / 20 || done == total {
            shown = done;
            println!(
                "{done}/{total} images, {:.0} views/s",
                (done * View::count(pad)) as f64 / started.elapsed().as_secs_f64()
            );
        }
    })?;
    logits.save(out)?;
    println!(
        "teacher answers for {total} images written to {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn samples(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                image: RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, i as u8])),
                label: (i % NUM_CLASSES) as u8,
            })
            .collect()
    }

    fn made_up(samples: &[Sample], pad: u32) -> TeacherLogits {
        let n = samples.len() * View::count(pad) * NUM_CLASSES;
        let values: Vec<f32> = (0..n).map(|i| -((i % 997) as f32) / 8.0).collect();
        TeacherLogits::from_log_probs(samples, pad, &values)
    }

    #[test]
    fn the_file_round_trips_and_reads_each_view() {
        let data = samples(3);
        let teacher = made_up(&data, 2);
        let back = TeacherLogits::from_bytes(&teacher.to_bytes()).unwrap();
        assert_eq!(back, teacher);
        let mut out = [0.0f32; NUM_CLASSES];
        let view = View {
            dx: 1,
            dy: -2,
            flip: true,
        };
        back.read(2, view, &mut out);
        let at = (2 * 50 + view.index(2)) * NUM_CLASSES;
        let expected: Vec<f32> = (at..at + NUM_CLASSES)
            .map(|i| f16::from_f32(-((i % 997) as f32) / 8.0).to_f32())
            .collect();
        assert_eq!(out.to_vec(), expected);
        back.check(Path::new("t"), &data, 2).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_with_what_is_wrong() {
        let data = samples(2);
        let bytes = made_up(&data, 1).to_bytes();
        let cases: [(&[u8], &str); 4] = [
            (b"", "no teacher header"),
            (&bytes[..bytes.len() - 1], "bytes of values"),
            (
                &[&bytes[..8], &[9, 0, 0, 0], &bytes[12..]].concat(),
                "layout version 9",
            ),
            (
                &[&bytes[..16], &[7, 0, 0, 0], &bytes[20..]].concat(),
                "do not fit",
            ),
        ];
        for (damaged, why) in cases {
            let err = TeacherLogits::from_bytes(damaged).unwrap_err();
            assert!(err.contains(why), "{err} (expected {why})");
        }
        for wrong in [0.5, f32::NEG_INFINITY, f32::NAN] {
            let mut damaged = bytes.clone();
            let last = damaged.len() - 2;
            damaged[last..].copy_from_slice(&f16::from_f32(wrong).to_le_bytes());
            let err = TeacherLogits::from_bytes(&damaged).unwrap_err();
            assert!(err.contains("not log-probabilities"), "{wrong}: {err}");
        }
        // Made-up answers are floored where fp16 (or the loss) would overflow.
        let data = samples(1);
        let tiny = vec![-1e9f32; View::count(0) * NUM_CLASSES];
        let floored = TeacherLogits::from_log_probs(&data, 0, &tiny);
        assert!(TeacherLogits::from_bytes(&floored.to_bytes()).is_ok());
    }

    #[test]
    fn a_teacher_for_other_images_or_views_is_refused() {
        let data = samples(4);
        let teacher = made_up(&data, 2);
        let mut relabelled = data.clone();
        relabelled[3].label = 0;
        let mut repainted = data.clone();
        repainted[0].image.put_pixel(5, 5, image::Rgb([1, 2, 3]));
        for (other, pad) in [
            (&data[..3], 2),
            (&relabelled[..], 2),
            (&repainted[..], 2),
            (&data[..], 1),
        ] {
            let err = teacher.check(Path::new("t.bin"), other, pad).unwrap_err();
            assert!(matches!(err, TeacherError::Mismatch { .. }), "{err}");
        }
    }

    #[test]
    fn computed_answers_are_the_records_mean_probabilities_per_view() {
        let data = samples(3);
        let device = Backend::default().device();
        let nets: Vec<model::Cnn> = (0..2)
            .map(|seed| {
                device.seed(seed);
                model::Cnn::init(&device)
            })
            .collect();
        let teachers = Mean(
            nets.iter()
                .map(|n| -> Box<dyn Answers> {
                    Box::new(Inference::new(n.clone(), Backend::default()).unwrap())
                })
                .collect(),
        );
        let logits = TeacherLogits::compute(&teachers, &data, 1, |_| {}).unwrap();
        assert_eq!(logits.images(), 3);
        let view = View {
            dx: -1,
            dy: 1,
            flip: true,
        };
        let pixels = render(std::iter::once(&data[1].image), &[view]);
        let mean: Vec<f32> = teachers
            .0
            .iter()
            .map(|t| t.probabilities(&pixels))
            .fold(vec![0.0; NUM_CLASSES], |acc, p| {
                acc.iter().zip(&p).map(|(a, b)| a + b / 2.0).collect()
            });
        let mut out = [0.0f32; NUM_CLASSES];
        logits.read(1, view, &mut out);
        for (o, m) in out.iter().zip(&mean) {
            assert!((o.exp() - m).abs() < 2e-3, "{out:?} vs {mean:?}");
        }
        assert!(matches!(
            TeacherLogits::compute(&Mean(Vec::new()), &data, 1, |_| {}),
            Err(TeacherError::Empty)
        ));
    }
}
