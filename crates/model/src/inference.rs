//! Running the network for predictions: on a Burn backend, or on the CPU fast path built from
//! the same module's weights. Callers hand over preprocessed pixels and get logits or ranked
//! predictions back, whichever engine runs underneath; with test-time augmentation switched on
//! ([`Inference::with_tta`], [`Tta`]) the probabilities are the mean over several views of each
//! image: with its mirror, or with its mirror and shifted copies of both.
//!
//! [`Gathered`] is how a caller with a list of files, some of which failed before the model
//! (unreadable, undecodable), sends the rest to the model in one call and matches the answers
//! back to the files, failures in their places: [`Inference::predict_each`] in one go, or in
//! two steps around a model call made elsewhere (the server's batching engine).

use burn::prelude::*;
use fastcnn::{FastCnn, Precision};

use crate::backend::Backend;
use crate::error::RecordError;
use crate::net::Cnn;
use crate::net::INPUT_SIZE;
use crate::predict::{Prediction, rank_probabilities, softmax, values};
use crate::preprocess::{IMAGE_FLOATS, to_tensor};
use crate::record::Int8Calibration;

/// A loaded network ready to classify.
#[derive(Debug)]
pub struct Inference {
    model: Cnn,
    device: Device,
    backend: Backend,
    fast: Option<FastCnn>,
    tta: Tta,
}

/// Test-time augmentation: the views of each image whose class probabilities are averaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tta {
    /// The image alone.
    #[default]
    Off,
    /// The image and its mirror: twice the compute.
    Flip,
    /// The image and its mirror, each also shifted by [`TTA_SHIFT`] pixels left, right, up and
    /// down: ten times the compute. Chosen on the validation split (docs/distillation.md).
    Crops,
}

/// How far [`Tta::Crops`] shifts, in pixels of the 64×64 input: 2 pixels of a 32×32 CIFAR-10
/// image, the training augmentation's crop range.
pub const TTA_SHIFT: isize = 4;

impl Tta {
    /// Every kind, in order of cost.
    pub const ALL: [Tta; 3] = [Tta::Off, Tta::Flip, Tta::Crops];

    /// The name flags and reports use: `off`, `flip`, `crops`.
    pub fn name(self) -> &'static str {
        match self {
            Tta::Off => "off",
            Tta::Flip => "flip",
            Tta::Crops => "crops",
        }
    }

    /// Whether more than the image itself is run.
    pub fn is_on(self) -> bool {
        self != Tta::Off
    }

    /// The views averaged, as [`shifted`]'s `(dx, dy, flip)`: the image itself first.
    pub fn views(self) -> &'static [(isize, isize, bool)] {
        const S: isize = TTA_SHIFT;
        match self {
            Tta::Off => &[(0, 0, false)],
            Tta::Flip => &[(0, 0, false), (0, 0, true)],
            Tta::Crops => &[
                (0, 0, false),
                (0, 0, true),
                (S, 0, false),
                (S, 0, true),
                (-S, 0, false),
                (-S, 0, true),
                (0, S, false),
                (0, S, true),
                (0, -S, false),
                (0, -S, true),
            ],
        }
    }
}

impl std::fmt::Display for Tta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tta {
    type Err = String;

    /// `off`, `flip`, `crops`; the yes/no words a boolean flag took before there were kinds
    /// (`true`/`1`/`on`/`yes`: flip, `false`/`0`/`no`: off) still work.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "false" | "f" | "0" | "no" | "n" => Ok(Tta::Off),
            "flip" | "on" | "true" | "t" | "1" | "yes" | "y" => Ok(Tta::Flip),
            "crops" => Ok(Tta::Crops),
            _ => Err(format!(
                "unknown test-time augmentation '{s}' (expected off, flip or crops)"
            )),
        }
    }
}

impl Inference {
    /// Wraps `model`, which must live on `backend.device()`. For [`Backend::Fast`] the weights
    /// are copied once into the fast path.
    pub fn new(model: Cnn, backend: Backend) -> Result<Self, RecordError> {
        let fast = match backend {
            Backend::Fast => Some(fast_path(&model)?),
            _ => None,
        };
        Ok(Self {
            model,
            device: backend.device(),
            backend,
            fast,
            tta: Tta::Off,
        })
    }

