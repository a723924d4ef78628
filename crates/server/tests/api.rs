//! The HTTP API end to end: a real server on 127.0.0.1, real CIFAR JPEGs, a real client.

use std::io::Cursor;

use crate::common::*;
use image::{DynamicImage, ImageFormat};
use model::preprocess::to_tensor;
use model::{Backend, Preprocessor, predict, testdata};
use server::ServerConfig;

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn info_endpoints() {
    let s = start(ServerConfig::default());
    let (status, body) = get(&s, "/");
    assert_eq!(status, 200);
    assert!(body.contains("POST /classify/batch"), "{body}");
    let health: serde_json::Value = serde_json::from_str(&get(&s, "/health").1).unwrap();
    assert_eq!(health["status"], "healthy");
    let info: serde_json::Value = serde_json::from_str(&get(&s, "/model/info").1).unwrap();
    assert_eq!(info["total_parameters"], 825_398);
    assert_eq!(info["input_size"], serde_json::json!([64, 64, 3]));
    assert_eq!(info["backend"], Backend::default_inference().name());
    assert_eq!(info["layers"][7], "Linear(8192,100)");
    assert_eq!(info["test_time_augmentation"], false);
    assert_eq!(info["record"]["preprocessing"], "rgb-triangle64-half");
    let classes: serde_json::Value = serde_json::from_str(&get(&s, "/classes").1).unwrap();
    assert_eq!(classes["num_classes"], 10);
    assert_eq!(classes["classes"][0], "airplane");
    assert_eq!(classes["by_index"]["9"], "truck");
    let (status, ui) = get(&s, "/ui");
    assert_eq!(status, 200);
    assert!(ui.contains("type=\"file\""));
    let spec: serde_json::Value = serde_json::from_str(&get(&s, "/openapi.json").1).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/",
        "/health",
        "/ready",
        "/model/info",
        "/classes",
        "/metrics",
        "/classify",
        "/classify/batch",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} undocumented");
    }
    let ok_schema = &spec["paths"]["/classify"]["post"]["responses"]["200"];
    assert!(ok_schema.to_string().contains("Classified"), "{ok_schema}");
    let (status, docs) = get(&s, "/docs");
    assert_eq!(status, 200);
    assert!(docs.contains("docs/swagger-ui-bundle.js"));
    let bundle = get_reply(&s, "/docs/swagger-ui-bundle.js", &[]);
    assert_eq!(bundle.status, 200);
    assert!(bundle.body.len() > 1_000_000 && bundle.content_type.starts_with("text/javascript"));
    let missing = get_reply(&s, "/nope", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.content_type, "application/problem+json");
}

/// The server's answer for a real CIFAR image equals the model run in-process on the same
/// bytes by the reference Burn backend (the server runs the fast path).
#[test]
fn classify_real_cifar_images_matches_in_process_model() {
    let s = start(ServerConfig::default());
    let device = Backend::default().device();
    for img in testdata::images("test", 1) {
        let r = post_multipart(&s, "/classify", &[("file", "cat.jpg", &img.bytes)]);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["filename"], "cat.jpg");
        let top3 = v["top_3_predictions"].as_array().unwrap();
        assert_eq!(top3.len(), 3);
        let conf: Vec<f64> = top3
            .iter()
            .map(|p| p["confidence"].as_f64().unwrap())
            .collect();
        assert!(conf[0] >= conf[1] && conf[1] >= conf[2]);
        assert_eq!(v["prediction"], top3[0]);

        let pixels = Preprocessor::default().preprocess(&img.bytes).unwrap();
        let local = &predict(&s.model, to_tensor(pixels, 1, &device), 3)[0];
        assert_eq!(v["prediction"]["class_index"], local.best.class_index);
        assert_eq!(v["prediction"]["class"], local.best.class);
        assert!((conf[0] - f64::from(local.best.confidence)).abs() < 1e-5);
    }
}

#[test]
fn raw_body_and_every_format() {
    let s = start(ServerConfig::default());
    let jpeg = testdata::images("test", 1).remove(0).bytes;
    let multipart = post_multipart(&s, "/classify", &[("file", "a.jpg", &jpeg)]).json();
    let raw = post(&s, "/classify", "image/jpeg", &jpeg);
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert_eq!(raw.json()["prediction"], multipart["prediction"]);

    let rgb = DynamicImage::ImageRgb8(Preprocessor::default().decode(&jpeg).unwrap());
    for format in [
        ImageFormat::Png,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::WebP,
        ImageFormat::Gif,
    ] {
        let bytes = encode(&rgb, format);
        let r = post_multipart(&s, "/classify", &[("file", "x", &bytes)]);
        assert_eq!(r.status, 200, "{format:?}: {}", r.body);
    }
}

