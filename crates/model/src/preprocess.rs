//! The one preprocessing path: encoded bytes → RGB → 64×64 → normalised CHW floats.
//!
//! Training, the server and the CLI all call [`Preprocessor::preprocess`] (or the
//! [`resize`] + [`normalize_into`] pair on already decoded pixels), so a model sees the same
//! pixels in training and in service. The server splits the path in two:
//! [`Preprocessor::prepare`] gives the 64×64 RGB bytes (12 KiB, what waits in its queue) and
//! [`normalize_bytes_into`] turns them into floats on the inference thread.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::prelude::*;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::ImageError;
use crate::net::INPUT_SIZE;

/// Default ceiling on decoded pixels (width × height): 40 megapixels, a large phone photo.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Floats per preprocessed image: 3 × 64 × 64.
pub const IMAGE_FLOATS: usize = crate::arch::IMAGE_FLOATS;

/// Bytes per prepared image: 64 × 64 RGB, 8 bits per channel.
pub const IMAGE_BYTES: usize = crate::arch::IMAGE_FLOATS;

/// Which preprocessing a network was trained with; a record names its own in its metadata.
///
/// There is one so far. Records written before the field existed were trained with it, so a
/// record without the field means it; a record naming one this build does not have is refused
/// when loading, rather than served pixels it was not trained on. A new preprocessing would be
/// a new variant here, chosen from the record by the server and the CLI alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Preprocessing {
    /// RGB; triangle-filter (bilinear) resize to 64×64, aspect ratio not kept ([`resize`]);
    /// each channel `x / 127.5 − 1`, i.e. mean 0.5 and std 0.5 ([`normalize_into`]).
    #[default]
    #[serde(rename = "rgb-triangle64-half")]
    RgbTriangle64Half,
}

/// Decodes and prepares images, refusing oversized ones before decoding them.
#[derive(Debug, Clone, Copy)]
pub struct Preprocessor {
    max_pixels: u64,
}

impl Default for Preprocessor {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PIXELS)
    }
}

impl Preprocessor {
    /// A preprocessor that refuses images of more than `max_pixels` pixels.
    pub fn new(max_pixels: u64) -> Self {
        Self { max_pixels }
    }

    /// The pixel ceiling in force.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// The pixel count of a `width × height` image, refused when empty or over the limit.
    fn check_dimensions(self, width: u32, height: u32) -> Result<u64, ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels == 0 {
            return Err(ImageError::ZeroSized);
        }
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge {
                width,
                height,
                pixels,
                limit: self.max_pixels,
            });
        }
        Ok(pixels)
    }

    /// Reads the image's header only: its dimensions, checked against the pixel limit, and
    /// the memory that decoding it takes ([`Header::decode_bytes`]).
    pub fn header(&self, bytes: &[u8]) -> Result<Header, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        let probe = reader(bytes)?;
        let Some(format) = probe.format() else {
            return Err(ImageError::UnsupportedFormat);
        };
        let decoder = probe.into_decoder().map_err(map_image_error)?;
        let (width, height) = decoder.dimensions();
        let pixels = self.check_dimensions(width, height)?;
        // The decoded frame, its 8-bit RGB copy when the image is stored otherwise, and the
        // resize's intermediate rows (RGBA f32, 64 of them along the longer pass).
        let rgb_copy = if decoder.color_type() == image::ColorType::Rgb8 {
            0
        } else {
            pixels * 3
        };
        let scratch = (u64::from(width) + u64::from(height)) * INPUT_SIZE as u64 * 16;
        // What some decoders hold besides the frame they return (read from their sources in
        // image 0.25): TIFF reads the whole image into a buffer of its own, WebP keeps an RGBA
        // canvas (or YUV planes), GIF a frame canvas, and the JPEG decoder copies the file and,
        // for a progressive image, keeps every coefficient (2 bytes a component).
        let frame = decoder.total_bytes();
        let working = match format {
            ImageFormat::Tiff => frame,
            ImageFormat::WebP | ImageFormat::Gif => pixels * 4,
            ImageFormat::Jpeg => pixels * 6 + bytes.len() as u64,
            _ => 0,
        };
        Ok(Header {
            width,
            height,
            decode_bytes: frame + working + rgb_copy + scratch,
        })
    }

    /// Decodes `bytes` to 8-bit RGB. The dimensions are read from the header and checked
    /// against the pixel limit first, so a tiny file announcing a huge image costs nothing.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        let probe = reader(bytes)?;
        if probe.format().is_none() {
            return Err(ImageError::UnsupportedFormat);
        }
        let (width, height) = probe.into_dimensions().map_err(map_image_error)?;
        let pixels = self.check_dimensions(width, height)?;

        let mut reader = reader(bytes)?;
        // The header was honest so far; the limits hold the decoder to it (animated GIFs and
        // multi-page TIFFs can still allocate more than one frame).
        let mut limits = Limits::default();
        limits.max_image_width = Some(width);
        limits.max_image_height = Some(height);
        limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(1 << 20));
        reader.limits(limits);
        // Decoders are third-party code fed untrusted bytes: a panic in one is a bad image,
        // not a crashed worker.
        let decoded = catch_unwind(AssertUnwindSafe(|| reader.decode()))
            .map_err(|_| ImageError::Decode("decoder failed on malformed data".into()))?
            .map_err(map_image_error)?;
        Ok(to_rgb(decoded))
    }

    /// Decodes `bytes` and returns the normalised `3×64×64` CHW floats.
    pub fn preprocess(&self, bytes: &[u8]) -> Result<Vec<f32>, ImageError> {
        let mut out = vec![0.0; IMAGE_FLOATS];
        normalize_bytes_into(&self.prepare(bytes)?, &mut out);
        Ok(out)
    }

    /// Decodes `bytes` and returns the 64×64 RGB image as [`IMAGE_BYTES`] bytes (row-major,
    /// channels interleaved): the model's input before [`normalize_bytes_into`].
    pub fn prepare(&self, bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
        Ok(resize(&self.decode(bytes)?).into_raw())
    }

    /// Preprocesses several images; each keeps its own result so one bad image spoils nothing.
    pub fn preprocess_batch<B: AsRef<[u8]>>(
        &self,
        images: &[B],
    ) -> Vec<Result<Vec<f32>, ImageError>> {
        images.iter().map(|b| self.preprocess(b.as_ref())).collect()
    }
}