    /// Sets test-time augmentation (off by default): an image's class probabilities become
    /// the mean over `tta`'s views, at that many times the compute. [`Inference::logits`] is
    /// never augmented.
    #[must_use]
    pub fn with_tta(mut self, tta: Tta) -> Self {
        self.tta = tta;
        self
    }

    /// Runs the network in `precision` (FP32 by default). int8 needs the fast backend and the
    /// record's calibration (`int8`, from `cnn calibrate`).
    pub fn with_precision(
        mut self,
        precision: Precision,
        int8: Option<&Int8Calibration>,
    ) -> Result<Self, RecordError> {
        self.fast = match (precision, self.fast.take()) {
            (Precision::Fp32, fast) => fast.map(FastCnn::fp32),
            (Precision::Int8, Some(fast)) => {
                let calibration = int8.ok_or_else(|| {
                    RecordError::Precision(
                        "the record has no int8 calibration (run `cnn calibrate` on it)".into(),
                    )
                })?;
                Some(fast.quantized((*calibration).into()))
            }
            (Precision::Int8, None) => {
                return Err(RecordError::Precision(format!(
                    "int8 runs on the fast backend only, not on {}",
                    self.backend
                )));
            }
        };
        Ok(self)
    }

    /// The arithmetic the forward pass runs in.
    pub fn precision(&self) -> Precision {
        self.fast
            .as_ref()
            .map_or(Precision::Fp32, FastCnn::precision)
    }

    /// The test-time augmentation in use.
    pub fn tta(&self) -> Tta {
        self.tta
    }

    /// The backend that runs the forward pass.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The Burn module the weights come from.
    pub fn model(&self) -> &Cnn {
        &self.model
    }

    /// Logits (`n × classes`, row-major) for `pixels`: `n` preprocessed images back to back.
    pub fn logits(&self, pixels: &[f32]) -> Vec<f32> {
        let n = pixels.len() / IMAGE_FLOATS;
        if n == 0 {
            return Vec::new();
        }
        let pixels = &pixels[..n * IMAGE_FLOATS];
        match &self.fast {
            Some(fast) => fast.forward(pixels),
            None => values(
                self.model
                    .forward(to_tensor(pixels.to_vec(), n, &self.device)),
            ),
        }
    }

    /// Class probabilities (`n × classes`, row-major) for `pixels`: the softmax of the logits,
    /// or with test-time augmentation the mean over its views (one pass of `n` images per
    /// view, so that a batch never takes more than one batch's working memory).
    pub fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        self.scores(pixels).probabilities
    }

    /// The logits and the class probabilities of `pixels` together, from one forward pass
    /// (one per view with test-time augmentation): [`Inference::logits`] and
    /// [`Inference::probabilities`] without computing the logits twice.
    pub fn scores(&self, pixels: &[f32]) -> Scores {
        let classes = self.classes();
        let logits = self.logits(pixels);
        let mut probabilities = softmax(&logits, classes);
        let views = self.tta.views();
        if views.len() > 1 && !probabilities.is_empty() {
            for &(dx, dy, flip) in &views[1..] {
                let view = softmax(&self.logits(&shifted(pixels, dx, dy, flip)), classes);
                for (p, v) in probabilities.iter_mut().zip(view) {
                    *p += v;
                }
            }
            let share = 1.0 / views.len() as f32;
            for p in &mut probabilities {
                *p *= share;
            }
        }
        Scores {
            logits,
            probabilities,
        }
    }

    /// Ranked predictions, keeping the `k` most likely classes of each image.
    pub fn predict(&self, pixels: &[f32], k: usize) -> Vec<Prediction> {
        rank_probabilities(&self.probabilities(pixels), self.classes(), k)
    }

    /// Predicts every item that is ready (its preprocessed pixels), all in one model call, and
    /// returns one answer per item in order: the prediction, or the item's own error.
    pub fn predict_each<K, E>(
        &self,
        items: impl IntoIterator<Item = (K, Result<Vec<f32>, E>)>,
        k: usize,
    ) -> Vec<(K, Result<Prediction, E>)> {
        let (gathered, images) = Gathered::split(items);
        let pixels = images.concat();
        drop(images);
        gathered.answer(self.predict(&pixels, k))
    }

    fn classes(&self) -> usize {
        self.model.fc2.weight.dims()[1]
    }
}

