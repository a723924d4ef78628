//! Arbitrary request bodies through the server's upload reader (multipart parsing with its
//! field, file-count and size limits, or a raw image body), delivered in chunks of arbitrary
//! sizes. The first input byte picks the content type, the chunk size and the field.
#![no_main]

use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::test::TestRequest;
use actix_web::web::Bytes;
use futures::stream;
use libfuzzer_sys::fuzz_target;
use server::http::body::read;
use server::ingest::upload::{BodyBudget, UploadLimits};

const CONTENT_TYPES: [&str; 6] = [
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data; boundary=\"a b\"",
    "multipart/form-data",
    "image/png",
    "application/octet-stream",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one the code under test catches by design
    // (decoders and the multipart parser are third-party code fed hostile bytes; a panic there
    // is turned into an error). Restore the default hook: such panics are printed and the run
    // goes on; a panic that escapes the code under test still aborts and is reported.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let chunk = 1 + usize::from(selector >> 3);
    let req = TestRequest::default()
        .insert_header((CONTENT_TYPE, content_type))
        .to_http_request();
    let chunks: Vec<Result<Bytes, PayloadError>> = body
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let limits = UploadLimits {
        body: 4096,
        files: 3,
    };
    let field = if selector & 0x80 == 0 { "file" } else { "files" };
    let budget = BodyBudget::new(1 << 20);
    let read = read(&req, stream::iter(chunks), field, limits, &budget);
    if let Ok(uploads) = futures::executor::block_on(read) {
        let files = &uploads.files;
        assert!(!files.is_empty() && files.len() <= limits.files);
        assert!(files.iter().map(|f| f.bytes.len()).sum::<usize>() <= limits.body);
    }
});
