//! Arbitrary JSON through the `/v2` inference request parser (bounded lists, tensor data into
//! a buffer of a fixed capacity, base64 images, the outputs' checks). The first input byte
//! picks the bounds. No input may panic it, keep more than its bounds, or make an error message
//! that grows with the input (issue 24: serde_json's own type errors quoted a whole string).
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::api::v2::parse_request;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let max_images = 1 + usize::from(selector & 7);
    let float_cap = usize::from(selector >> 3) * 64;
    match parse_request(json, max_images, float_cap) {
        Ok(parsed) => {
            assert!(parsed.images <= max_images);
            assert!(parsed.floats <= float_cap);
            assert!(parsed.outputs <= 2);
        }
        // The parser's words, before the reply's cut: a message, a position, a few names.
        Err(message) => assert!(message.len() <= 1024, "{} bytes: {message:.200}", message.len()),
    }
});
