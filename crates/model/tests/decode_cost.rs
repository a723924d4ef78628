//! `Preprocessor::header`'s `decode_bytes` is an upper bound on what decoding and preparing the
//! image really allocates: the server reserves exactly that much of its decode memory before
//! decoding, so an estimate below the truth would break its memory bound. Measured here with a
//! counting global allocator, for every colour type and format the server decodes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use model::Preprocessor;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::SeqCst) + new_size
                - layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocator's counters are process-wide: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Peak bytes allocated while preparing `bytes`, above what was live before.
fn measured(bytes: &[u8]) -> usize {
    let _one = SERIAL.lock().unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let prepared = Preprocessor::default().prepare(bytes).unwrap();
    drop(prepared);
    PEAK.load(Ordering::SeqCst) - before
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn decode_bytes_bound_what_decoding_allocates() {
    let (w, h) = (1600u32, 1200u32);
    let noise = |x: u32, y: u32| ((x * 7 + y * 13) % 251) as u8;
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([noise(x, y), noise(y, x), 99])
    }));
    let cases = [
        ("jpeg rgb", encode(&rgb, ImageFormat::Jpeg)),
        ("png rgb", encode(&rgb, ImageFormat::Png)),
        ("bmp rgb", encode(&rgb, ImageFormat::Bmp)),
        ("webp rgb", encode(&rgb, ImageFormat::WebP)),
        ("tiff rgb", encode(&rgb, ImageFormat::Tiff)),
        ("gif", encode(&rgb, ImageFormat::Gif)),
        (
            "png grey",
            encode(
                &DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| Luma([noise(x, y)]))),
                ImageFormat::Png,
            ),
        ),
        (
            "png grey+alpha",
            encode(
                &DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
                    LumaA([noise(x, y), 200])
                })),
                ImageFormat::Png,
            ),
        ),
        (
            "png rgba",
            encode(
                &DynamicImage::ImageRgba8(ImageBuffer::from_fn(w, h, |x, y| {
                    Rgba([noise(x, y), 1, 2, 200])
                })),
                ImageFormat::Png,
            ),
        ),
        (
            "png rgba16",
            encode(
                &DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
                    Rgba([u16::from(noise(x, y)) * 257, 1, 2, 60000])
                })),
                ImageFormat::Png,
            ),
        ),
        (
            "jpeg grey, tall",
            encode(
                &DynamicImage::ImageLuma8(ImageBuffer::from_fn(300, 6000, |x, y| {
                    Luma([noise(x, y)])
                })),
                ImageFormat::Jpeg,
            ),
        ),
        ("jpeg, 4 MB of junk after it", {
            let mut padded = encode(
                &DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 64, |x, y| {
                    Rgb([noise(x, y), 1, 2])
                })),
                ImageFormat::Jpeg,
            );
            padded.resize(padded.len() + (4 << 20), 0);
            padded
        }),
        // Made with Pillow (`progressive=True`, lossy WebP, an animated GIF whose second
        // frame is smaller than the screen): image's encoders write none of these.
        ("progressive jpeg", fixture("progressive.jpg")),
        ("lossy webp", fixture("lossy.webp")),
        ("gif, offset frame", fixture("offset-frame.gif")),
    ];
    for (name, bytes) in cases {
        let estimate = Preprocessor::default().header(&bytes).unwrap().decode_bytes;
        let used = measured(&bytes) as u64;
        eprintln!("{name}: allocated {used} bytes at peak, estimate {estimate}");
        assert!(
            used <= estimate,
            "{name}: decoding allocated {used} bytes, over the estimate of {estimate}"
        );
    }
}
