//! Wider networks trained only to teach [`Cnn`](crate::Cnn) by distillation (issue #30): the
//! served network is fixed, its teacher is not. Never served and never read by the server:
//! `train --arch teacher-…` trains one and `train teach` reads it.
//!
//! A teacher is VGG-shaped and built from the blocks the served network is made of (3×3
//! convolution with padding 1 → ReLU → 2×2 max-pool), so that it trains on the same fused CPU
//! kernels ([`crate::fused`]); Burn's generic convolution backward would make it several times
//! slower to train on the CPU. It first averages the 64×64 input down to 32×32: the input is a
//! bilinear upscale of CIFAR's own 32×32 image, so the smaller map keeps nearly all of it at a
//! quarter of the cost of every layer after.

use std::path::Path;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::error::RecordError;
use crate::net::{Network, conv_block};
use crate::{INPUT_SIZE, NUM_CLASSES};

/// The metadata key of a teacher record: its [`TeacherConfig`] as JSON. Its presence is what
/// tells a teacher's file from a served network's record.
pub const TEACHER_META_KEY: &str = "cifar_teacher";

/// A teacher's shape. Stored in its record, so that the record says what it holds.
#[derive(Config, Debug, PartialEq)]
pub struct TeacherConfig {
    /// Output channels of each block, each block halving the side.
    pub widths: Vec<usize>,
    /// Units of the hidden layer.
    #[config(default = 256)]
    pub hidden: usize,
    /// Side of the map the first block sees: the 64×64 input averaged down to it.
    #[config(default = 32)]
    pub side: usize,
}

/// The names [`TeacherConfig::named`] knows.
pub const TEACHERS: [&str; 2] = ["teacher-s", "teacher-m"];

impl TeacherConfig {
    /// The named teachers `train --arch` offers: `teacher-s` (32, 64, 128 channels) and
    /// `teacher-m` (64, 128, 256), both at 32×32 with 256 hidden units.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "teacher-s" => Some(Self::new(vec![32, 64, 128])),
            "teacher-m" => Some(Self::new(vec![64, 128, 256])),
            _ => None,
        }
    }

    /// Checks that the shape can be built: at least one block, every width positive, and a
    /// side that divides 64 and stays even through every block.
    pub fn check(&self) -> Result<(), String> {
        let halvings = self.widths.len() as u32;
        if self.widths.is_empty() || self.widths.contains(&0) || self.hidden == 0 {
            return Err(format!(
                "{self:?}: needs at least one block and positive widths"
            ));
        }
        if self.side == 0
            || !INPUT_SIZE.is_multiple_of(self.side)
            || !self.side.is_multiple_of(1 << halvings)
        {
            return Err(format!(
                "{self:?}: the side must divide {INPUT_SIZE} and halve {halvings} times"
            ));
        }
        Ok(())
    }

    /// A freshly initialised teacher on `device`.
    ///
    /// # Panics
    /// If [`TeacherConfig::check`] refuses the shape.
    pub fn init(&self, device: &Device) -> TeacherNet {
        if let Err(why) = self.check() {
            panic!("{why}");
        }
        let mut cin = 3;
        let blocks = self
            .widths
            .iter()
            .map(|&cout| {
                let conv = Conv2dConfig::new([cin, cout], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device);
                cin = cout;
                conv
            })
            .collect();
        let last = self.side >> self.widths.len();
        let factor = INPUT_SIZE / self.side;
        TeacherNet {
            blocks,
            fc1: LinearConfig::new(cin * last * last, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, NUM_CLASSES).init(device),
            shrink: (factor > 1).then(|| {
                AvgPool2dConfig::new([factor, factor])
                    .with_strides([factor, factor])
                    .init()
            }),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            relu: Relu::new(),
        }
    }
}

/// A teacher network: input shrink → conv blocks → fc → ReLU → fc ([`TeacherConfig`]).
#[derive(Module, Debug)]
pub struct TeacherNet {
    blocks: Vec<Conv2d>,
    fc1: Linear,
    fc2: Linear,
    shrink: Option<AvgPool2d>,
    pool: MaxPool2d,
    relu: Relu,
}

impl Network for TeacherNet {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = match &self.shrink {
            Some(shrink) => shrink.forward(images),
            None => images,
        };
        for conv in &self.blocks {
            x = conv_block(conv, &self.pool, &self.relu, x, true);
        }
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// Writes a teacher and its shape to `path` (safetensors, the shape under
/// [`TEACHER_META_KEY`]).
pub fn save_teacher(
    net: &TeacherNet,
    config: &TeacherConfig,
    path: &Path,
) -> Result<(), RecordError> {
    let mut store = SafetensorsStore::from_file(path)
        .overwrite(true)
        .metadata(TEACHER_META_KEY, config.to_string());
    net.save_into(&mut store)
        .map_err(|e| RecordError::Save(e.to_string()))
}

/// The teacher's shape when the safetensors file at `path` is a teacher's record; `None` for
/// any other record (a served network's).
pub fn teacher_config(path: &Path) -> Result<Option<TeacherConfig>, RecordError> {
    let bytes = std::fs::read(path).map_err(|source| RecordError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| RecordError::Format(e.to_string()))?;
    let Some(json) = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(TEACHER_META_KEY))
    else {
        return Ok(None);
    };
    let config: TeacherConfig = serde_json::from_str(json)
        .map_err(|e| RecordError::Metadata(format!("'{TEACHER_META_KEY}' is not valid: {e}")))?;
    config.check().map_err(RecordError::Metadata)?;
    Ok(Some(config))
}

/// Reads the teacher record at `path` onto `device`.
pub fn load_teacher(path: &Path, device: &Device) -> Result<TeacherNet, RecordError> {
    let config = teacher_config(path)?.ok_or_else(|| {
        RecordError::Format(format!("{} is not a teacher's record", path.display()))
    })?;
    let mut net = config.init(device);
    let mut store = SafetensorsStore::from_file(path).validate(true);
    let result = net
        .load_from(&mut store)
        .map_err(|e| RecordError::Format(e.to_string()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(RecordError::Format(format!(
            "{}: the teacher's tensors do not match its shape ({:?})",
            path.display(),
            result
        )));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teachers_give_one_logit_per_class_and_round_trip_through_their_record() {
        let device = crate::Backend::default().device();
        for name in TEACHERS {
            let config = TeacherConfig::named(name).unwrap();
            device.seed(1);
            let net = config.init(&device);
            let x = Tensor::<4>::random(
                [2, 3, INPUT_SIZE, INPUT_SIZE],
                burn::tensor::Distribution::Default,
                &device,
            );
            let logits = net.forward(x.clone());
            assert_eq!(logits.dims(), [2, NUM_CLASSES]);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("teacher.safetensors");
            save_teacher(&net, &config, &path).unwrap();
            assert_eq!(teacher_config(&path).unwrap(), Some(config));
            let back = load_teacher(&path, &device).unwrap();
            back.forward(x)
                .into_data()
                .assert_approx_eq::<f32>(&logits.into_data(), burn::tensor::Tolerance::default());
        }
        assert_eq!(TeacherConfig::named("teacher-xl"), None);
        assert!(TEACHERS.iter().all(|n| TeacherConfig::named(n).is_some()));
    }

    #[test]
    fn shapes_that_cannot_be_built_are_refused() {
        for bad in [
            TeacherConfig::new(vec![]),
            TeacherConfig::new(vec![8, 0]),
            TeacherConfig::new(vec![8; 6]),
            TeacherConfig::new(vec![8]).with_side(24),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(TeacherConfig::new(vec![8; 5]).check().is_ok());
    }
}
