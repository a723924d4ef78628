//! Explanations: which pixels of an image a prediction rests on.
//!
//! Four methods, each an attribution map of one value per input pixel (64×64, row-major), larger
//! meaning more evidence for the target class:
//!
//! - **Grad-CAM** ([`Explainer::grad_cam`]) on the second convolution block. For this network the
//!   gradient of a logit with respect to the pooled conv2 features has a closed form: fc2's column
//!   for the class, masked where fc1's ReLU is off, through fc1's weights
//!   ([`Explainer::feature_gradient`]); so the map costs one forward pass and one 8192×100
//!   product, no autodiff. The 16×16 map is `Σ_channels gradient ⊙ feature`, upsampled
//!   bilinearly to 64×64: Grad-CAM's element-wise form (`HiResCAM`, Draelos & Carin 2020), where
//!   each cell holds its exact share of the logit (the head is linear once fc1's ReLU mask is
//!   fixed). Classic Grad-CAM weighs each channel by its gradient's spatial mean, which is the
//!   same thing only for networks that end in global average pooling; this one ends in an
//!   8192→100 layer, and there the mean-weighted map failed the deletion test (greying its top
//!   10% lowered the prediction less than greying random regions: `tests/explain.rs`, docs).
//! - **Occlusion** ([`occlusion_inputs`], [`occlusion`]): the image with each 8×8 patch greyed
//!   (the normalised 0, mid-grey), 64 images run by whatever runs the model's predictions (the
//!   server's batching engine, the CLI's [`crate::Inference`], so that the fall is measured from
//!   the probability as predicted); a patch's value is how much the target's probability falls
//!   without it.
//! - **Gradient saliency** ([`Explainer::saliency`]): gradient × input, summed over a pixel's
//!   channels: the first-order estimate of how much greying that pixel lowers the target logit,
//!   through Burn's autodiff. (The gradient's magnitude alone, Simonyan et al.'s map, failed the
//!   deletion test here: greying its top 10% lowered the prediction less than random pixels.)
//! - **Integrated gradients** ([`Explainer::integrated_gradients`]): the input times the mean
//!   gradient along the straight path from a grey image (midpoint rule, `steps` points, run in
//!   chunks of [`IG_CHUNK`] interpolants), summed over channels; its values add up to the logit's
//!   rise from the grey image (completeness), within the rule's error.
//!
//! The target is the class the caller names, or the predicted one ([`target`]): never class 0 by
//! default. [`heat`], [`resize`] and [`overlay`] turn a map into what a person looks at;
//! [`delete`] is how the tests and the figures measure whether a map is faithful (greying the
//! pixels it ranks highest should hurt the prediction more than greying random ones).

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::prelude::*;
use image::{Rgb, RgbImage};

use crate::error::RecordError;
use crate::net::{Cnn, INPUT_SIZE, arch};
use crate::predict::values;
use crate::preprocess::{IMAGE_FLOATS, to_tensor};

/// Pixels of one attribution map: 64×64, row-major.
pub const MAP_PIXELS: usize = INPUT_SIZE * INPUT_SIZE;
/// Side of an occlusion patch, in input pixels.
pub const PATCH: usize = 8;
/// Occluded images per explanation: one per patch.
pub const PATCHES: usize = (INPUT_SIZE / PATCH) * (INPUT_SIZE / PATCH);
/// Integrated gradients' steps when the caller gives none.
pub const DEFAULT_STEPS: usize = 32;
/// Interpolants per backward pass of integrated gradients: what bounds the memory one
/// explanation takes, whatever its step count.
pub const IG_CHUNK: usize = 16;
/// Memory one gradient explanation holds at its peak, in bytes: [`IG_CHUNK`] interpolants'
/// activations and gradients (about 0.5 MiB each through the fused blocks: inputs, block
/// outputs, the pools' argmax bytes, their gradients) and the autodiff copy's working buffers,
/// rounded up. Measured peak: see the server's memory test.
pub const GRADIENT_BYTES: u64 = 16 << 20;

/// An explanation method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Method {
    /// Grad-CAM on the second convolution block (closed-form gradient; one forward pass).
    #[default]
    GradCam,
    /// Each 8×8 patch greyed in turn: 64 more images through the model.
    Occlusion,
    /// The target logit's gradient with respect to the input pixels.
    Saliency,
    /// Integrated gradients from a grey image.
    IntegratedGradients,
}

impl Method {
    /// Every method, the default first.
    pub const ALL: [Method; 4] = [
        Method::GradCam,
        Method::Occlusion,
        Method::Saliency,
        Method::IntegratedGradients,
    ];

