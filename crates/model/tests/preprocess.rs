//! Preprocessing real CIFAR-10 images and hostile inputs through the real decoders.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use model::preprocess::{IMAGE_FLOATS, normalize_into, resize};
use model::testdata;
use model::{ImageError, Preprocessor};

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn real_cifar_jpegs_preprocess_to_normalised_tensors() {
    let images = testdata::images("test", 2);
    assert_eq!(images.len(), 20, "two images of each of the ten classes");
    let p = Preprocessor::default();
    for img in &images {
        let rgb = p.decode(&img.bytes).unwrap();
        assert_eq!(rgb.dimensions(), (32, 32), "{}", img.path);
        let v = p.preprocess(&img.bytes).unwrap();
        assert_eq!(v.len(), IMAGE_FLOATS);
        assert!(v.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
        // Not a constant image: real content survives.
        let (min, max) = v
            .iter()
            .fold((1f32, -1f32), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(max - min > 0.2, "{}", img.path);
    }
}

/// The same pixels in every lossless format give the same tensor; paletted GIF is close.
#[test]
fn every_supported_format_decodes_to_the_same_pixels() {
    let jpeg = &testdata::images("test", 1)[0];
    let p = Preprocessor::default();
    let rgb = DynamicImage::ImageRgb8(p.decode(&jpeg.bytes).unwrap());
    let reference = p.preprocess(&encode(&rgb, ImageFormat::Png)).unwrap();
    for format in [ImageFormat::Bmp, ImageFormat::Tiff, ImageFormat::WebP] {
        let v = p.preprocess(&encode(&rgb, format)).unwrap();
        assert_eq!(v, reference, "{format:?}");
    }
    let gif = p.preprocess(&encode(&rgb, ImageFormat::Gif)).unwrap();
    let mean_err: f32 = gif
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / gif.len() as f32;
    assert!(mean_err < 0.1, "paletted GIF drifts by {mean_err}");
}

#[test]
fn grayscale_and_rgba_inputs_convert() {
    let p = Preprocessor::default();
    let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(40, 30, image::Luma([10])));
    assert_eq!(
        p.decode(&encode(&gray, ImageFormat::Png))
            .unwrap()
            .get_pixel(0, 0)
            .0,
        [10, 10, 10]
    );
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        5,
        5,
        image::Rgba([1, 2, 3, 0]),
    ));
    assert_eq!(
        p.decode(&encode(&rgba, ImageFormat::Png))
            .unwrap()
            .get_pixel(4, 4)
            .0,
        [1, 2, 3]
    );
}

#[test]
fn large_images_resize_to_the_input() {
    let big = RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 0])
    });
    let bytes = encode(&DynamicImage::ImageRgb8(big), ImageFormat::Jpeg);
    let rgb = Preprocessor::default().decode(&bytes).unwrap();
    let small = resize(&rgb);
    assert_eq!(small.dimensions(), (64, 64));
    let mut out = vec![0.0; IMAGE_FLOATS];
    normalize_into(&small, &mut out);
}

/// A PNG whose header claims `w`×`h` pixels, with a token IDAT: a few dozen bytes.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: [u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut png, *b"IHDR", &ihdr);
    chunk(
        &mut png,
        *b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, *b"IEND", &[]);
    png
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let bomb = png_bomb(20_000, 20_000);
    assert!(bomb.len() < 100);
    let err = Preprocessor::default().decode(&bomb).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 20_000,
                height: 20_000,
                ..
            }
        ),
        "{err}"
    );
    // Just under the limit the header is accepted and the (tiny) data then fails to decode:
    // the refusal above came from the header alone.
    let err = Preprocessor::new(400_000_000).decode(&bomb).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err}");
}

#[test]
fn truncated_and_corrupt_images_are_typed_errors() {
    let jpeg = &testdata::images("test", 1)[0].bytes;
    let p = Preprocessor::default();
    // Header only: no scan data at all.
    let err = p.decode(&jpeg[..jpeg.len().min(40)]).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err}");
    // PNG cut in the middle of its data.
    let img = DynamicImage::ImageRgb8(p.decode(jpeg).unwrap());
    let png = encode(&img, ImageFormat::Png);
    let err = p.decode(&png[..png.len() / 2]).unwrap_err();
    assert!(matches!(err, ImageError::Decode(_)), "{err}");
    // A PNG header with a zero width.
    let err = p.decode(&png_bomb(0, 10)).unwrap_err();
    assert!(
        matches!(err, ImageError::Decode(_) | ImageError::ZeroSized),
        "{err}"
    );
    // Bytes flipped inside the data: decoding fails or yields an image, never panics.
    let mut flipped = png.clone();
    for b in flipped.iter_mut().skip(60).step_by(7) {
        *b ^= 0x5a;
    }
    let _ = p.decode(&flipped);
}
