//! The network wrapped for Burn's `Learner`: loss, train step and validation step.

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::prelude::*;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use model::Cnn;

use crate::batcher::CifarBatch;

/// The CNN plus its training loss. The record saved for serving holds `net` alone.
#[derive(Module, Debug)]
pub struct Classifier {
    pub net: Cnn,
    loss: CrossEntropyLoss,
}

impl Classifier {
    pub fn new(net: Cnn, label_smoothing: f32, device: &Device) -> Self {
        let smoothing = (label_smoothing > 0.0).then_some(label_smoothing);
        let loss = CrossEntropyLossConfig::new()
            .with_smoothing(smoothing)
            .init(device);
        Self { net, loss }
    }

    fn classify(&self, batch: CifarBatch) -> ClassificationOutput {
        let output = self.net.forward(batch.images);
        let loss = self.loss.forward(output.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, output, batch.targets)
    }
}

impl TrainStep for Classifier {
    type Input = CifarBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: CifarBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.classify(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for Classifier {
    type Input = CifarBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: CifarBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}
