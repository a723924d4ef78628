//! Hostile uploads against the real server: decompression bombs in every format that can
//! announce huge dimensions in a tiny file, deeply nested multipart bodies and hundreds of
//! files in one batch. Each is refused with the right status, memory stays bounded, and the
//! server answers normally afterwards.

use std::io::Cursor;

use crate::common::*;
use image::{DynamicImage, ImageFormat};
use model::testdata;
use server::ServerConfig;

fn encode(format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::new_rgb8(8, 8)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// JPEG: the SOF0 segment holds height and width (big-endian u16) after the precision byte.
fn jpeg_bomb() -> Vec<u8> {
    let mut b = encode(ImageFormat::Jpeg);
    let sof = b
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    b[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
    b
}

/// GIF: the logical screen and the image descriptor both say 65,535 × 65,535.
fn gif_bomb() -> Vec<u8> {
    let mut b = encode(ImageFormat::Gif);
    b[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
    b[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    let desc = b.iter().position(|&x| x == 0x2C).expect("image descriptor");
    b[desc + 5..desc + 7].copy_from_slice(&u16::MAX.to_le_bytes());
    b[desc + 7..desc + 9].copy_from_slice(&u16::MAX.to_le_bytes());
    b
}

/// TIFF (little-endian): `ImageWidth` (256) and `ImageLength` (257) set to 100,000 in the IFD.
fn tiff_bomb() -> Vec<u8> {
    let mut b = encode(ImageFormat::Tiff);
    assert_eq!(&b[..2], b"II");
    let ifd = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let count = u16::from_le_bytes(b[ifd..ifd + 2].try_into().unwrap()) as usize;
    for e in 0..count {
        let at = ifd + 2 + e * 12;
        let tag = u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
        if tag == 256 || tag == 257 {
            // Rewrite as a LONG so any width fits.
            b[at + 2..at + 4].copy_from_slice(&4u16.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&100_000u32.to_le_bytes());
        }
    }
    b
}

/// BMP: width and height are signed 32-bit fields at offsets 18 and 22.
fn bmp_bomb() -> Vec<u8> {
    let mut b = encode(ImageFormat::Bmp);
    b[18..22].copy_from_slice(&50_000i32.to_le_bytes());
    b[22..26].copy_from_slice(&50_000i32.to_le_bytes());
    b
}

fn problem_type(r: &Reply) -> String {
    r.json()["type"].as_str().unwrap_or_default().to_string()
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    // A server process of its own, so that its peak memory is its own (the tests of this
    // binary share one process).
    let s = Process::start(&[]);
    let before = s.status_bytes("VmHWM");
    for (name, bomb) in [
        ("bomb.jpg", jpeg_bomb()),
        ("bomb.gif", gif_bomb()),
        ("bomb.tiff", tiff_bomb()),
        ("bomb.bmp", bmp_bomb()),
    ] {
        assert!(bomb.len() < 2048, "{name} is {} bytes", bomb.len());
        let r = s.post_multipart("/classify", &[("file", name, &bomb)]);
        assert_eq!(r.status, 422, "{name}: {}", r.body);
        // The TIFF decoder's own consistency check (strip sizes against dimensions) may
        // refuse it before the pixel limit does; either way nothing is decoded.
        let kind = problem_type(&r);
        assert!(
            kind == "/problems/image-too-large"
                || (name == "bomb.tiff" && kind == "/problems/invalid-image"),
            "{name}: {}",
            r.body
        );
        let raw = s.post("/classify", "image/octet-stream", &bomb);
        assert_eq!(raw.status, 422, "{name} raw: {}", raw.body);
    }
    // Decoding any one of them would need gigabytes; nothing close was allocated.
    let grown_mb = (s.status_bytes("VmHWM") - before) >> 20;
    assert!(
        grown_mb < 256,
        "the server's peak RSS grew by {grown_mb} MB"
    );
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn deeply_nested_multipart_is_just_bytes() {
    let mut config = ServerConfig::default();
    config.upload.body = 512 * 1024;
    let s = start(config);
    // 5,000 levels of multipart/mixed inside the one `file` part.
    let mut nested = Vec::new();
    for level in 0..5000 {
        nested.extend(
            format!(
                "--b{level}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n",
                level + 1
            )
            .bytes(),
        );
    }
    for level in (0..5000).rev() {
        nested.extend(format!("\r\n--b{level}--\r\n").bytes());
    }
    assert!(nested.len() < 512 * 1024);
    let r = post_multipart(&s, "/classify", &[("file", "nested", &nested)]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(problem_type(&r), "/problems/invalid-image");
    // The same nesting in an unexpected field is refused before its content is read.
    let r = post_multipart(&s, "/classify", &[("other", "nested", &nested)]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(problem_type(&r), "/problems/unexpected-field");
    assert_eq!(get(&s, "/health").0, 200);
}

#[test]
fn hundreds_of_files_in_one_batch_are_refused() {
    let s = start(ServerConfig::default());
    let jpeg = testdata::images("test", 1).remove(0).bytes;
    let parts: Vec<(&str, &str, &[u8])> = (0..500)
        .map(|_| ("files", "a.jpg", jpeg.as_slice()))
        .collect();
    let r = post_multipart(&s, "/classify/batch", &parts);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(problem_type(&r), "/problems/too-many-files");
    // At the limit it is served, every image classified.
    let r = post_multipart(&s, "/classify/batch", &parts[..64]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 64);
}

/// Posts an upload-fuzzer seed to /classify: its first byte chose the content type (boundary
/// `XyZ` for these seeds); the rest is the body.
fn post_upload_seed(s: &TestServer, seed: &[u8]) -> Reply {
    post(
        s,
        "/classify",
        "multipart/form-data; boundary=XyZ",
        &seed[1..],
    )
}

/// Found by the upload fuzzer: a body that ends inside a part, without its closing boundary,
/// made actix-multipart 0.7 wait for bytes that never come until the request timeout (408
/// after 30 s). 0.8 reports the stream as incomplete at once.
#[test]
fn multipart_body_cut_inside_a_part_is_a_bad_request() {
    let s = start(ServerConfig::default());
    let seed = include_bytes!("../../../fuzz/seeds/upload/body-cut-inside-a-part.bin");
    let r = post_upload_seed(&s, seed);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(problem_type(&r), "/problems/bad-request");
    assert!(r.body.contains("incomplete"), "{}", r.body);
    let jpeg = testdata::images("test", 1).remove(0).bytes;
    let mut cut = multipart(&[("file", "a.jpg", &jpeg)]);
    cut.truncate(cut.len() - 10);
    let r = post(&s, "/classify", &model::multipart::content_type(), &cut);
    assert_eq!(r.status, 400, "{}", r.body);
}

/// Found by the upload fuzzer: 31 bytes that made actix-multipart 0.7.2 panic (a slice index
/// in its boundary scan), killing the HTTP worker and dropping the connection unanswered.
/// 0.8 parses them as a malformed body: a 400, as often as it is sent, and the server keeps
/// serving.
#[test]
fn multipart_parser_panic_is_a_bad_request() {
    let s = start(ServerConfig::default());
    let seed = include_bytes!("../../../fuzz/seeds/upload/multipart-parser-panic.bin");
    for _ in 0..5 {
        let r = post_upload_seed(&s, seed);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(problem_type(&r), "/problems/bad-request");
    }
    let jpeg = testdata::images("test", 1).remove(0).bytes;
    assert_eq!(
        post_multipart(&s, "/classify", &[("file", "a.jpg", &jpeg)]).status,
        200
    );
}
