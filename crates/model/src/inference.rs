//! Running the network for predictions: on a Burn backend, or on the CPU fast path built from
//! the same module's weights. Callers hand over preprocessed pixels and get logits or ranked
//! predictions back, whichever engine runs underneath; with test-time augmentation switched on
//! ([`Inference::with_tta`]) the probabilities are the mean of each image's and its mirror's.
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
    tta: bool,
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
            tta: false,
        })
    }

    /// Switches test-time augmentation on or off (off by default): when on, an image's class
    /// probabilities are the mean of its own and its horizontal mirror's, at twice the
    /// compute. [`Inference::logits`] is never augmented.
    #[must_use]
    pub fn with_tta(mut self, on: bool) -> Self {
        self.tta = on;
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

    /// Whether test-time augmentation is on.
    pub fn tta(&self) -> bool {
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
    /// or with test-time augmentation the mean of the image's and its mirror's (two passes
    /// of `n` images, so that a batch never takes more than one batch's working memory).
    pub fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
        self.scores(pixels).probabilities
    }

    /// The logits and the class probabilities of `pixels` together, from one forward pass
    /// (two with test-time augmentation): [`Inference::logits`] and
    /// [`Inference::probabilities`] without computing the logits twice.
    pub fn scores(&self, pixels: &[f32]) -> Scores {
        let classes = self.classes();
        let logits = self.logits(pixels);
        let mut probabilities = softmax(&logits, classes);
        if self.tta && !probabilities.is_empty() {
            let mirrored = softmax(&self.logits(&mirror(pixels)), classes);
            for (p, m) in probabilities.iter_mut().zip(mirrored) {
                *p = (*p + m) * 0.5;
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
    /// of the image's and its mirror's.
    pub probabilities: Vec<f32>,
}

/// `pixels` (preprocessed CHW images back to back) mirrored left to right: every row of every
/// channel reversed.
pub fn mirror(pixels: &[f32]) -> Vec<f32> {
    let mut out = pixels.to_vec();
    out.chunks_exact_mut(INPUT_SIZE).for_each(<[f32]>::reverse);
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
            let tta = Inference::new(net, backend).unwrap().with_tta(true);
            assert!(!plain.tta() && tta.tta());
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
