//! The network wrapped for Burn's `Learner`: loss, train step, validation step, and the
//! exponential moving average of the weights.

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use model::Cnn;

use crate::batcher::CifarBatch;

/// The CNN plus its training loss and, when asked, the moving average of its weights. The
/// record saved for serving holds one `Cnn`: the average where there is one.
///
/// The average is a module field rather than state beside the Learner so that Burn's
/// checkpoints carry it (a resumed run continues the same average) and validation, which runs
/// [`InferenceStep`] on this struct, measures the network that will be served.
#[derive(Module, Debug)]
pub struct Classifier {
    /// The network the optimiser trains.
    pub net: Cnn,
    /// Moving average of `net`'s weights; never receives gradients, so optimisers pass it by.
    pub ema: Option<Cnn>,
    loss: CrossEntropyLoss,
    /// Weight of the old average at each step (0.999: about the last thousand steps count).
    ema_decay: f64,
}

impl Classifier {
    /// `ema_decay` in (0, 1) keeps an average; 0 keeps none.
    pub fn new(net: Cnn, label_smoothing: f32, ema_decay: f64, device: &Device) -> Self {
        let smoothing = (label_smoothing > 0.0).then_some(label_smoothing);
        let loss = CrossEntropyLossConfig::new()
            .with_smoothing(smoothing)
            .init(device);
        let ema = (ema_decay > 0.0).then(|| detached_copy(&net));
        Self {
            net,
            ema,
            loss,
            ema_decay,
        }
    }

    /// The network to evaluate and serve: the average when kept, else the trained weights.
    pub fn served(&self) -> &Cnn {
        self.ema.as_ref().unwrap_or(&self.net)
    }

    /// Consumes the classifier, returning [`Classifier::served`].
    pub fn into_served(self) -> Cnn {
        self.ema.unwrap_or(self.net)
    }

    fn classify(&self, net: &Cnn, batch: CifarBatch) -> ClassificationOutput {
        let output = net.forward(batch.images);
        let loss = self.loss.forward(output.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, output, batch.targets)
    }
}

impl TrainStep for Classifier {
    type Input = CifarBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: CifarBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.classify(&self.net, batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }

    /// The optimiser's step, then the average moves toward the new weights.
    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        let mut this = optim.step(lr, self, grads);
        if let Some(ema) = this.ema.take() {
            this.ema = Some(blend(ema, &this.net, this.ema_decay));
        }
        this
    }
}

impl InferenceStep for Classifier {
    type Input = CifarBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: CifarBatch) -> ClassificationOutput {
        self.classify(self.served(), batch)
    }
}

/// A copy of `net` with parameters of its own: new ids (an optimiser keys its state and the
/// gradients by id, so a plain clone would be trained as the network itself) and no gradients.
pub fn detached_copy(net: &Cnn) -> Cnn {
    struct Fresh;
    impl ModuleMapper for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            Param::initialized(ParamId::new(), param.val().detach()).set_require_grad(false)
        }
    }
    net.clone().map(&mut Fresh)
}

/// `average · decay + current · (1 − decay)`, parameter by parameter, outside the autodiff
/// graph. Both modules are the same architecture, so their parameters visit in the same order.
pub fn blend(average: Cnn, current: &Cnn, decay: f64) -> Cnn {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().detach().reshape([-1]));
        }
    }
    struct Blend {
        current: std::vec::IntoIter<Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let current = self
                .current
                .next()
                .expect("the average has the trained network's parameters");
            let decay = self.decay;
            param.map(|avg| {
                let shape = avg.shape();
                (avg.detach() * decay + current.reshape(shape) * (1.0 - decay)).detach()
            })
        }
    }
    let mut collect = Collect(Vec::new());
    current.visit(&mut collect);
    average.map(&mut Blend {
        current: collect.0.into_iter(),
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(net: &Cnn) -> Vec<f32> {
        struct All(Vec<f32>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0
                    .extend(param.val().into_data().try_to_vec::<f32>().unwrap());
            }
        }
        let mut all = All(Vec::new());
        net.visit(&mut all);
        all.0
    }

    #[test]
    fn blend_moves_each_weight_toward_the_current_network() {
        let device = model::Backend::default().device();
        let (a, b) = (model::Cnn::init(&device), model::Cnn::init(&device));
        let (va, vb) = (values(&a), values(&b));
        let copy = detached_copy(&a);
        assert_eq!(values(&copy), va);
        let mixed = values(&blend(copy, &b, 0.75));
        assert_eq!(mixed.len(), model::PARAMETER_COUNT);
        for ((m, x), y) in mixed.iter().zip(&va).zip(&vb) {
            assert!((m - (0.75 * x + 0.25 * y)).abs() < 1e-6, "{m} vs {x}, {y}");
        }
    }
}
