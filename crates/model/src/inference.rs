//! Running the network for predictions: on a Burn backend, or on the CPU fast path built from
//! the same module's weights. Callers hand over preprocessed pixels and get logits or ranked
//! predictions back, whichever engine runs underneath.

use burn::prelude::*;
use fastcnn::FastCnn;

use crate::backend::Backend;
use crate::error::RecordError;
use crate::net::Cnn;
use crate::predict::{Prediction, rank_logits, values};
use crate::preprocess::{IMAGE_FLOATS, to_tensor};

/// A loaded network ready to classify.
#[derive(Debug)]
pub struct Inference {
    model: Cnn,
    device: Device,
    backend: Backend,
    fast: Option<FastCnn>,
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
        })
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

    /// Ranked predictions, keeping the `k` most likely classes of each image.
    pub fn predict(&self, pixels: &[f32], k: usize) -> Vec<Prediction> {
        let logits = self.logits(pixels);
        let classes = self.model.fc2.weight.dims()[1];
        rank_logits(&logits, classes, k)
    }
}

/// Copies `model`'s weights into the CPU fast path.
pub fn fast_path(model: &Cnn) -> Result<FastCnn, RecordError> {
    let bias = |b: Option<Tensor<1>>, len: usize| b.map(values).unwrap_or_else(|| vec![0.0; len]);
    let [c1, ..] = model.conv1.weight.dims();
    let [c2, ..] = model.conv2.weight.dims();
    let [_, hidden] = model.fc1.weight.dims();
    let [_, classes] = model.fc2.weight.dims();
    FastCnn::new(fastcnn::Weights {
        conv1_weight: values(model.conv1.weight.val()),
        conv1_bias: bias(model.conv1.bias.as_ref().map(|b| b.val()), c1),
        conv2_weight: values(model.conv2.weight.val()),
        conv2_bias: bias(model.conv2.bias.as_ref().map(|b| b.val()), c2),
        fc1_weight: values(model.fc1.weight.val()),
        fc1_bias: bias(model.fc1.bias.as_ref().map(|b| b.val()), hidden),
        fc2_weight: values(model.fc2.weight.val()),
        fc2_bias: bias(model.fc2.bias.as_ref().map(|b| b.val()), classes),
    })
    .map_err(|e| RecordError::Architecture(e.to_string()))
}
