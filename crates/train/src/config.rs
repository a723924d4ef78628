//! The training recipe, saved as `config.json` in every run folder.

use burn::prelude::*;

/// Which optimiser updates the weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum OptimizerKind {
    /// AdamW, decoupled weight decay.
    Adamw,
    /// Adam with L2 weight decay, as the original project (which used none).
    Adam,
    /// SGD with Nesterov momentum 0.9.
    Sgd,
}

/// How the learning rate moves over the run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum ScheduleKind {
    /// Linear warm-up, then cosine decay to the minimum (one-cycle shaped).
    Cosine,
    /// The same rate throughout.
    Constant,
}

/// `--arch` of the served network (the other values name teachers).
pub const CNN: &str = "cnn";

/// An `arch` that names neither the served network nor a teacher.
#[derive(Debug, thiserror::Error)]
#[error("unknown arch '{0}': expected {CNN} or one of {names}", names = model::teacher::teachers().collect::<Vec<_>>().join(", "))]
pub struct UnknownArch(pub String);

/// A recipe whose distillation settings cannot go together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DistillError {
    /// Stored answers and a live teacher at once.
    #[error("--teacher-logits and --teacher both name a teacher: give one")]
    TwoTeachers,
    /// Mixup with no teacher to label the blends.
    #[error("--mixup needs a live teacher (--teacher RECORD) to label the blended images")]
    MixupWithoutTeacher,
    /// Mixup with part of the loss on labels that do not describe the blends.
    #[error("--mixup needs --distill-weight 1: the labels do not describe a blended image")]
    MixupWithLabels,
}

/// Everything that decides what a run learns. Saved in the run folder so that `--resume`
/// continues with the same recipe and a record can say how it was made. The defaults are the
/// shipped model's recipe (`cargo run -p train` with no flags trains it; README, "The shipped
/// model"), chosen on the validation split (issue #15).
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// What to train: `cnn`, the served network, or a teacher to distil it from
    /// ([`model::teacher::TeacherConfig::named`]: `teacher-s`, `teacher-m`).
    #[config(default = "String::from(CNN)")]
    pub arch: String,
    /// Passes over the training split.
    #[config(default = 60)]
    pub epochs: usize,
    /// Images per optimiser step.
    #[config(default = 64)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[config(default = 0.05)]
    pub learning_rate: f64,
    /// Final learning rate of the cosine schedule.
    #[config(default = 1e-5)]
    pub min_learning_rate: f64,
    /// Epochs of the cosine schedule's linear warm-up, from a 25th of the peak rate up to it.
    #[config(default = 1)]
    pub warmup_epochs: usize,
    /// The optimiser.
    #[config(default = "OptimizerKind::Sgd")]
    pub optimizer: OptimizerKind,
    /// Weight decay: decoupled for AdamW, an L2 term for Adam and SGD; 0 turns it off.
    #[config(default = 5e-4)]
    pub weight_decay: f32,
    /// How the learning rate moves over the run.
    #[config(default = "ScheduleKind::Cosine")]
    pub schedule: ScheduleKind,
    /// Share of each target's probability spread evenly over all classes in the cross-entropy
    /// loss (0: plain one-hot targets); it keeps the network from growing over-confident.
    #[config(default = 0.1)]
    pub label_smoothing: f32,
    /// Random crop and horizontal flip on training images.
    #[config(default = true)]
    pub augment: bool,
    /// How far the random crop may shift, in pixels of the stored 32×32 image (the image is
    /// padded with black by this much on each side, then cropped back to its size).
    #[config(default = 2)]
    pub crop_padding: u32,
    /// Decay of the exponential moving average of the weights, updated every step; the average
    /// is what validation measures and the record holds. 0 keeps no average.
    #[config(default = 0.999)]
    pub ema_decay: f64,
    /// Share of the training set held out for validation.
    #[config(default = 0.05)]
    pub valid_fraction: f64,
    /// Seeds the weight initialisation, the validation hold-out (unless `valid_seed` is set),
    /// shuffling and augmentation, so that a run can be repeated.
    #[config(default = 42)]
    pub seed: u64,
    /// Seeds the validation hold-out instead of `seed`: runs of several seeds that hold out the
    /// same images can be compared, and averaged as an ensemble, on one validation split.
    pub valid_seed: Option<u64>,
    /// Data-loader threads preparing batches beside the model.
    #[config(default = 1)]
    pub workers: usize,
    /// A teacher's stored answers for every training view (`train teach`) to distil from;
    /// none: the labels' cross-entropy alone.
    pub teacher_logits: Option<std::path::PathBuf>,
    /// Teacher records (files or run folders, as `train teach` takes) run on every training
    /// batch instead of stored answers: the teacher answers for exactly the pixels the student
    /// is shown, mixed ones included (Beyer et al.'s function matching); their probabilities
    /// are averaged. Empty: no live teacher.
    #[config(default = "Vec::new()")]
    pub live_teacher: Vec<std::path::PathBuf>,
    /// Mixup on training batches: each image blended with its partner in the batch by one
    /// weight drawn uniformly from 0 to 1 (Beta(1, 1)). Needs a live teacher, which labels the
    /// blend, and distillation weight 1: the labels do not describe a blend.
    #[config(default = false)]
    pub mixup: bool,
    /// Temperature of the distillation term.
    #[config(default = 4.0)]
    pub distill_temperature: f64,
    /// Share of the loss that is the distillation term when there is a teacher (the rest is
    /// the labels' cross-entropy).
    #[config(default = 0.9)]
    pub distill_weight: f64,
}