#[test]
fn batch_keeps_order_and_isolates_failures() {
    let s = start(ServerConfig::default());
    let images = testdata::images("test", 1);
    let mut parts: Vec<(&str, String, &[u8])> = images
        .iter()
        .map(|i| ("files", i.class.clone(), i.bytes.as_slice()))
        .collect();
    parts.insert(3, ("files", "notes.txt".into(), b"just text".as_slice()));
    let parts: Vec<(&str, &str, &[u8])> =
        parts.iter().map(|(f, n, b)| (*f, n.as_str(), *b)).collect();
    let r = post_multipart(&s, "/classify/batch", &parts);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["total"], 11);
    let results = v["results"].as_array().unwrap();
    for (i, (_, name, _)) in parts.iter().enumerate() {
        assert_eq!(results[i]["filename"], *name);
    }
    assert_eq!(results[3]["problem"]["status"], 422);
    assert!(results[3]["error"].is_string());
    assert_eq!(
        results
            .iter()
            .filter(|r| r["prediction"].is_object())
            .count(),
        10
    );
}

/// A PNG header announcing 20,000 × 20,000 pixels, a few dozen bytes long.
fn png_bomb() -> Vec<u8> {
    let img = encode(&DynamicImage::new_rgb8(1, 1), ImageFormat::Png);
    let mut bomb = img.clone();
    bomb[16..20].copy_from_slice(&20_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&20_000u32.to_be_bytes());
    // Fix the IHDR CRC so the header itself is valid.
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: small and dependency-free.
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn assert_problem(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], format!("/problems/{kind}"), "{}", r.body);
    assert_eq!(v["status"], status);
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[test]
fn bad_inputs_get_clear_errors_and_the_server_stays_up() {
    let mut config = ServerConfig::default();
    config.upload.body = 256 * 1024;
    config.upload.files = 3;
    let s = start(config);
    let jpeg = testdata::images("test", 1).remove(0).bytes;

    assert_problem(
        &post_multipart(&s, "/classify", &[("image", "a.jpg", &jpeg)]),
        400,
        "unexpected-field",
    );
    assert_problem(&post_multipart(&s, "/classify", &[]), 400, "missing-field");
    // A part without a filename is a form value, not a file.
    let mut no_filename = multipart(&[("file", "a.jpg", &jpeg)]);
    let cut: &[u8] = b"; filename=\"a.jpg\"";
    let at = no_filename
        .windows(cut.len())
        .position(|w| w == cut)
        .unwrap();
    no_filename.drain(at..at + cut.len());
    let r = post(
        &s,
        "/classify",
        &model::multipart::content_type(),
        &no_filename,
    );
    assert_problem(&r, 400, "bad-request");
    // An empty file spoils a batch as a whole: it is a broken request, not a failed image.
    assert_problem(
        &post_multipart(
            &s,
            "/classify/batch",
            &[("files", "a.jpg", &jpeg), ("files", "b.jpg", b"")],
        ),
        400,
        "empty-file",
    );
    assert_problem(
        &post_multipart(&s, "/classify", &[("file", "a.jpg", b"")]),
        400,
        "empty-file",
    );
    assert_problem(
        &post_multipart(&s, "/classify", &[("file", "a.txt", b"hello, world")]),
        422,
        "invalid-image",
    );
    assert_problem(
        &post_multipart(
            &s,
            "/classify",
            &[("file", "a.jpg", &jpeg[..jpeg.len() / 3])],
        ),
        422,
        "invalid-image",
    );
    assert_problem(
        &post_multipart(&s, "/classify", &[("file", "bomb.png", &png_bomb())]),
        422,
        "image-too-large",
    );
    assert_problem(
        &post(&s, "/classify", "text/plain", b"hi"),
        415,
        "unsupported-media-type",
    );
    assert_problem(&post(&s, "/classify", "image/png", b""), 400, "empty-file");
    let big = vec![7u8; 300 * 1024];
    assert_problem(
        &post_multipart(&s, "/classify", &[("file", "big.jpg", &big)]),
        413,
        "body-too-large",
    );
    assert_problem(
        &post(&s, "/classify", "image/jpeg", &big),
        413,
        "body-too-large",
    );
    let four: Vec<(&str, &str, &[u8])> = (0..4)
        .map(|_| ("files", "a.jpg", jpeg.as_slice()))
        .collect();
    assert_problem(
        &post_multipart(&s, "/classify/batch", &four),
        413,
        "too-many-files",
    );
    assert_problem(
        &post(
            &s,
            "/classify",
            &model::multipart::content_type(),
            b"--nonsense\r\n\r\n",
        ),
        400,
        "bad-request",
    );
    assert_problem(
        &post(&s, "/classify", "multipart/form-data", b"no boundary"),
        400,
        "bad-request",
    );
    // A filename with path separators is echoed as data, never used as a path.
    let r = post_multipart(&s, "/classify", &[("file", "../../etc/passwd", &jpeg)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["filename"], "../../etc/passwd");
    // Control characters make the part header malformed: a clear 400.
    let r = post_multipart(
        &s,
        "/classify",
        &[("file", "evil\u{7}\r\nX-Injected: 1", &jpeg)],
    );
    assert_problem(&r, 400, "bad-request");

    assert_eq!(get(&s, "/health").0, 200);
    let ok = post_multipart(&s, "/classify", &[("file", "a.jpg", &jpeg)]);
    assert_eq!(ok.status, 200);
    let (_, metrics) = get(&s, "/metrics");
    assert!(
        metrics.contains("errors_total{kind=\"invalid-image\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_requests_total{route=\"/classify\",status=\"413\"} 2"),
        "{metrics}"
    );
}

#[test]
fn request_id_is_echoed_or_generated() {
    let s = start(ServerConfig::default());
    let r = get_reply(&s, "/health", &[("X-Request-Id", "abc-123")]);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = get_reply(&s, "/health", &[]);
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

/// Concurrent single-image requests share model batches (visible in /metrics).
#[test]
fn concurrent_requests_are_batched() {
    let mut config = ServerConfig::default();
    config.batch.max_wait = std::time::Duration::from_millis(100);
    config.workers = 4;
    let s = start(config);
    let jpeg = testdata::images("test", 1).remove(0).bytes;
    let n = 16;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| post_multipart(&s, "/classify", &[("file", "a.jpg", &jpeg)]).status)
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    let (_, metrics) = get(&s, "/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {metrics}"))
    };
    // The warm-up runs outside the engine's counters.
    let batches = value("inference_batch_size_count ");
    let images = value("images_classified_total ");
    assert_eq!(images, f64::from(n));
    assert!(
        batches < images,
        "{batches} batches for {images} images: nothing was batched"
    );
}

