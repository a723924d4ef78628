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

/// The named teachers `train --arch` offers, with each block's channels; both see 32×32 and
/// have 256 hidden units.
const NAMED: [(&str, [usize; 3]); 2] =
    [("teacher-s", [32, 64, 128]), ("teacher-m", [64, 128, 256])];

/// The largest width or hidden layer a record may ask for: far above any teacher worth
/// training here, and low enough that no layer's size overflows.
const MAX_WIDTH: usize = 4096;

/// The largest safetensors header read to tell a teacher's record (its JSON; a record's is a
/// few kilobytes).
const MAX_HEADER_BYTES: u64 = 1 << 20;

impl TeacherConfig {
    /// The teacher `train --arch NAME` trains ([`teachers`] lists the names).
    pub fn named(name: &str) -> Option<Self> {
        NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, widths)| Self::new(widths.to_vec()))
    }

    /// Checks that the shape can be built: at least one block, every width positive and at
    /// most 4096, and a side that divides 64 and stays even through every block.
    pub fn check(&self) -> Result<(), String> {
        let sizes_ok = |v: usize| (1..=MAX_WIDTH).contains(&v);
        if self.widths.is_empty()
            || !self.widths.iter().all(|w| sizes_ok(*w))
            || !sizes_ok(self.hidden)
        {
            return Err(format!(
                "{self:?}: needs at least one block, and widths from 1 to {MAX_WIDTH}"
            ));
        }
        // Each block halves the side: it must stay even as often as there are blocks.
        let halvings = self.side.trailing_zeros() as usize;
        if self.side == 0 || !INPUT_SIZE.is_multiple_of(self.side) || halvings < self.widths.len() {
            return Err(format!(
                "{self:?}: the side must divide {INPUT_SIZE} and halve {} times",
                self.widths.len()
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
        self.forward_with(images, true)
    }
}

impl TeacherNet {
    /// Logits, the blocks fused where they can be (`fused`) or as Burn's generic ops.
    fn forward_with(&self, images: Tensor<4>, fused: bool) -> Tensor<2> {
        let mut x = match &self.shrink {
            Some(shrink) => shrink.forward(images),
            None => images,
        };
        for conv in &self.blocks {
            x = conv_block(conv, &self.pool, &self.relu, x, fused);
        }
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}

/// The names [`TeacherConfig::named`] knows.
pub fn teachers() -> impl Iterator<Item = &'static str> {
    NAMED.iter().map(|(name, _)| *name)
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
/// any other record (a served network's). Reads the header alone: a wrong path (a data set)
/// is never read whole.
pub fn teacher_config(path: &Path) -> Result<Option<TeacherConfig>, RecordError> {
    use std::io::Read as _;
    let io = |source| RecordError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(RecordError::Format(format!(
            "{}: a header of {len} bytes is not a record's",
            path.display()
        )));
    }
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| RecordError::Format(format!("{}: {e}", path.display())))?;
    let Some(json) = header
        .get("__metadata__")
        .and_then(|m| m.get(TEACHER_META_KEY))
        .and_then(|v| v.as_str())
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
        RecordError::Metadata(format!(
            "{}: no '{TEACHER_META_KEY}' entry, so not a teacher's record",
            path.display()
        ))
    })?;
    let mut net = config.init(device);
    let mut store = SafetensorsStore::from_file(path);
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
        for name in teachers() {
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
        assert_eq!(teachers().count(), 2);
    }

    #[test]
    fn shapes_that_cannot_be_built_are_refused() {
        for bad in [
            TeacherConfig::new(vec![]),
            TeacherConfig::new(vec![8, 0]),
            TeacherConfig::new(vec![8; 6]),
            TeacherConfig::new(vec![8; 64]),
            TeacherConfig::new(vec![usize::MAX]),
            TeacherConfig::new(vec![8]).with_hidden(usize::MAX),
            TeacherConfig::new(vec![8]).with_side(24),
            TeacherConfig::new(vec![8]).with_side(0),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(TeacherConfig::new(vec![8; 5]).check().is_ok());
    }

    /// A record whose stated shape is not its tensors', and a served network's record, are
    /// not taken for a teacher.
    #[test]
    fn records_that_are_not_this_teacher_are_refused() {
        let device = crate::Backend::default().device();
        let dir = tempfile::tempdir().unwrap();
        let small = TeacherConfig::named("teacher-s").unwrap();
        let path = dir.path().join("lying.safetensors");
        save_teacher(
            &small.init(&device),
            &TeacherConfig::named("teacher-m").unwrap(),
            &path,
        )
        .unwrap();
        assert!(load_teacher(&path, &device).is_err());
        let served =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/model.safetensors");
        assert_eq!(teacher_config(&served).unwrap(), None);
        let err = load_teacher(&served, &device).unwrap_err();
        assert!(err.to_string().contains("not a teacher"), "{err}");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"not a record at all").unwrap();
        assert!(teacher_config(&text).is_err());
    }

    /// The fused blocks (the CPU path teachers train on) give the generic ops' logits at
    /// every teacher's channel counts, which the fused kernels' own tests do not cover.
    #[test]
    fn fused_and_generic_blocks_agree_at_teacher_widths() {
        let device = crate::Backend::default().device();
        let net = TeacherConfig::named("teacher-m").unwrap().init(&device);
        let x = Tensor::<4>::random(
            [3, 3, INPUT_SIZE, INPUT_SIZE],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        net.forward_with(x.clone(), true)
            .into_data()
            .assert_approx_eq::<f32>(
                &net.forward_with(x, false).into_data(),
                burn::tensor::Tolerance::absolute(1e-4),
            );
    }
}