/// What the network says about some images, each `n × classes`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The last layer's outputs (never test-time augmented).
    pub logits: Vec<f32>,
    /// Class probabilities: the softmax of the logits, or with test-time augmentation the mean
    /// over the image's views.
    pub probabilities: Vec<f32>,
}

/// `pixels` (preprocessed CHW images back to back) mirrored left to right: every row of every
/// channel reversed.
pub fn mirror(pixels: &[f32]) -> Vec<f32> {
    let mut out = pixels.to_vec();
    out.chunks_exact_mut(INPUT_SIZE).for_each(<[f32]>::reverse);
    out
}

/// A view of `pixels` (preprocessed CHW images back to back): mirrored left to right when
/// `flip`, then shifted so that the output's pixel `(x, y)` is the input's `(x + dx, y + dy)`,
/// black (the normalised -1) where that falls outside, as the training crop pads with black.
pub fn shifted(pixels: &[f32], dx: isize, dy: isize, flip: bool) -> Vec<f32> {
    if dx == 0 && dy == 0 {
        return if flip {
            mirror(pixels)
        } else {
            pixels.to_vec()
        };
    }
    // One copy, the output, so that the memory bound's one view per image holds.
    let side = INPUT_SIZE as isize;
    let mut out = vec![-1.0f32; pixels.len()];
    for (src, dst) in pixels
        .chunks_exact(INPUT_SIZE * INPUT_SIZE)
        .zip(out.chunks_exact_mut(INPUT_SIZE * INPUT_SIZE))
    {
        // The rows and columns that land inside: y + dy and x + dx in 0..side.
        for y in 0.max(-dy)..side.min(side - dy) {
            let (to, from) = ((y * side) as usize, ((y + dy) * side) as usize);
            for x in 0.max(-dx)..side.min(side - dx) {
                let column = if flip { side - 1 - (x + dx) } else { x + dx };
                dst[to + x as usize] = src[from + column as usize];
            }
        }
    }
    out
}

/// Items some of which are ready for the model and some of which failed before it, split so
/// that the ready ones go to the model together and its answers come back to their items.
///
/// [`Gathered::split`] takes the ready values out, in order; [`Gathered::answer`] takes the
/// model's answers for them, in the same order, and gives one result per item: the answer, or
/// the item's own error where it failed.
#[derive(Debug)]
pub struct Gathered<K, E> {
    /// Every item's key, with its error when it failed (`None`: it waits for an answer).
    items: Vec<(K, Option<E>)>,
    ready: usize,
}

impl<K, E> Gathered<K, E> {
    /// Splits `items` into the keys (with the failures) and the ready values, in order.
    pub fn split<V>(items: impl IntoIterator<Item = (K, Result<V, E>)>) -> (Self, Vec<V>) {
        let mut values = Vec::new();
        let items = items
            .into_iter()
            .map(|(key, r)| match r {
                Ok(v) => {
                    values.push(v);
                    (key, None)
                }
                Err(e) => (key, Some(e)),
            })
            .collect();
        let ready = values.len();
        (Self { items, ready }, values)
    }

    /// How many items were ready: the answers [`Gathered::answer`] expects.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Every item with its answer (the next of `answers` for each ready item) or its error.
    ///
    /// # Panics
    /// When `answers` does not hold exactly one answer per ready item.
    pub fn answer<A>(self, answers: impl IntoIterator<Item = A>) -> Vec<(K, Result<A, E>)> {
        let mut answers = answers.into_iter();
        let out = self
            .items
            .into_iter()
            .map(|(key, failed)| match failed {
                Some(e) => (key, Err(e)),
                None => (key, Ok(answers.next().expect("one answer per ready item"))),
            })
            .collect();
        assert!(answers.next().is_none(), "more answers than ready items");
        out
    }
}