/// Images beyond the admitted number are refused at once with 503 and Retry-After instead of
/// queueing without limit.
#[test]
fn overload_is_refused_with_retry_after() {
    let mut config = ServerConfig::default();
    config.batch.max_images = 64;
    config.batch.max_batch = 1;
    config.workers = 4;
    let s = start(config);
    let jpeg = testdata::images("test", 1).remove(0).bytes;
    let parts: Vec<(&str, &str, &[u8])> = (0..64)
        .map(|_| ("files", "a.jpg", jpeg.as_slice()))
        .collect();
    let body = multipart(&parts);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    post(
                        &s,
                        "/classify/batch",
                        &model::multipart::content_type(),
                        &body,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!refused.is_empty(), "no request was refused");
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 503));
    for r in refused {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_problem(r, 503, "overloaded");
    }
    assert_eq!(get(&s, "/health").0, 200);
}

/// A body that never finishes (slow loris) is cut off with 408 after the request timeout.
#[test]
fn a_body_that_never_ends_times_out() {
    use std::io::{Read, Write};
    let config = ServerConfig {
        request_timeout: std::time::Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let s = start(config);
    let addr = s.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&[0xff, 0xd8, 0xff]).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream
        .read(&mut answer)
        .expect("an answer before the client gives up");
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request-timeout"), "{head}");
    assert_eq!(get(&s, "/health").0, 200);
}

/// CORS headers only for the configured origins.
#[test]
fn cors_allows_only_configured_origins() {
    let config = ServerConfig {
        cors_origins: vec!["http://app.example".into()],
        ..ServerConfig::default()
    };
    let s = start(config);
    let allowed = get_reply(&s, "/health", &[("Origin", "http://app.example")]);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let other = get_reply(&s, "/health", &[("Origin", "http://evil.example")]);
    assert_eq!(other.header("access-control-allow-origin"), None);
}

/// A browser client may read the headers that say which model answered and which request it
/// was, and the binary tensor extension's JSON length.
#[test]
fn cors_exposes_the_answer_headers() {
    let config = ServerConfig {
        cors_origins: vec!["http://app.example".into()],
        ..ServerConfig::default()
    };
    let s = start(config);
    let r = get_reply(&s, "/health", &[("Origin", "http://app.example")]);
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in [
        "model-version",
        "x-request-id",
        "inference-header-content-length",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed:?}");
    }
}

/// `/classify` takes one file: a second part named `file` is refused, not dropped unseen.
#[test]
fn classify_refuses_a_second_file() {
    let s = start(ServerConfig::default());
    let image = encode(&DynamicImage::new_rgb8(8, 8), ImageFormat::Png);
    let one = post_multipart(&s, "/classify", &[("file", "a.png", &image)]);
    assert_eq!(one.status, 200, "{}", one.body);
    let two = post_multipart(
        &s,
        "/classify",
        &[("file", "a.png", &image), ("file", "b.png", &image)],
    );
    assert_problem(&two, 413, "too-many-files");
}

