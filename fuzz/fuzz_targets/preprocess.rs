//! Arbitrary bytes through the one preprocessing path (format sniffing, header check, decode,
//! resize, normalise): an error is fine, a panic, an abort or a hang is a bug. The pixel limit
//! is lowered so that the fuzzer spends its time on parsing, not on decoding large images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::{IMAGE_FLOATS, Preprocessor};

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one the code under test catches by design
    // (decoders and the multipart parser are third-party code fed hostile bytes; a panic there
    // is turned into an error). Restore the default hook: such panics are printed and the run
    // goes on; a panic that escapes the code under test still aborts and is reported.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    if let Ok(pixels) = Preprocessor::new(1 << 20).preprocess(data) {
        assert_eq!(pixels.len(), IMAGE_FLOATS);
        assert!(pixels.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    }
});