/// Copies `model`'s weights into the CPU fast path.
pub fn fast_path(model: &Cnn) -> Result<FastCnn, RecordError> {
    let bias = |b: Option<Tensor<1>>, len: usize| b.map_or_else(|| vec![0.0; len], values);
    let [c1, ..] = model.conv1.weight.dims();
    let [c2, ..] = model.conv2.weight.dims();
    let [_, hidden] = model.fc1.weight.dims();
    let [_, classes] = model.fc2.weight.dims();
    FastCnn::new(fastcnn::Weights {
        conv1_weight: values(model.conv1.weight.val()),
        conv1_bias: bias(model.conv1.bias.as_ref().map(burn::module::Param::val), c1),
        conv2_weight: values(model.conv2.weight.val()),
        conv2_bias: bias(model.conv2.bias.as_ref().map(burn::module::Param::val), c2),
        fc1_weight: values(model.fc1.weight.val()),
        fc1_bias: bias(
            model.fc1.bias.as_ref().map(burn::module::Param::val),
            hidden,
        ),
        fc2_weight: values(model.fc2.weight.val()),
        fc2_bias: bias(
            model.fc2.bias.as_ref().map(burn::module::Param::val),
            classes,
        ),
    })
    .map_err(|e| RecordError::Architecture(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, non-symmetric pixels for `n` images.
    fn pixels(n: usize) -> Vec<f32> {
        (0..n * IMAGE_FLOATS)
            .map(|i| ((i * 7919 + i / 61) % 255) as f32 / 127.5 - 1.0)
            .collect()
    }

    #[test]
    fn mirror_reverses_every_row_and_undoes_itself() {
        let x = pixels(2);
        let m = mirror(&x);
        let at = |img: usize, c: usize, y: usize, x: usize| {
            img * IMAGE_FLOATS + (c * INPUT_SIZE + y) * INPUT_SIZE + x
        };
        for (img, c, y, col) in [(0, 0, 0, 0), (0, 2, 63, 5), (1, 1, 17, 63)] {
            assert_eq!(
                m[at(img, c, y, col)],
                x[at(img, c, y, INPUT_SIZE - 1 - col)]
            );
        }
        assert_eq!(mirror(&m), x);
    }

    /// With TTA, the probabilities are the mean of the two passes' (the image's and its
    /// mirror's softmax), and so the same for an image and its mirror; off, they are the
    /// plain pass's. On every backend compiled in.
    #[test]
    fn tta_is_the_mean_of_the_image_and_its_mirror() {
        for backend in Backend::available()
            .into_iter()
            .filter(|b| *b != Backend::Wgpu)
        {
            let net = Cnn::init(&backend.device());
            let plain = Inference::new(net.clone(), backend).unwrap();
            let tta = Inference::new(net, backend).unwrap().with_tta(Tta::Flip);
            assert!(!plain.tta().is_on() && tta.tta() == Tta::Flip);
            let x = pixels(3);
            let classes = plain.classes();
            let a = softmax(&plain.logits(&x), classes);
            let b = softmax(&plain.logits(&mirror(&x)), classes);
            assert_eq!(plain.probabilities(&x), a);
            let got = tta.probabilities(&x);
            assert_eq!(got.len(), 3 * classes);
            for ((g, a), b) in got.iter().zip(&a).zip(&b) {
                assert!(
                    (g - (a + b) / 2.0).abs() < 1e-6,
                    "{backend}: {g} vs {a}, {b}"
                );
            }
            for (g, m) in got.iter().zip(tta.probabilities(&mirror(&x))) {
                assert!((g - m).abs() < 1e-6, "{backend}: {g} vs {m}");
            }
            // The ranked answer carries those probabilities.
            for (i, p) in tta.predict(&x, classes).iter().enumerate() {
                for r in &p.top_k {
                    assert_eq!(r.confidence, got[i * classes + r.class_index]);
                }
            }
            assert!(tta.predict(&[], 3).is_empty());
        }
    }

    #[test]
    fn shifted_moves_every_channel_and_fills_with_black() {
        let x = pixels(2);
        let at = |img: usize, c: usize, y: isize, x: isize| {
            img * IMAGE_FLOATS + (c * INPUT_SIZE + y as usize) * INPUT_SIZE + x as usize
        };
        let side = INPUT_SIZE as isize;
        for (dx, dy, flip) in [(4, 0, false), (-4, 0, true), (0, 4, true), (3, -5, false)] {
            let got = shifted(&x, dx, dy, flip);
            let source = if flip { mirror(&x) } else { x.clone() };
            for img in 0..2 {
                for c in 0..3 {
                    for y in 0..side {
                        for col in 0..side {
                            let (sx, sy) = (col + dx, y + dy);
                            let expected = if (0..side).contains(&sx) && (0..side).contains(&sy) {
                                source[at(img, c, sy, sx)]
                            } else {
                                -1.0
                            };
                            assert_eq!(got[at(img, c, y, col)], expected, "{dx} {dy} {flip}");
                        }
                    }
                }
            }
        }
        assert_eq!(shifted(&x, 0, 0, false), x);
        assert_eq!(shifted(&x, 0, 0, true), mirror(&x));
    }

    /// `crops`: the mean of the ten views' softmax, each computed on its own.
    #[test]
    fn crops_tta_is_the_mean_over_its_ten_views() {
        let backend = Backend::default();
        let net = Cnn::init(&backend.device());
        let plain = Inference::new(net.clone(), backend).unwrap();
        let crops = Inference::new(net, backend).unwrap().with_tta(Tta::Crops);
        let x = pixels(2);
        let classes = plain.classes();
        let mut mean = vec![0.0f32; 2 * classes];
        for &(dx, dy, flip) in Tta::Crops.views() {
            for (m, p) in mean
                .iter_mut()
                .zip(plain.probabilities(&shifted(&x, dx, dy, flip)))
            {
                *m += p / 10.0;
            }
        }
        for (g, m) in crops.probabilities(&x).iter().zip(&mean) {
            assert!((g - m).abs() < 1e-6, "{g} vs {m}");
        }
        assert_eq!(Tta::Crops.views().len(), 10);
    }

    #[test]
    fn tta_kinds_parse_from_names_and_the_old_yes_no_words() {
        for tta in Tta::ALL {
            assert_eq!(tta.name().parse::<Tta>(), Ok(tta));
        }
        for (word, tta) in [
            ("true", Tta::Flip),
            ("1", Tta::Flip),
            ("ON", Tta::Flip),
            ("0", Tta::Off),
            ("false", Tta::Off),
        ] {
            assert_eq!(word.parse::<Tta>(), Ok(tta), "{word}");
        }
        assert!(
            "sideways"
                .parse::<Tta>()
                .unwrap_err()
                .contains("off, flip or crops")
        );
    }

    #[test]
    fn gathered_answers_go_back_to_their_items() {
        let items = vec![
            ("a", Ok(1)),
            ("b", Err("broken")),
            ("c", Ok(2)),
            ("d", Err("unreadable")),
        ];
        let (gathered, ready) = Gathered::split(items);
        assert_eq!(ready, vec![1, 2]);
        assert_eq!(gathered.ready(), 2);
        let answered = gathered.answer(ready.iter().map(|v| v * 10));
        assert_eq!(
            answered,
            vec![
                ("a", Ok(10)),
                ("b", Err("broken")),
                ("c", Ok(20)),
                ("d", Err("unreadable")),
            ]
        );
        let (nothing, none) = Gathered::<&str, ()>::split(Vec::<(&str, Result<u8, ()>)>::new());
        assert!(none.is_empty() && nothing.answer(none).is_empty());
    }

    #[test]
    #[should_panic(expected = "one answer per ready item")]
    fn gathered_refuses_too_few_answers() {
        let (gathered, _) = Gathered::<_, ()>::split([("a", Ok(1)), ("b", Ok(2))]);
        gathered.answer([10]);
    }

    #[test]
    fn predict_each_matches_predictions_to_files() {
        let backend = Backend::default_inference();
        let net = Inference::new(Cnn::init(&backend.device()), backend).unwrap();
        let x = pixels(2);
        let (first, second) = x.split_at(IMAGE_FLOATS);
        let items = vec![
            ("one", Ok(first.to_vec())),
            ("bad", Err("not an image")),
            ("two", Ok(second.to_vec())),
        ];
        let together = net.predict(&x, 3);
        let each = net.predict_each(items, 3);
        let names: Vec<_> = each.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["one", "bad", "two"]);
        assert_eq!(each[0].1.as_ref().unwrap(), &together[0]);
        assert_eq!(each[1].1, Err("not an image"));
        assert_eq!(each[2].1.as_ref().unwrap(), &together[1]);
    }
}