/// A file name is echoed back cut to 255 bytes, without control characters, so that an
/// answer's size is bounded by its file count.
#[test]
fn long_file_names_are_cut() {
    let s = start(ServerConfig::default());
    let image = encode(&DynamicImage::new_rgb8(8, 8), ImageFormat::Png);
    let name = format!("\t{}.png", "é".repeat(300));
    let r = post_multipart(&s, "/classify/batch", &[("files", &name, &image)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let echoed = r.json()["results"][0]["filename"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        echoed.len() <= server::http::body::MAX_FILENAME_BYTES,
        "{}",
        echoed.len()
    );
    assert!(echoed.starts_with("\u{fffd}éé"), "{echoed:.20}");
}

/// With `--api-key`, every route but the probes and the documentation pages answers 401 (with `WWW-Authenticate`) to a
/// request without the token or with another, in the original API's form and in the V2 form;
/// the token opens them; the OpenAPI document says so.
#[test]
fn an_api_key_guards_every_route_but_the_probes() {
    let config = ServerConfig {
        api_key: Some(server::ApiKey::new("s3cret", false)),
        ..ServerConfig::default()
    };
    let s = start(config);
    let image = encode(&DynamicImage::new_rgb8(8, 8), ImageFormat::Png);
    // The probes, and the pages a browser loads by address (no data in them).
    for open in [
        "/health",
        "/ready",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/swagger-ui.css",
        "/openapi.json",
        "/ui",
    ] {
        assert_eq!(get(&s, open).0, 200, "{open}");
    }
    for path in [
        "/",
        "/model/info",
        "/classes",
        "/metrics",
        "/v2",
        "/v2/models/cifar10-cnn",
    ] {
        let r = get_reply(&s, path, &[]);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        let wrong = get_reply(&s, path, &[("Authorization", "Bearer s3cre")]);
        assert_eq!(wrong.status, 401, "{path}");
        let right = get_reply(&s, path, &[("Authorization", "Bearer s3cret")]);
        assert_eq!(right.status, 200, "{path}");
    }
    let r = post(&s, "/classify", "image/png", &image);
    assert_problem(&r, 401, "unauthorized");
    let r = post(
        &s,
        "/v2/models/cifar10-cnn/infer",
        "application/json",
        b"{}",
    );
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"].as_str().unwrap().contains("API key"),
        "{}",
        r.body
    );

    let spec = get_reply(&s, "/openapi.json", &[]).json();
    assert_eq!(
        spec["components"]["securitySchemes"]["apiKey"]["scheme"],
        "bearer"
    );
    assert_eq!(
        spec["paths"]["/health"]["get"]["security"],
        serde_json::json!([])
    );
    assert!(spec["paths"]["/classify"]["post"]["responses"]["401"].is_object());

    let open_metrics = start(ServerConfig {
        api_key: Some(server::ApiKey::new("s3cret", true)),
        ..ServerConfig::default()
    });
    assert_eq!(get(&open_metrics, "/metrics").0, 200);
    assert_eq!(get(&open_metrics, "/classes").0, 401);
    assert_eq!(get(&open_metrics, "/v2/models/cifar10-cnn").0, 401);
    // Both refusals are counted by their kind, whichever API's form they took.
    let (_, metrics) = get(&open_metrics, "/metrics");
    assert!(
        metrics.contains("refusals_total{reason=\"unauthorized\"} 2"),
        "{metrics}"
    );
}

/// One deadline per request: the time a body took to arrive counts against the wait for the
/// model. A body sent over 1.2 s to a server with a 2 s timeout, whose batches wait 30 s for
/// company, is answered 503 at 2 s after it started, not 2 s after its body ended.
#[test]
fn one_deadline_covers_every_wait_of_a_request() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let default = ServerConfig::default();
    let s = start(ServerConfig {
        request_timeout: Duration::from_secs(2),
        batch: server::inference::engine::BatchPolicy {
            max_wait: Duration::from_secs(30),
            ..default.batch
        },
        ..default
    });
    let image = encode(&DynamicImage::new_rgb8(8, 8), ImageFormat::Png);
    let addr = s.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    write!(
        stream,
        "POST /classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        image.len()
    )
    .unwrap();
    let (first, rest) = image.split_at(image.len() / 2);
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    stream.write_all(rest).unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).expect("an answer");
    let waited = started.elapsed();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("/problems/timeout"), "{head}");
    // The request's deadline is 2 s after it arrived; a fresh 2 s wait for the model after
    // the body would end at 3.2 s.
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(2900),
        "answered after {waited:?}"
    );
}
