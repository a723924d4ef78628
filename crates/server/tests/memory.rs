//! The server's memory stays within the bound its settings give (`ServerConfig::memory_bound`),
//! whatever clients send: a multipart header block that never ends, hundreds of concurrent
//! batches of tiny images, and a slow trickle of bodies from many connections. Each is answered
//! with its documented status while `/health` keeps answering, and the server process's own
//! peak RSS (`VmHWM` of its `/proc/<pid>/status`) stays under the bound.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{self, Process, SMALL_ARGS, check_peak, check_peak_at};

fn start() -> Process {
    Process::start(&SMALL_ARGS)
}

/// The same settings but a body limit (and body memory) of 1 GiB, so that only the multipart
/// parser's own limit can stop a header block that never ends.
fn start_without_body_limit() -> Process {
    let mut args = SMALL_ARGS;
    for (i, flag) in SMALL_ARGS.iter().enumerate() {
        if *flag == "--max-body" || *flag == "--body-memory" {
            args[i + 1] = "1073741824";
        }
    }
    Process::start(&args)
}

/// A connection to `addr` that has sent the request head `head` (the body is the caller's);
/// reads and writes give up after `secs`, so a server that stops reading cannot hang a test.
fn send_head(addr: &str, head: &str, secs: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let timeout = Some(Duration::from_secs(secs));
    stream.set_read_timeout(timeout).unwrap();
    stream.set_write_timeout(timeout).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

/// The status code of an HTTP/1.1 answer read from `stream` (0 when none came).
fn status_of(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 64 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends a chunked multipart body whose first part's header block never ends, up to 256 MiB,
/// and returns the answer's status and how much was sent before the server answered.
fn endless_part_header(addr: &str) -> (u16, usize) {
    let head = format!(
        "POST /classify HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut stream = send_head(addr, &head, 20);
    let start =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nX-Pad: ";
    write!(stream, "{:x}\r\n", start.len()).unwrap();
    stream.write_all(start).unwrap();
    stream.write_all(b"\r\n").unwrap();
    let pad = vec![b'A'; 64 * 1024];
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || status_of(&mut reader));
    let mut sent = 0usize;
    while sent < 256 << 20 {
        let chunk = format!("{:x}\r\n", pad.len());
        if stream.write_all(chunk.as_bytes()).is_err()
            || stream.write_all(&pad).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += pad.len();
        if answer.is_finished() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    (answer.join().unwrap(), sent)
}

#[test]
fn a_multipart_header_block_that_never_ends_is_cut_short() {
    // The multipart parser's own 64 KiB buffer refuses the header block (400) long before
    // the 1 GiB body limit; the answer comes while the client is still sending.
    let server = start_without_body_limit();
    let (status, sent) = endless_part_header(&server.addr);
    assert_eq!(status, 400);
    assert!(sent < 256 << 20, "the server waited for all {sent} bytes");
    assert_eq!(server.get("/health").0, 200);
    // With the body limit of the usual settings, the body limit may answer first (413).
    let server = start();
    let (status, sent) = endless_part_header(&server.addr);
    assert!(status == 400 || status == 413, "status {status}");
    assert!(sent < 256 << 20, "the server waited for all {sent} bytes");
    check_peak(&server, "endless part header");
}

#[test]
fn an_oversized_content_length_is_refused_before_the_body() {
    let server = start();
    // Announces 1 GiB and sends none of it: the answer comes from the headers alone.
    let head = "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1073741824\r\n\r\n";
    let mut stream = send_head(&server.addr, head, 10);
    assert_eq!(status_of(&mut stream), 413);
}

/// One multipart body of `n` one-pixel PNGs in field `files`.
fn tiny_batch(n: usize) -> Vec<u8> {
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let parts: Vec<(&str, &str, &[u8])> = (0..n)
        .map(|_| ("files", "p.png", png.get_ref().as_slice()))
        .collect();
    common::multipart(&parts)
}

fn post_raw(addr: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return 0;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // Head and body in one write, as a client of a small request sends them: the server then
    // reads both at once. Written apart, the body could still be unread in the server's socket
    // when it refuses at admission (from the head alone) and closes, and a close over unread
    // data is a reset that can discard the 503 before this client reads it (RFC 9112 §9.6;
    // the server does no lingering close).
    let request = [head.as_bytes(), body].concat();
    if stream.write_all(&request).is_err() {
        return 0;
    }
    status_of(&mut stream)
}

#[test]
fn hundreds_of_concurrent_batches_of_tiny_images() {
    let server = start();
    let body = tiny_batch(64);
    let content_type = model::multipart::content_type();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..400)
            .map(|_| {
                scope.spawn(|| post_raw(&server.addr, "/classify/batch", &content_type, &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let count = |code| statuses.iter().filter(|&&s| s == code).count();
    eprintln!(
        "400 batches of 64: {} × 200, {} × 503, others {:?}",
        count(200),
        count(503),
        statuses
            .iter()
            .filter(|&&s| s != 200 && s != 503)
            .collect::<Vec<_>>()
    );
    assert_eq!(count(200) + count(503), 400, "{statuses:?}");
    assert!(count(200) > 0 && count(503) > 0, "{statuses:?}");
    check_peak(&server, "400 concurrent batches");
}

#[test]
fn a_slow_trickle_from_many_connections_times_out_while_health_answers() {
    let server = start();
    let body = tiny_batch(64);
    let content_type = model::multipart::content_type();
    let started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        // 48 of the 64 connections send a byte every 100 ms: none finishes within the 3 s
        // request timeout.
        let slow: Vec<_> = (0..48)
            .map(|_| {
                scope.spawn(|| {
                    let head = format!(
                        "POST /classify/batch HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let mut stream = send_head(&server.addr, &head, 30);
                    let mut reader = stream.try_clone().unwrap();
                    let answer = std::thread::spawn(move || status_of(&mut reader));
                    for byte in &body {
                        if answer.is_finished() || stream.write_all(&[*byte]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    answer.join().unwrap()
                })
            })
            .collect();
        // Meanwhile the service keeps answering.
        while started.elapsed() < Duration::from_secs(2) {
            assert_eq!(server.get("/health").0, 200, "/health during the trickle");
            std::thread::sleep(Duration::from_millis(200));
        }
        slow.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&s| s == 408), "{statuses:?}");
    check_peak(&server, "slow trickle");
}

#[test]
fn bodies_share_one_memory_budget_and_the_excess_is_refused_at_once() {
    let server = start();
    let started = Instant::now();
    // Six uploads announce 1 MiB each and send 900 KiB, then stall: four fit in the 4 MiB
    // body budget, the rest are refused with 503 as soon as their bytes do not fit.
    let part = vec![0u8; 900 << 10];
    let statuses: Vec<(u16, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    let head = "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1048576\r\n\r\n";
                    let mut stream = send_head(&server.addr, head, 30);
                    let _ = stream.write_all(&part);
                    (status_of(&mut stream), started.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        statuses.iter().all(|(s, _)| *s == 503 || *s == 408),
        "{statuses:?}"
    );
    assert!(!refused.is_empty(), "{statuses:?}");
    assert!(
        refused.iter().all(|(_, t)| *t < Duration::from_secs(3)),
        "503s came only after the request timeout: {statuses:?}"
    );
    check_peak(&server, "stalled large bodies");
}

#[test]
fn an_image_that_would_take_more_than_the_decode_memory_is_refused() {
    let server = start();
    // 3000×2000 RGB decodes to 18 MB, over the 16 MiB decode budget; the PNG itself is small.
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(3000, 2000)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let status = post_raw(&server.addr, "/classify", "image/png", png.get_ref());
    assert_eq!(status, 422);
    // One that fits is decoded and classified.
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(1500, 1000)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    assert_eq!(
        post_raw(&server.addr, "/classify", "image/png", png.get_ref()),
        200
    );
    check_peak(&server, "decode budget");
}

/// A connection to `addr` whose receive buffer is as small as the kernel allows, set before
/// connecting (so the window it offers stays small): what the server sends and this client
/// does not read stays in the server.
fn small_window_connection(addr: &str) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor this function owns until it hands it to
    // `TcpStream`, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let stream = TcpStream::from_raw_fd(fd);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

/// Sends `request` on a small-window connection and reads the answer's status line only,
/// leaving the rest unread; on 503 (no room now) tries again. Returns the connection, still
/// open, and the status.
fn answered_but_unread(addr: &str, request: &[u8]) -> (TcpStream, u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = small_window_connection(addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request).unwrap();
        let status = status_of(&mut stream);
        if status != 503 || Instant::now() > deadline {
            return (stream, status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 24's echo attack: a `/v2` request whose JSON is one long string (legal JSON, of a
/// character JSON's error message escapes to six bytes) was answered with an error that
/// quoted it back, escaped, and 64 clients that never read their answers held those in the
/// server past its bound. Now every error is a few hundred bytes, and the server stays under
/// the bound with all 64 answers unread.
#[test]
fn unread_v2_error_answers_stay_within_the_bound() {
    let server = start();
    // Under the 1 MiB body limit: a string of U+0080 (two bytes each in UTF-8).
    let text = format!("\"{}\"", "\u{80}".repeat((1 << 20) / 2 - 64));
    let request = |body: &str| {
        let mut r = format!(
            "POST /v2/models/cifar10-cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body.as_bytes());
        r
    };
    // The reply to each shape, read whole: small, whatever the string's length.
    let shapes = [
        text.clone(),
        format!(r#"{{"inputs":{text}}}"#),
        format!(r#"{{"inputs":[{text}]}}"#),
        format!(r#"{{"parameters":{text},"inputs":[]}}"#),
        format!(r#"{{"parameters":{{"binary_data_output":{text}}},"inputs":[]}}"#),
        format!(r#"{{"outputs":{text},"inputs":[]}}"#),
        format!(r#"{{"outputs":[{text}],"inputs":[]}}"#),
        format!(
            r#"{{"outputs":[{{"name":"logits","parameters":{{"classification":{text}}}}}],"inputs":[]}}"#
        ),
        format!(r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":{text}}}]}}"#),
        format!(r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[{text}]}}]}}"#),
        format!(r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1],"data":{text}}}]}}"#),
        format!(
            r#"{{"inputs":[{{"name":"image","datatype":"BYTES","shape":[1],"parameters":{{"binary_data_size":{text}}}}}]}}"#
        ),
        format!(r#"{{"inputs":[{{"name":"image","datatype":"BYTES","shape":[1]}},{text}]}}"#),
    ];
    for body in &shapes {
        let r = server.post(
            "/v2/models/cifar10-cnn/infer",
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(r.status, 400, "{}", &r.body[..r.body.len().min(300)]);
        assert!(
            r.body.len() <= 2 * server::http::problem::MAX_DETAIL_BYTES + 64,
            "a {}-byte error for a {}-byte request: {:.300}",
            r.body.len(),
            body.len(),
            r.body
        );
    }
    // 64 connections (the server's most) each leave such an answer unread.
    let body = request(&shapes[0]);
    let held: Vec<(TcpStream, u16)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..63)
            .map(|_| scope.spawn(|| answered_but_unread(&server.addr, &body)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(held.iter().all(|(_, status)| *status == 400));
    check_peak(&server, "64 unread /v2 error answers");
    drop(held);
}

/// Issue 24's asset attack: Swagger UI's 1.7 MB script was sent as one piece, which actix
/// copies whole into the connection's write buffer; clients that pipelined requests for it
/// and read nothing held 1.7 MB each. In 64 KiB pieces a connection holds at most one.
#[test]
fn unread_static_assets_stay_within_the_bound() {
    // 256 connections: each costs the bound 0.7 MiB, and cost the server 1.7 MB before.
    let mut args = SMALL_ARGS;
    assert_eq!(args[0], "--max-connections");
    args[1] = "256";
    let server = Process::start(&args);
    let request = "GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4);
    let held: Vec<(TcpStream, u16)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..255)
            .map(|_| scope.spawn(|| answered_but_unread(&server.addr, request.as_bytes())))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(held.iter().all(|(_, status)| *status == 200));
    // Let the server write what it can before its peak is read.
    std::thread::sleep(Duration::from_secs(1));
    let config = server::ServerConfig {
        max_connections: 256,
        ..common::small_config()
    };
    check_peak_at(&server, &config, "255 × 4 unread copies of Swagger UI");
    drop(held);
}

/// A body sent in parts, as a slow client sends it.
type SlowBody = http_body_util::StreamBody<
    futures_util::stream::BoxStream<
        'static,
        Result<http_body::Frame<prost::bytes::Bytes>, std::convert::Infallible>,
    >,
>;

/// An HTTP/2 client (one connection per client) sending [`SlowBody`]s.
type GrpcClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    SlowBody,
>;

/// A gRPC call of `message` (a protobuf `ModelInferRequest`) over the HTTP/2 connection
/// `client` holds, its body sent in two halves `pause` apart (a slow client holds what it
/// sent meanwhile); the call's gRPC status code.
async fn grpc_call(
    client: &GrpcClient,
    addr: &str,
    message: prost::bytes::Bytes,
    pause: Duration,
) -> Option<i32> {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let framed = prost::bytes::Bytes::from(framed);
    let half = framed.len() / 2;
    let (first, second) = (framed.slice(..half), framed.slice(half..));
    let halves = futures_util::stream::iter([(first, Duration::ZERO), (second, pause)])
        .then(|(part, wait)| async move {
            tokio::time::sleep(wait).await;
            Ok(http_body::Frame::data(part))
        })
        .boxed();
    let request = tonic::codegen::http::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::StreamBody::new(halves))
    .unwrap();
    let response = client.request(request).await.ok()?;
    let code = |headers: &tonic::codegen::http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
    };
    if let Some(code) = code(response.headers()) {
        return Some(code);
    }
    let collected = response.into_body().collect().await.ok()?;
    collected.trailers().and_then(code)
}

/// gRPC at [`SMALL_ARGS`] (`--grpc-port`): 48 connections × 4 streams of 1 MiB FP32 messages
/// (21 images each, the most under `--max-body`), half of them sent slowly (the second half a
/// second later), against 4 MiB of body memory, then messages built to decode far larger than
/// they are. Each call is answered (`OK`, or `UNAVAILABLE` when the budget has no room;
/// `INVALID_ARGUMENT` for the last), `/health` keeps answering, and the process's peak RSS stays
/// under the bound with the gRPC terms.
#[test]
fn hostile_grpc_messages_stay_within_the_memory_bound() {
    use prost::Message;
    use server::api::v2::proto;
    let mut args = SMALL_ARGS.to_vec();
    args.extend(["--grpc-port", "0"]);
    let server = Process::start(&args);
    let grpc = server.grpc_addr();
    let images = 21;
    let message = prost::bytes::Bytes::from(
        proto::ModelInferRequest {
            model_name: "cifar10-cnn".into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![images, 3, 64, 64],
                ..Default::default()
            }],
            raw_input_contents: vec![prost::bytes::Bytes::from(vec![
                0u8;
                images as usize
                    * model::IMAGE_FLOATS
                    * 4
            ])],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert!(message.len() < 1 << 20);
    let codes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut calls = Vec::new();
            for connection in 0..48 {
                // One client, one HTTP/2 connection, four calls on it at once.
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only(true)
                .pool_max_idle_per_host(1)
                .build_http();
                for stream in 0..4 {
                    let (client, grpc, message) = (client.clone(), grpc.clone(), message.clone());
                    let slow = (connection + stream) % 2 == 0;
                    let pause = Duration::from_millis(if slow { 1000 } else { 0 });
                    calls.push(tokio::spawn(async move {
                        grpc_call(&client, &grpc, message, pause).await
                    }));
                }
            }
            let mut codes = Vec::new();
            for call in calls {
                codes.push(call.await.unwrap());
            }
            codes
        });
    let mut by_code = std::collections::BTreeMap::new();
    for code in &codes {
        *by_code.entry(*code).or_insert(0) += 1;
    }
    eprintln!("gRPC answers by code: {by_code:?}");
    // OK (0) or UNAVAILABLE (14): no call left unanswered, none failing otherwise.
    assert!(
        codes.iter().all(|c| matches!(c, Some(0 | 14))),
        "{by_code:?}"
    );
    assert!(codes.contains(&Some(0)), "{by_code:?}");
    // Messages that are small on the wire but would decode large: half a million empty
    // `inputs` (2 bytes each, about 300 decoded) are refused before prost decodes them.
    let amplifying: Vec<u8> = std::iter::repeat_n([0x2a, 0x00], 500_000)
        .flatten()
        .collect();
    for _ in 0..8 {
        let (code, _) = common::grpc_call(
            &grpc,
            "/inference.GRPCInferenceService/ModelInfer",
            &amplifying,
            None,
        )
        .expect("an answer");
        assert_eq!(code, 3, "INVALID_ARGUMENT");
    }
    let config = common::small_config();
    let bound = server::ops::memory::MemoryBound::of(&config).with_grpc(&config);
    common::check_peak_within(&server, bound, "hostile gRPC messages");
}

/// Explanations by every method at once, from 48 connections, with the most steps integrated
/// gradients allows, eight images a `/v2` request and heatmaps at a 1024×1024 image's own size:
/// each answered 200 or refused 503 (`--max-explanations`, the image permits, the deadline),
/// and the peak stays under the bound, whose explanations term counts two at a time.
#[test]
fn explanations_under_load_stay_within_the_memory_bound() {
    use base64::Engine as _;
    let server = start();
    let jpeg = model::testdata::images("test", 1).remove(0).bytes;
    // Smooth, so that its PNG fits `--max-body`.
    let gradient = image::RgbImage::from_fn(1024, 1024, |x, y| {
        image::Rgb([x as u8, y as u8, ((x + y) / 8) as u8])
    });
    let mut large = Vec::new();
    gradient
        .write_to(
            &mut std::io::Cursor::new(&mut large),
            image::ImageFormat::Png,
        )
        .unwrap();
    let form = |file: &[u8], values: &[(&str, &str)]| {
        model::multipart::form(&[("file", "image", file)], values)
    };
    let v2 = serde_json::json!({
        "parameters": {"method": "integrated-gradients", "steps": 128},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [8],
                    "data": vec![base64::engine::general_purpose::STANDARD.encode(&jpeg); 8]}],
    })
    .to_string();
    let requests: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "/explain",
            model::multipart::content_type(),
            form(
                &jpeg,
                &[("method", "integrated-gradients"), ("steps", "128")],
            ),
        ),
        (
            "/explain",
            model::multipart::content_type(),
            form(&jpeg, &[("method", "occlusion"), ("format", "png")]),
        ),
        (
            "/explain",
            model::multipart::content_type(),
            form(&large, &[("method", "saliency"), ("size", "original")]),
        ),
        (
            "/explain",
            model::multipart::content_type(),
            form(&jpeg, &[("method", "gradcam")]),
        ),
        (
            "/v2/models/cifar10-cnn/explain",
            "application/json".into(),
            v2.into_bytes(),
        ),
    ];
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..48)
            .map(|i| {
                let (path, content_type, body) = &requests[i % requests.len()];
                let addr = &server.addr;
                scope.spawn(move || {
                    (0..3)
                        .map(|_| post_raw(addr, path, content_type, body))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let count = |code| statuses.iter().filter(|&&s| s == code).count();
    eprintln!(
        "144 explanations: {} × 200, {} × 503, others {:?}",
        count(200),
        count(503),
        statuses
            .iter()
            .filter(|&&s| s != 200 && s != 503)
            .collect::<Vec<_>>()
    );
    assert_eq!(count(200) + count(503), statuses.len(), "{statuses:?}");
    assert!(count(200) > 0 && count(503) > 0, "{statuses:?}");
    check_peak(&server, "144 concurrent explanations");
}