impl TrainConfig {
    /// The teacher's shape when the run trains a teacher, `None` when it trains the served
    /// network; an error for any other name (a hand-edited `config.json`, a caller's typo),
    /// which must not quietly train the served network instead.
    pub fn teacher(&self) -> Result<Option<model::teacher::TeacherConfig>, UnknownArch> {
        if self.arch == CNN {
            return Ok(None);
        }
        model::teacher::TeacherConfig::named(&self.arch)
            .map(Some)
            .ok_or_else(|| UnknownArch(self.arch.clone()))
    }

    /// Refuses distillation settings that cannot go together ([`DistillError`]).
    pub fn check_distillation(&self) -> Result<(), DistillError> {
        let live = !self.live_teacher.is_empty();
        if live && self.teacher_logits.is_some() {
            return Err(DistillError::TwoTeachers);
        }
        if self.mixup && !live {
            return Err(DistillError::MixupWithoutTeacher);
        }
        if self.mixup && self.distill_weight < 1.0 {
            return Err(DistillError::MixupWithLabels);
        }
        Ok(())
    }

    /// The seed of the validation hold-out: `valid_seed`, else `seed`.
    pub fn hold_out_seed(&self) -> u64 {
        self.valid_seed.unwrap_or(self.seed)
    }

    /// Reads a run folder's `config.json`. Settings added since the run was written take the
    /// values that reproduce what such a run did: the served network, a crop of ±4 pixels and no weight average
    /// (Burn's `Config` deserialiser has no defaults for missing fields); settings since
    /// removed (the fixed architecture's `model`) are ignored.
    pub fn from_run_json(json: &str) -> Result<Self, serde_json::Error> {
        let before_settings = Self::new().with_crop_padding(4).with_ema_decay(0.0);
        let mut merged = serde_json::to_value(before_settings)?;
        let saved: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)?;
        let fields = merged
            .as_object_mut()
            .expect("a struct serialises as an object");
        for (key, value) in saved {
            if fields.contains_key(&key) {
                fields.insert(key, value);
            }
        }
        serde_json::from_value(merged)
    }

    /// One line describing the recipe, stored in the record's metadata.
    pub fn recipe(&self) -> String {
        format!(
            "{}{:?} lr {} ({:?}, warm-up {} epoch(s), min {}), weight decay {}, batch {}, {} epochs, \
             label smoothing {}, augmentation {}, weight average {}, seed {}{}",
            if self.arch == CNN {
                String::new()
            } else {
                format!("{}: ", self.arch)
            },
            self.optimizer,
            self.learning_rate,
            self.schedule,
            self.warmup_epochs,
            self.min_learning_rate,
            self.weight_decay,
            self.batch_size,
            self.epochs,
            self.label_smoothing,
            if self.augment {
                format!("crop ±{} px + flip", self.crop_padding)
            } else {
                "off".to_string()
            },
            if self.ema_decay > 0.0 {
                format!("EMA {}", self.ema_decay)
            } else {
                "off".to_string()
            },
            self.seed,
            match (&self.teacher_logits, self.live_teacher.as_slice()) {
                (Some(file), _) => format!(
                    ", distilled from {} (temperature {}, weight {})",
                    file.display(),
                    self.distill_temperature,
                    self.distill_weight
                ),
                (None, []) => String::new(),
                (None, records) => format!(
                    ", distilled from {} run on every batch{} (temperature {}, weight {})",
                    records
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" + "),
                    if self.mixup { " with mixup" } else { "" },
                    self.distill_temperature,
                    self.distill_weight
                ),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run folder from before the architecture left the recipe (and before the weight
    /// average and the crop padding were settings) still resumes, with the defaults that
    /// reproduce what it did.
    #[test]
    fn an_older_runs_recipe_still_loads() {
        let old = r#"{
            "model": { "num_classes": 10, "hidden": 100 },
            "epochs": 20, "batch_size": 64, "learning_rate": 0.002, "min_learning_rate": 0.00001,
            "warmup_epochs": 1, "optimizer": "Adamw", "weight_decay": 0.05, "schedule": "Cosine",
            "label_smoothing": 0.1, "augment": true, "valid_fraction": 0.05, "seed": 42,
            "workers": 1
        }"#;
        let config = TrainConfig::from_run_json(old).unwrap();
        assert_eq!(config.epochs, 20);
        assert_eq!(config.optimizer, OptimizerKind::Adamw);
        assert_eq!(config.crop_padding, 4);
        assert_eq!(config.ema_decay, 0.0);
        assert_eq!(config.valid_seed, None);
        assert_eq!(config.teacher_logits, None);
        assert!(config.live_teacher.is_empty() && !config.mixup);
        assert_eq!(config.arch, CNN);
        assert!(config.teacher().unwrap().is_none());
        let typo = config
            .clone()
            .with_arch("teacher-xl".into())
            .teacher()
            .unwrap_err();
        assert!(typo.to_string().contains("teacher-s, teacher-m"), "{typo}");
        assert_eq!(config.hold_out_seed(), 42);
        assert_eq!(config.with_valid_seed(Some(7)).hold_out_seed(), 7);
    }

    #[test]
    fn distillation_settings_that_cannot_go_together_are_refused() {
        let live = TrainConfig::new().with_live_teacher(vec!["teacher.safetensors".into()]);
        assert_eq!(live.check_distillation(), Ok(()));
        assert_eq!(
            live.clone()
                .with_teacher_logits(Some("t.bin".into()))
                .check_distillation(),
            Err(DistillError::TwoTeachers)
        );
        assert_eq!(
            live.clone().with_mixup(true).check_distillation(),
            Err(DistillError::MixupWithLabels)
        );
        let matching = live.with_mixup(true).with_distill_weight(1.0);
        assert_eq!(matching.check_distillation(), Ok(()));
        assert_eq!(
            matching.with_live_teacher(Vec::new()).check_distillation(),
            Err(DistillError::MixupWithoutTeacher)
        );
    }
}
