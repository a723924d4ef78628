//! The network wrapped for Burn's `Learner`: loss (cross-entropy, and distillation from a
//! teacher's answers, stored or live), train step, validation step, and the exponential moving average
//! of the weights.

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use model::Network;

use crate::batcher::CifarBatch;

/// A network (the served CNN, or a teacher) plus its training loss and, when asked, the
/// moving average of its weights. The record saved holds one network: the average where there
/// is one.
///
/// The average is a module field rather than state beside the Learner so that Burn's
/// checkpoints carry it (a resumed run continues the same average) and validation, which runs
/// [`InferenceStep`] on this struct, measures the network that will be served.
#[derive(Module, Debug)]
pub struct Classifier<N: Network> {
    /// The network the optimiser trains.
    pub net: N,
    /// Moving average of `net`'s weights; never receives gradients, so optimisers pass it by.
    pub ema: Option<N>,
    loss: CrossEntropyLoss,
    /// Weight of the old average at each step (0.999: about the last thousand steps count).
    ema_decay: f64,
    /// Temperature of the distillation term.
    distill_temperature: f64,
    /// Share of the loss that is the distillation term, on batches that carry a teacher's
    /// answers (the rest is cross-entropy with the labels); 0 on runs without a teacher.
    distill_weight: f64,
}

impl<N: Network> Classifier<N> {
    /// `ema_decay` in (0, 1) keeps an average; 0 keeps none.
    pub fn new(net: N, label_smoothing: f32, ema_decay: f64, device: &Device) -> Self {
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
            distill_temperature: 1.0,
            distill_weight: 0.0,
        }
    }

    /// Trains on `weight · distillation + (1 − weight) · cross-entropy` where batches carry the
    /// teacher's answers ([`distillation_loss`] at `temperature`).
    #[must_use]
    pub fn with_distillation(mut self, temperature: f64, weight: f64) -> Self {
        self.distill_temperature = temperature;
        self.distill_weight = weight;
        self
    }

    /// The network to evaluate and serve: the average when kept, else the trained weights.
    pub fn served(&self) -> &N {
        self.ema.as_ref().unwrap_or(&self.net)
    }

    /// Consumes the classifier, returning [`Classifier::served`].
    pub fn into_served(self) -> N {
        self.ema.unwrap_or(self.net)
    }

    fn classify(&self, net: &N, batch: CifarBatch) -> ClassificationOutput {
        let output = net.forward(batch.images);
        let mut loss = self.loss.forward(output.clone(), batch.targets.clone());
        // Validation batches carry no teacher: their loss is the labels' cross-entropy alone
        // (smoothed as the run's recipe says).
        if let Some(teacher) = batch.teacher
            && self.distill_weight > 0.0
        {
            let distill = distillation_loss(output.clone(), teacher, self.distill_temperature);
            loss = loss * (1.0 - self.distill_weight) + distill * self.distill_weight;
        }
        ClassificationOutput::new(loss, output, batch.targets)
    }
}

/// Hinton's distillation term, `T² · KL(softmax(teacher / T) ‖ softmax(student / T))`, averaged
/// over the batch. `teacher` holds the teacher's log-probabilities. The
/// `T²` keeps the term's gradient on the scale of the cross-entropy's whatever the temperature.
pub fn distillation_loss(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    let log_q = log_softmax(teacher / temperature, 1);
    let log_p = log_softmax(student / temperature, 1);
    let kl = (log_q.clone().exp() * (log_q - log_p)).sum_dim(1);
    kl.mean() * (temperature * temperature)
}

impl<N: Network> TrainStep for Classifier<N> {
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

impl<N: Network> InferenceStep for Classifier<N> {
    type Input = CifarBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: CifarBatch) -> ClassificationOutput {
        self.classify(self.served(), batch)
    }
}

/// A copy of `net` with parameters of its own: new ids (an optimiser keys its state and the
/// gradients by id, so a plain clone would be trained as the network itself) and no gradients.
pub fn detached_copy<N: Network>(net: &N) -> N {
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
pub fn blend<N: Network>(average: N, current: &N, decay: f64) -> N {
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

    fn values(net: &model::Cnn) -> Vec<f32> {
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

    #[test]
    fn distillation_loss_is_the_tempered_kl_divergence() {
        let device = model::Backend::default().device();
        let student = [[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]];
        let teacher = [[0.5f32, 2.5, 0.0], [0.2, 0.1, 2.0]];
        let t = 2.0f64;
        let softmax = |row: &[f32; 3]| {
            let e: Vec<f64> = row.iter().map(|v| (f64::from(*v) / t).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(|v| v / sum).collect::<Vec<_>>()
        };
        let expected: f64 = student
            .iter()
            .zip(&teacher)
            .map(|(s, q)| {
                let (p, q) = (softmax(s), softmax(q));
                q.iter().zip(&p).map(|(q, p)| q * (q / p).ln()).sum::<f64>()
            })
            .sum::<f64>()
            / 2.0
            * t
            * t;
        let tensor = |rows: [[f32; 3]; 2]| {
            Tensor::<2>::from_data(TensorData::new(rows.concat(), [2, 3]), &device)
        };
        let got = distillation_loss(tensor(student), tensor(teacher), t).into_scalar::<f32>();
        assert!(
            (f64::from(got) - expected).abs() < 1e-5,
            "{got} vs {expected}"
        );
        // The same answers teach nothing.
        let same = distillation_loss(tensor(teacher), tensor(teacher), t).into_scalar::<f32>();
        assert!(same.abs() < 1e-6, "{same}");
    }
}