    /// The name requests use.
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::Occlusion => "occlusion",
            Method::Saliency => "saliency",
            Method::IntegratedGradients => "integrated-gradients",
        }
    }

    /// Whether the method runs Burn's autodiff (its cost grows with the input's gradient).
    pub fn uses_autodiff(self) -> bool {
        matches!(self, Method::Saliency | Method::IntegratedGradients)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A method name that is not one of [`Method::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown explanation method '{0}' (known: gradcam, occlusion, saliency, integrated-gradients)"
)]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Method::ALL
            .into_iter()
            .find(|m| m.name() == wanted || (wanted == "ig" && *m == Method::IntegratedGradients))
            .ok_or_else(|| UnknownMethod(s.chars().take(64).collect()))
    }
}

/// A target class that is neither a class name nor an index below 10.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown target class '{0}' (a class name such as 'cat', or an index from 0 to 9)")]
pub struct UnknownClass(pub String);

/// A class named by its name (`cat`) or its index (`3`).
pub fn parse_class(s: &str) -> Result<usize, UnknownClass> {
    let s = s.trim();
    if let Ok(i) = s.parse::<usize>() {
        return if i < arch::CLASSES {
            Ok(i)
        } else {
            Err(UnknownClass(s.chars().take(64).collect()))
        };
    }
    crate::CLASSES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(s))
        .ok_or_else(|| UnknownClass(s.chars().take(64).collect()))
}

/// The class to explain: `requested`, or the most probable in `scores` (one image's logits or
/// probabilities).
pub fn target(requested: Option<usize>, scores: &[f32]) -> usize {
    requested.unwrap_or_else(|| {
        scores
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &s)| {
                if s > best.1 { (i, s) } else { best }
            })
            .0
    })
}

/// The gradient methods and Grad-CAM for one network: its weights as Grad-CAM's closed form
/// reads them, and a copy on the autodiff device that records nothing for the weights.
#[derive(Debug)]
pub struct Explainer {
    /// The network on the autodiff device, recording nothing for its weights: the input's
    /// gradient for the gradient methods, and an untracked forward pass for Grad-CAM.
    autodiff: Cnn,
    device: Device,
    /// fc1's weight by hidden unit, `[100, 8192]` (Burn's `[in, out]` transposed: each unit's
    /// weights contiguous), and its bias.
    fc1_by_unit: Vec<f32>,
    fc1_bias: Vec<f32>,
    /// fc2's weight, `[100, 10]`.
    fc2: Vec<f32>,
}

impl Explainer {
    /// Prepares explanations of `net` (which may live on any device): a copy of its weights on
    /// the default backend's autodiff device, and fc1's and fc2's weights as plain floats
    /// (about 6.6 MB in all).
    pub fn new(net: &Cnn) -> Result<Self, RecordError> {
        let device = crate::Backend::default().device().autodiff();
        let autodiff = crate::record::copy_to(net, &device)?.no_grad();
        let net = &autodiff;
        let bias = |b: &Option<burn::module::Param<Tensor<1>>>| {
            b.as_ref().map(|p| values(p.val())).unwrap_or_default()
        };
        Ok(Self {
            fc1_by_unit: values(net.fc1.weight.val().transpose()),
            fc1_bias: bias(&net.fc1.bias),
            fc2: values(net.fc2.weight.val()),
            device,
            autodiff,
        })
    }

    /// The pooled conv2 features (`[32, 16, 16]` each, back to back) and logits of `images`
    /// (preprocessed, back to back).
    pub fn features(&self, images: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let n = images.len() / IMAGE_FLOATS;
        // No input asks for a gradient: the pass records nothing.
        let x = to_tensor(images.to_vec(), n, &self.device);
        let features = self.autodiff.features(x);
        let logits = self.autodiff.head(features.clone());
        (values(features.inner()), values(logits.inner()))
    }

    /// The gradient of `class`'s logit with respect to one image's pooled conv2 `features`
    /// (`[32, 16, 16]`), in closed form: `fc1 · (fc2[:, class] ⊙ [fc1's pre-activation > 0])`.
    pub fn feature_gradient(&self, features: &[f32], class: usize) -> Vec<f32> {
        let flat = arch::FLAT_FEATURES;
        assert_eq!(features.len(), flat);
        let mut g = vec![0.0f32; flat];
        // fc1 by hidden unit (`fc1ᵀ`, rows of 8192): its pre-activation says whether the unit
        // passes a gradient, and each unit that does adds its row times fc2's weight.
        for (j, row) in self.fc1_by_unit.chunks_exact(flat).enumerate() {
            let z = self.fc1_bias[j] + dot(row, features);
            let w = self.fc2[j * arch::CLASSES + class];
            if z > 0.0 && w != 0.0 {
                for (g, r) in g.iter_mut().zip(row) {
                    *g += w * r;
                }
            }
        }
        g
    }

    /// Grad-CAM maps (element-wise form) of `images` for their `targets` (one each), upsampled
    /// to 64×64, with the images' logits.
    pub fn grad_cam(&self, images: &[f32], targets: &[usize]) -> (Vec<Vec<f32>>, Vec<f32>) {
        let (features, logits) = self.features(images);
        let side = INPUT_SIZE / (arch::POOL * arch::POOL);
        let plane = side * side;
        let maps = features
            .chunks_exact(arch::FLAT_FEATURES)
            .zip(targets)
            .map(|(a, &class)| {
                let g = self.feature_gradient(a, class);
                let mut cam = vec![0.0f32; plane];
                for (g, a) in g.chunks_exact(plane).zip(a.chunks_exact(plane)) {
                    for ((c, g), a) in cam.iter_mut().zip(g).zip(a) {
                        *c += g * a;
                    }
                }
                resize(&cam, side, side, INPUT_SIZE, INPUT_SIZE)
            })
            .collect();
        (maps, logits)
    }

    /// The gradient of each image's target logit with respect to its pixels (`[3, 64, 64]`
    /// each, back to back), and the logits.
    pub fn input_gradients(&self, images: &[f32], targets: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let n = images.len() / IMAGE_FLOATS;
        assert_eq!(targets.len(), n);
        let x = to_tensor(images.to_vec(), n, &self.device).require_grad();
        let logits = self.autodiff.forward(x.clone());
        // One-hot selection: the sum of each image's target logit; each image's gradient is
        // its own logit's (the images do not interact).
        let mut pick = vec![0.0f32; n * arch::CLASSES];
        for (i, &t) in targets.iter().enumerate() {
            pick[i * arch::CLASSES + t] = 1.0;
        }
        let pick = Tensor::<2>::from_data(TensorData::new(pick, [n, arch::CLASSES]), &self.device);
        let grads = (logits.clone() * pick).sum().backward();
        let g = x
            .grad(&grads)
            .map_or_else(|| vec![0.0; images.len()], values);
        (g, values(logits.inner()))
    }

    /// Gradient saliency of one image for `target`: gradient × input, summed over channels.
    pub fn saliency(&self, image: &[f32], target: usize) -> Vec<f32> {
        let (g, _) = self.input_gradients(image, &[target]);
        (0..MAP_PIXELS)
            .map(|p| {
                (0..3)
                    .map(|c| g[c * MAP_PIXELS + p] * image[c * MAP_PIXELS + p])
                    .sum()
            })
            .collect()
    }

    /// Integrated gradients of one image for `target` from the grey image (all zeros), with
    /// `steps` points of the midpoint rule (at least 1), summed over channels.
    pub fn integrated_gradients(&self, image: &[f32], target: usize, steps: usize) -> Vec<f32> {
        self.integrated_gradients_until(image, target, steps, &|| true)
            .unwrap_or_default()
    }

    /// [`Explainer::integrated_gradients`], asking `go_on` before each pass of [`IG_CHUNK`]
    /// interpolants: `None` as soon as it says no (the caller no longer wants the answer).
    pub fn integrated_gradients_until(
        &self,
        image: &[f32],
        target: usize,
        steps: usize,
        go_on: &dyn Fn() -> bool,
    ) -> Option<Vec<f32>> {
        let steps = steps.max(1);
        let mut total = vec![0.0f32; IMAGE_FLOATS];
        let mut k = 0;
        while k < steps {
            if !go_on() {
                return None;
            }
            let chunk = IG_CHUNK.min(steps - k);
            let mut batch = Vec::with_capacity(chunk * IMAGE_FLOATS);
            for s in k..k + chunk {
                let alpha = (s as f32 + 0.5) / steps as f32;
                batch.extend(image.iter().map(|x| x * alpha));
            }
            let (g, _) = self.input_gradients(&batch, &vec![target; chunk]);
            for one in g.chunks_exact(IMAGE_FLOATS) {
                for (t, v) in total.iter_mut().zip(one) {
                    *t += v;
                }
            }
            k += chunk;
        }
        let scale = 1.0 / steps as f32;
        Some(
            (0..MAP_PIXELS)
                .map(|p| {
                    (0..3)
                        .map(|c| image[c * MAP_PIXELS + p] * total[c * MAP_PIXELS + p] * scale)
                        .sum()
                })
                .collect(),
        )
    }

    /// One image's map by any method; occlusion's 65 images run through this explainer's
    /// Burn module (the server and the CLI send them through their own model run instead:
    /// [`occlusion_inputs`], [`occlusion`]).
    pub fn explain(&self, method: Method, image: &[f32], target: usize, steps: usize) -> Vec<f32> {
        self.explain_until(method, image, target, steps, &|| true)
            .unwrap_or_default()
    }

    /// [`Explainer::explain`], giving up (`None`) when `go_on` says so between passes.
    pub fn explain_until(
        &self,
        method: Method,
        image: &[f32],
        target: usize,
        steps: usize,
        go_on: &dyn Fn() -> bool,
    ) -> Option<Vec<f32>> {
        if !go_on() {
            return None;
        }
        match method {
            Method::GradCam => Some(self.grad_cam(image, &[target]).0.remove(0)),
            Method::Saliency => Some(self.saliency(image, target)),
            Method::IntegratedGradients => {
                self.integrated_gradients_until(image, target, steps, go_on)
            }
            Method::Occlusion => {
                let batch = occlusion_inputs(image);
                let all: Vec<f32> = image.iter().chain(&batch).copied().collect();
                let (_, logits) = self.features(&all);
                let probs = crate::softmax(&logits, arch::CLASSES);
                Some(occlusion(&probs, target))
            }
        }
    }
}

/// `a · b`, in eight lanes so that it vectorises (a sum left to right cannot).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The [`PATCHES`] occluded copies of one preprocessed image, back to back: patch `i` (row
/// by row) greyed in copy `i`.
pub fn occlusion_inputs(image: &[f32]) -> Vec<f32> {
    assert_eq!(image.len(), IMAGE_FLOATS);
    let per_row = INPUT_SIZE / PATCH;
    let mut out = Vec::with_capacity(PATCHES * IMAGE_FLOATS);
    for p in 0..PATCHES {
        let start = out.len();
        out.extend_from_slice(image);
        let (py, px) = (p / per_row * PATCH, p % per_row * PATCH);
        for c in 0..3 {
            for y in py..py + PATCH {
                let row = start + c * MAP_PIXELS + y * INPUT_SIZE;
                out[row + px..row + px + PATCH].fill(0.0);
            }
        }
    }
    out
}

/// The occlusion map from the probabilities of the image and then of its [`PATCHES`] occluded
/// copies (`(1 + PATCHES) × 10`, in [`occlusion_inputs`]' order): each patch's pixels hold how
/// much `target`'s probability fell when it was greyed (negative where it rose).
pub fn occlusion(probabilities: &[f32], target: usize) -> Vec<f32> {
    let classes = arch::CLASSES;
    assert_eq!(probabilities.len(), (1 + PATCHES) * classes);
    let base = probabilities[target];
    let per_row = INPUT_SIZE / PATCH;
    let mut map = vec![0.0f32; MAP_PIXELS];
    for p in 0..PATCHES {
        let drop = base - probabilities[(1 + p) * classes + target];
        let (py, px) = (p / per_row * PATCH, p % per_row * PATCH);
        for y in py..py + PATCH {
            map[y * INPUT_SIZE + px..y * INPUT_SIZE + px + PATCH].fill(drop);
        }
    }
    map
}

/// A map for display: its positive part scaled to [0, 1], where 1 is the 99th percentile of
/// the positive values and anything above it (a few outlying pixels, which would otherwise
/// leave the rest of a pixel-level map invisible) is clipped to 1, as Captum's visualiser does;
/// all zeros when nothing is positive.
pub fn heat(map: &[f32]) -> Vec<f32> {
    let mut positive: Vec<f32> = map.iter().copied().filter(|v| *v > 0.0).collect();
    if positive.is_empty() {
        return vec![0.0; map.len()];
    }
    positive.sort_by(f32::total_cmp);
    let scale = positive[((positive.len() - 1) * 99).div_ceil(100)];
    if !(scale.is_finite() && scale > 0.0) {
        return vec![0.0; map.len()];
    }
    map.iter().map(|v| (v / scale).clamp(0.0, 1.0)).collect()
}

/// Values rounded to 1/1000: how the JSON answers carry a heatmap (three decimals say all a
/// display can show, in a third of the text).
pub fn thousandths(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| (v * 1000.0).round() / 1000.0)
        .collect()
}

/// `(width, height)` scaled, proportions kept, so that the longer side is within
/// `shortest..=longest` (unchanged when it already is; never below 1 pixel).
pub fn fit((width, height): (u32, u32), shortest: u32, longest: u32) -> (u32, u32) {
    let side = width.max(height).max(1);
    let wanted = side.clamp(shortest, longest);
    if wanted == side {
        return (width.max(1), height.max(1));
    }
    let scale = |v: u32| ((u64::from(v) * u64::from(wanted)) / u64::from(side)).max(1) as u32;
    (scale(width), scale(height))
}

/// Bilinear resampling of a `sw × sh` map to `dw × dh`, pixel centres aligned (as image
/// resizers and PyTorch's `align_corners=False` do).
pub fn resize(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    assert_eq!(src.len(), sw * sh);
    let axis = |d: usize, s: usize| -> Vec<(usize, usize, f32)> {
        (0..d)
            .map(|i| {
                let x = ((i as f32 + 0.5) * s as f32 / d as f32 - 0.5).clamp(0.0, (s - 1) as f32);
                let lo = x.floor() as usize;
                let hi = (lo + 1).min(s - 1);
                (lo, hi, x - lo as f32)
            })
            .collect()
    };
    let (xs, ys) = (axis(dw, sw), axis(dh, sh));
    let mut out = Vec::with_capacity(dw * dh);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = src[y0 * sw + x0] * (1.0 - fx) + src[y0 * sw + x1] * fx;
            let bottom = src[y1 * sw + x0] * (1.0 - fx) + src[y1 * sw + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// A heat value in [0, 1] as a colour: dark blue through cyan, yellow, to red (a short
/// piecewise-linear "jet").
pub fn colour(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ramp = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    [
        ramp(1.5 - (4.0 * v - 3.0).abs()),
        ramp(1.5 - (4.0 * v - 2.0).abs()),
        ramp(1.5 - (4.0 * v - 1.0).abs()),
    ]
}

/// `image` (any size) with `heat` (64×64, in [0, 1]) laid over it: each pixel blended towards
/// its heat's colour by `0.75 × √heat`, so that where there is no evidence the picture shows
/// unchanged and weak evidence (most of a pixel-level map) still shows.
pub fn overlay(image: &RgbImage, heat: &[f32]) -> RgbImage {
    let (w, h) = image.dimensions();
    let heat = resize(heat, INPUT_SIZE, INPUT_SIZE, w as usize, h as usize);
    let mut out = image.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        let v = heat[i].clamp(0.0, 1.0);
        let c = colour(v);
        let a = 0.75 * v.sqrt();
        *px = Rgb(std::array::from_fn(|k| {
            (f32::from(px.0[k]) * (1.0 - a) + f32::from(c[k]) * a).round() as u8
        }));
    }
    out
}

/// `map` (any units) as a heatmap over `image`, encoded as PNG.
pub fn overlay_png(image: &RgbImage, map: &[f32]) -> Result<Vec<u8>, image::ImageError> {
    let drawn = overlay(image, &heat(map));
    let mut out = Vec::new();
    drawn.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

/// The image the model saw (`pixels`, preprocessed) enlarged to `side` pixels square, as
/// [`overlay`] and [`overlay_png`] draw over.
pub fn enlarged(pixels: &[f32], side: u32) -> RgbImage {
    image::imageops::resize(
        &to_rgb(pixels),
        side,
        side,
        image::imageops::FilterType::Triangle,
    )
}

/// The 64×64 RGB image a preprocessed one came from (the inverse of the normalisation).
pub fn to_rgb(image: &[f32]) -> RgbImage {
    assert_eq!(image.len(), IMAGE_FLOATS);
    RgbImage::from_fn(INPUT_SIZE as u32, INPUT_SIZE as u32, |x, y| {
        let p = y as usize * INPUT_SIZE + x as usize;
        Rgb(std::array::from_fn(|c| {
            ((image[c * MAP_PIXELS + p] + 1.0) * 127.5)
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    })
}

/// The pixels `map` ranks highest, `count` of them (ties by position).
pub fn top_pixels(map: &[f32], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[b].total_cmp(&map[a]).then(a.cmp(&b)));
    order.truncate(count);
    order
}

/// `image` with `pixels` greyed on every channel (the deletion test's step).
pub fn delete(image: &[f32], pixels: &[usize]) -> Vec<f32> {
    let mut out = image.to_vec();
    for &p in pixels {
        for c in 0..3 {
            out[c * MAP_PIXELS + p] = 0.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip_their_names_and_refuse_others() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert_eq!("IG".parse::<Method>().unwrap(), Method::IntegratedGradients);
        assert!("lime".parse::<Method>().is_err());
        assert_eq!(parse_class("cat").unwrap(), 3);
        assert_eq!(parse_class(" 9 ").unwrap(), 9);
        assert!(parse_class("10").is_err());
        assert!(parse_class("unicorn").is_err());
    }

    #[test]
    fn the_target_is_the_requested_class_or_the_best() {
        let scores = [0.1, 0.5, 0.2, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(target(None, &scores), 3);
        assert_eq!(target(Some(7), &scores), 7);
    }

    #[test]
    fn each_occluded_copy_greys_exactly_its_patch() {
        let image: Vec<f32> = (0..IMAGE_FLOATS)
            .map(|i| 0.25 + (i % 7) as f32 * 0.1)
            .collect();
        let copies = occlusion_inputs(&image);
        assert_eq!(copies.len(), PATCHES * IMAGE_FLOATS);
        for (p, copy) in copies.chunks_exact(IMAGE_FLOATS).enumerate() {
            let greyed: Vec<usize> = (0..IMAGE_FLOATS).filter(|&i| copy[i] != image[i]).collect();
            assert_eq!(greyed.len(), 3 * PATCH * PATCH, "patch {p}");
            let (py, px) = (p / 8 * PATCH, p % 8 * PATCH);
            for i in greyed {
                let (y, x) = ((i % MAP_PIXELS) / INPUT_SIZE, i % INPUT_SIZE);
                assert!((py..py + PATCH).contains(&y) && (px..px + PATCH).contains(&x));
                assert_eq!(copy[i], 0.0);
            }
        }
    }

    #[test]
    fn the_occlusion_map_is_the_fall_of_the_targets_probability() {
        let mut probs = vec![0.1f32; (1 + PATCHES) * 10];
        probs[2] = 0.8;
        probs[(1 + 9) * 10 + 2] = 0.3; // patch 9: row 1, column 1
        let map = occlusion(&probs, 2);
        assert!((map[8 * INPUT_SIZE + 8] - 0.5).abs() < 1e-6);
        assert!((map[15 * INPUT_SIZE + 15] - 0.5).abs() < 1e-6);
        assert!((map[0] - 0.7).abs() < 1e-6);
    }

    #[test]
    fn resizing_keeps_constants_and_interpolates_between_centres() {
        assert!(
            resize(&[2.0; 16], 4, 4, 9, 7)
                .iter()
                .all(|v| (v - 2.0).abs() < 1e-6)
        );
        let up = resize(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn heat_scales_the_positive_part() {
        assert_eq!(heat(&[-1.0, 0.5, 2.0]), vec![0.0, 0.25, 1.0]);
        assert_eq!(heat(&[-1.0, -2.0]), vec![0.0, 0.0]);
        // One outlier among 200 positive values is clipped, not the scale.
        let mut map: Vec<f32> = (1..=200).map(|v| v as f32).collect();
        map[0] = 1e6;
        let h = heat(&map);
        assert_eq!(h[0], 1.0);
        assert!((h[100] - 101.0 / 200.0).abs() < 1e-6, "{}", h[100]);
        assert_eq!(colour(0.0), [0, 0, 128]);
        assert_eq!(colour(1.0), [128, 0, 0]);
    }

    #[test]
    fn fitting_keeps_proportions_within_the_bounds() {
        assert_eq!(fit((32, 32), 1, 512), (32, 32));
        assert_eq!(fit((1024, 512), 1, 512), (512, 256));
        assert_eq!(fit((10_000, 3), 1, 512), (512, 1));
        assert_eq!(fit((32, 16), 256, 1024), (256, 128));
        assert_eq!(fit((0, 0), 1, 512), (1, 1));
    }

    #[test]
    fn deletion_greys_the_top_ranked_pixels() {
        let map: Vec<f32> = (0..MAP_PIXELS).map(|i| (i % 97) as f32).collect();
        let top = top_pixels(&map, 10);
        assert!(top.iter().all(|&p| map[p] == 96.0));
        let image = vec![0.5f32; IMAGE_FLOATS];
        let deleted = delete(&image, &top);
        assert_eq!(deleted.iter().filter(|v| **v == 0.0).count(), 30);
    }
}