/// What an image's header says, before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Width in pixels, as the header gives it.
    pub width: u32,
    /// Height in pixels, as the header gives it.
    pub height: u32,
    /// Bytes that decoding and resizing it allocate at their peak (an upper estimate from
    /// the header's dimensions and colour type).
    pub decode_bytes: u64,
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))
}

fn map_image_error(err: image::ImageError) -> ImageError {
    match err {
        image::ImageError::Unsupported(_) => ImageError::UnsupportedFormat,
        image::ImageError::Limits(e) => ImageError::Decode(format!("image exceeds limits: {e}")),
        other => ImageError::Decode(other.to_string()),
    }
}

/// Any colour type (grey, grey+alpha, RGBA, 16-bit, float, palette-expanded) to 8-bit RGB.
/// Alpha is dropped, as PIL's `convert("RGB")` does in the original service.
fn to_rgb(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// The resize used everywhere: bilinear (triangle filter) to exactly 64×64, aspect ratio not
/// kept, like torchvision's `Resize((64, 64))` in the original.
///
/// Byte for byte what `image::imageops::resize(img, 64, 64, FilterType::Triangle)` gives (a
/// test holds it to that for many sizes), computed with the same float operations in the same
/// order, but on RGB bytes directly with the filter taps computed once per axis: image's generic
/// version reads every pixel through `get_pixel` and four channels, and calls its kernel through
/// a boxed closure for every output row. Training resizes every CIFAR image of every batch
/// (32×32 → 64×64), so this runs 50,000 times an epoch.
pub fn resize(img: &RgbImage) -> RgbImage {
    let side = INPUT_SIZE as u32;
    let (w, h) = img.dimensions();
    if (w, h) == (side, side) || w == 0 || h == 0 {
        return if w == 0 || h == 0 {
            RgbImage::new(side, side)
        } else {
            img.clone()
        };
    }
    let src = img.as_raw();
    let (w, h, n) = (w as usize, h as usize, INPUT_SIZE);
    // Vertical pass first (as image does): n rows of w RGB floats.
    let mut tmp = vec![0.0f32; n * w * 3];
    for (row, (top, weights)) in taps(h, n).iter().enumerate() {
        let out = &mut tmp[row * w * 3..(row + 1) * w * 3];
        for (i, &wt) in weights.iter().enumerate() {
            let line = &src[(top + i) * w * 3..(top + i + 1) * w * 3];
            for (t, &v) in out.iter_mut().zip(line) {
                *t += f32::from(v) * wt;
            }
        }
    }
    // Horizontal pass, rounded to the nearest byte.
    let mut out = vec![0u8; n * n * 3];
    let columns = taps(w, n);
    for row in 0..n {
        let line = &tmp[row * w * 3..(row + 1) * w * 3];
        let dst = &mut out[row * n * 3..(row + 1) * n * 3];
        for (x, (left, weights)) in columns.iter().enumerate() {
            for c in 0..3 {
                let mut t = 0.0f32;
                for (i, &wt) in weights.iter().enumerate() {
                    t += line[(left + i) * 3 + c] * wt;
                }
                dst[x * 3 + c] = round_to_byte(t);
            }
        }
    }
    RgbImage::from_raw(side, side, out).expect("64×64×3 bytes")
}

/// `t.clamp(0.0, 255.0).round() as u8`, exactly, without `round`: on x86-64 without SSE4.1
/// that is a call into libm for every byte, which was a tenth of a loaded server's time
/// (`perf`, 32 connections on 32×32 JPEGs). The integer part is exact and so is `t - whole`
/// (both below 2²³), and ties go up, as `round`'s do for non-negative values; NaN gives 0 both
/// ways.
#[inline]
fn round_to_byte(t: f32) -> u8 {
    let t = t.clamp(0.0, 255.0);
    let whole = t as u8;
    if t - f32::from(whole) >= 0.5 {
        whole + 1
    } else {
        whole
    }
}

/// For each of `dst` output positions along an axis of `src` pixels: the first input pixel and
/// the normalised triangle-filter weights, computed exactly as `image` 0.25's `sample.rs` does.
fn taps(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let ratio = src as f32 / dst as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio; // the triangle filter's support is 1
    (0..dst)
        .map(|out| {
            let input = (out as f32 + 0.5) * ratio;
            let left = ((input - support).floor() as i64).clamp(0, src as i64 - 1);
            let right = ((input + support).ceil() as i64).clamp(left + 1, src as i64);
            let input = input - 0.5;
            let mut weights: Vec<f32> = (left..right)
                .map(|i| {
                    let x = ((i as f32 - input) / sratio).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let sum: f32 = weights.iter().fold(0.0, |s, w| s + w);
            for w in &mut weights {
                *w /= sum;
            }
            (left as usize, weights)
        })
        .collect()
}

/// Writes a 64×64 RGB image into `out` as CHW floats normalised to [-1, 1]
/// (mean 0.5, std 0.5 per channel, as the original `Normalize`).
pub fn normalize_into(img: &RgbImage, out: &mut [f32]) {
    assert_eq!(img.dimensions(), (INPUT_SIZE as u32, INPUT_SIZE as u32));
    normalize_bytes_into(img.as_raw(), out);
}

/// [`normalize_into`] on the raw bytes of a 64×64 RGB image ([`IMAGE_BYTES`] of them).
pub fn normalize_bytes_into(rgb: &[u8], out: &mut [f32]) {
    assert_eq!(rgb.len(), IMAGE_BYTES);
    assert_eq!(out.len(), IMAGE_FLOATS);
    let plane = INPUT_SIZE * INPUT_SIZE;
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(px[c]) / 127.5 - 1.0;
        }
    }
}

/// Stacks `n` preprocessed images (concatenated CHW floats) into a `[n, 3, 64, 64]` tensor.
pub fn to_tensor(floats: Vec<f32>, n: usize, device: &Device) -> Tensor<4> {
    assert_eq!(floats.len(), n * IMAGE_FLOATS);
    Tensor::from_data(
        TensorData::new(floats, [n, 3, INPUT_SIZE, INPUT_SIZE]),
        device,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_to_byte_is_clamp_then_round() {
        let edges = [
            -1.0,
            -0.0,
            0.0,
            0.499_999_97,
            0.5,
            0.500_000_06,
            1.5,
            2.5,
            254.49998,
            254.5,
        ];
        let more = (0..=2600).map(|i| i as f32 * 0.1 - 2.0);
        for t in edges
            .into_iter()
            .chain(more)
            .chain([255.0, 255.5, 1e9, f32::NAN])
        {
            assert_eq!(round_to_byte(t), t.clamp(0.0, 255.0).round() as u8, "{t}");
        }
    }

    #[test]
    fn resize_is_byte_identical_to_image_crates_triangle_filter() {
        use image::imageops::{FilterType, resize as reference};
        let mut seed = 12345u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as u32
        };
        let mut sizes = vec![
            (32, 32),
            (1, 1),
            (1, 64),
            (64, 1),
            (63, 65),
            (512, 512),
            (640, 480),
        ];
        sizes.extend((0..60).map(|_| (1 + next() % 200, 1 + next() % 200)));
        for (w, h) in sizes {
            let img = RgbImage::from_fn(w, h, |_, _| {
                let v = next();
                image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            });
            let want = if (w, h) == (64, 64) {
                img.clone()
            } else {
                reference(&img, 64, 64, FilterType::Triangle)
            };
            assert!(super::resize(&img) == want, "{w}×{h}");
        }
    }

    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgba};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn normalised_range_and_layout() {
        let img = RgbImage::from_fn(64, 64, |x, _| image::Rgb([255, 0, (x * 4) as u8]));
        let mut out = vec![0.0; IMAGE_FLOATS];
        normalize_into(&img, &mut out);
        assert_eq!(out[0], 1.0); // red plane
        assert_eq!(out[4096], -1.0); // green plane
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn grayscale_becomes_equal_channels() {
        let gray = ImageBuffer::from_pixel(10, 7, Luma([200u8]));
        let bytes = encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Png);
        let v = Preprocessor::default().preprocess(&bytes).unwrap();
        let expected = 200.0 / 127.5 - 1.0;
        assert!(v.iter().all(|x| (x - expected).abs() < 1e-6));
    }

    #[test]
    fn sixteen_bit_and_alpha_convert() {
        let img = ImageBuffer::from_pixel(8, 8, Rgba([65535u16, 0, 32768, 0]));
        let bytes = encode(&DynamicImage::ImageRgba16(img), ImageFormat::Png);
        let rgb = Preprocessor::default().decode(&bytes).unwrap();
        assert_eq!(rgb.get_pixel(3, 3).0, [255, 0, 128]);
    }

    #[test]
    fn refuses_empty_and_garbage() {
        let p = Preprocessor::default();
        assert!(matches!(p.preprocess(b""), Err(ImageError::Empty)));
        assert!(matches!(
            p.preprocess(b"definitely not an image"),
            Err(ImageError::UnsupportedFormat)
        ));
    }

    #[test]
    fn header_reads_dimensions_and_decode_cost_without_decoding() {
        let rgb = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(100, 50)),
            ImageFormat::Png,
        );
        let h = Preprocessor::default().header(&rgb).unwrap();
        assert_eq!((h.width, h.height), (100, 50));
        assert_eq!(h.decode_bytes, 100 * 50 * 3 + 150 * 64 * 16);
        // RGBA16 needs its own frame (8 bytes a pixel) and the 8-bit RGB copy.
        let img = ImageBuffer::from_pixel(100, 50, Rgba([1u16, 2, 3, 4]));
        let rgba = encode(&DynamicImage::ImageRgba16(img), ImageFormat::Png);
        let h = Preprocessor::default().header(&rgba).unwrap();
        assert_eq!(h.decode_bytes, 100 * 50 * (8 + 3) + 150 * 64 * 16);
        assert!(matches!(
            Preprocessor::new(4_999).header(&rgb),
            Err(ImageError::TooLarge { pixels: 5_000, .. })
        ));
    }

    #[test]
    fn prepared_bytes_normalise_to_the_same_floats() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 77]));
        let png = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let p = Preprocessor::default();
        let bytes = p.prepare(&png).unwrap();
        assert_eq!(bytes.len(), IMAGE_BYTES);
        let mut floats = vec![0.0; IMAGE_FLOATS];
        normalize_bytes_into(&bytes, &mut floats);
        assert_eq!(floats, p.preprocess(&png).unwrap());
    }

    #[test]
    fn limit_is_configurable() {
        let bytes = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(100, 100)),
            ImageFormat::Png,
        );
        assert!(Preprocessor::new(10_000).decode(&bytes).is_ok());
        assert!(matches!(
            Preprocessor::new(9_999).decode(&bytes),
            Err(ImageError::TooLarge { pixels: 10_000, .. })
        ));
    }
}
