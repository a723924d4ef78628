//! Property tests of the preprocessing invariant: any image this build decodes, of any size,
//! colour type and format, becomes exactly 3×64×64 finite values in the normalised range.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat};
use model::{IMAGE_FLOATS, Preprocessor};
use proptest::prelude::*;

/// Cheap deterministic noise so that images are not flat.
fn noise(seed: u64, i: usize) -> u64 {
    let mut x = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 29)
}

fn image(kind: usize, w: u32, h: u32, seed: u64) -> DynamicImage {
    let n = (w * h) as usize;
    let bytes = |c: usize| {
        (0..n * c)
            .map(|i| noise(seed, i) as u8)
            .collect::<Vec<u8>>()
    };
    let words = |c: usize| {
        (0..n * c)
            .map(|i| noise(seed, i) as u16)
            .collect::<Vec<u16>>()
    };
    match kind {
        0 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, bytes(1)).unwrap()),
        1 => DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, bytes(2)).unwrap()),
        2 => DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, bytes(3)).unwrap()),
        3 => DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, bytes(4)).unwrap()),
        4 => DynamicImage::ImageLuma16(ImageBuffer::from_raw(w, h, words(1)).unwrap()),
        5 => DynamicImage::ImageRgba16(ImageBuffer::from_raw(w, h, words(4)).unwrap()),
        // Floats outside [0, 1] must be clamped, not passed through.
        _ => DynamicImage::ImageRgb32F(
            ImageBuffer::from_raw(
                w,
                h,
                (0..n * 3)
                    .map(|i| (noise(seed, i) % 3000) as f32 / 1000.0 - 1.0)
                    .collect(),
            )
            .unwrap(),
        ),
    }
}

const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::WebP,
    ImageFormat::Gif,
];

/// Encodes in `format`; where the encoder does not take this colour type, as 8-bit RGB(A),
/// which every one of them takes.
fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    if img.write_to(&mut out, format).is_ok() {
        return out.into_inner();
    }
    let mut out = Cursor::new(Vec::new());
    let fallback = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(img.to_rgb8())
    } else {
        DynamicImage::ImageRgba8(img.to_rgba8())
    };
    fallback
        .write_to(&mut out, format)
        .expect("8-bit RGB(A) encodes in every format");
    out.into_inner()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_decodable_image_becomes_a_finite_normalised_tensor(
        w in 1u32..200,
        h in 1u32..200,
        kind in 0usize..7,
        format in 0usize..FORMATS.len(),
        seed in any::<u64>(),
    ) {
        let bytes = encode(&image(kind, w, h, seed), FORMATS[format]);
        let pixels = Preprocessor::default().preprocess(&bytes).expect("a valid image decodes");
        prop_assert_eq!(pixels.len(), IMAGE_FLOATS);
        for v in &pixels {
            prop_assert!(v.is_finite() && (-1.0..=1.0).contains(v), "value {} out of range", v);
        }
    }

    #[test]
    fn images_over_the_pixel_limit_are_refused_before_decoding(
        w in 1u32..120,
        h in 1u32..120,
        format in 0usize..FORMATS.len(),
    ) {
        let bytes = encode(&image(2, w, h, 7), FORMATS[format]);
        let limit = u64::from(w) * u64::from(h);
        prop_assert!(Preprocessor::new(limit).preprocess(&bytes).is_ok());
        let refused = Preprocessor::new(limit - 1).preprocess(&bytes);
        prop_assert!(
            matches!(refused, Err(model::ImageError::TooLarge { .. })),
            "{:?}",
            refused.map(|p| p.len())
        );
    }
}
