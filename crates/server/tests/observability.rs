//! Logs and metrics of the real `server` binary: with `--log-format json` every line on stderr
//! is one JSON object (timestamp, level, fields, the request's span with its id), actix's own
//! messages and the start and stop included; `/metrics` parses as Prometheus text, shows the
//! requests just made and the process metrics, and every histogram's buckets rise to `+Inf`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::Process;
use prometheus_parse::{LineInfo, Scrape, Value};
use serde_json::Value as Json;

/// The server's stderr lines so far, each parsed as JSON (a line that is not JSON fails).
fn json_lines(server: &Process) -> Vec<Json> {
    server
        .log_lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Waits until a line satisfies `want` (the writer thread prints asynchronously).
fn wait_for_line(server: &Process, what: &str, want: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = json_lines(server).into_iter().find(&want) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in:\n{}",
            server.log_lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `answered` line of the request with this id.
fn answered(server: &Process, id: &str) -> Json {
    wait_for_line(server, &format!("answer to {id}"), |l| {
        l["fields"]["message"] == "answered" && l["span"]["request_id"] == id
    })
}

/// RFC 3339 in UTC with a fraction, as `tracing-subscriber` writes it: 2026-01-02T03:04:05.678901Z.
fn is_utc_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && t.ends_with('Z')
        && t[..4].bytes().all(|c| c.is_ascii_digit())
}

#[test]
fn json_logs_carry_the_request_id_in_each_requests_span() {
    let server = Process::spawn_logging("json", &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get("/ready").0 != 200 {
        assert!(Instant::now() < deadline, "server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    // An id the client chose is echoed and logged.
    let r = server.get_with("/health", &[("X-Request-Id", "obs-test-1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("obs-test-1"));
    let line = answered(&server, "obs-test-1");
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(
        is_utc_timestamp(line["timestamp"].as_str().unwrap()),
        "{line}"
    );
    assert_eq!(line["target"], "server::request", "{line}");
    assert_eq!(line["fields"]["status"], 200, "{line}");
    assert!(
        line["fields"]["duration_ms"].as_f64().unwrap() >= 0.0,
        "{line}"
    );
    assert_eq!(line["span"]["name"], "request", "{line}");
    assert_eq!(line["span"]["method"], "GET", "{line}");
    assert_eq!(line["span"]["path"], "/health", "{line}");
    assert_eq!(line["span"]["route"], "/health", "{line}");

    // Without one, the server makes one (a UUID), answers with it and logs it.
    let jpeg = model::testdata::images("test", 1).remove(0).bytes;
    let r = server.post_multipart("/classify", &[("file", "a.jpg", &jpeg)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.header("x-request-id").expect("a request id").to_string();
    assert_eq!(id.len(), 36, "{id}");
    let line = answered(&server, &id);
    assert_eq!(line["span"]["route"], "/classify", "{line}");
    assert_eq!(line["span"]["method"], "POST", "{line}");

    // A refusal is logged with its kind; an unusable id (too long) is replaced.
    let long_id = "x".repeat(500);
    let r = server.get_with("/nowhere", &[("X-Request-Id", long_id.as_str())]);
    assert_eq!(r.status, 404);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, long_id);
    let line = answered(&server, &id);
    assert_eq!(line["fields"]["error"], "not-found", "{line}");
    assert_eq!(line["span"]["route"], "unmatched", "{line}");

    // A huge path is cut in the log: the line stays short and whole.
    let path = format!("/{}", "%22a".repeat(3000));
    let r = server.get_with(&path, &[("X-Request-Id", "obs-long-path")]);
    assert_eq!(r.status, 404);
    let line = answered(&server, "obs-long-path");
    let logged = line["span"]["path"].as_str().unwrap();
    assert!(logged.len() <= 200 && path.starts_with(logged), "{logged}");

    // Start-up (ours and actix's, through the log bridge) is in the same JSON form.
    let lines = json_lines(&server);
    let banner = lines
        .iter()
        .find(|l| l["fields"]["addr"].is_string())
        .expect("the start-up line");
    assert_eq!(banner["fields"]["addr"], server.addr.as_str(), "{banner}");
    assert!(
        lines.iter().any(|l| l["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("actix_server")),
        "no actix line in {lines:?}"
    );
    for line in server.log_lines() {
        assert!(line.len() <= 2048, "{} bytes: {line}", line.len());
    }

    // SIGTERM: actix's shutdown and our last line, then exit 0.
    let mut server = server;
    server.signal(libc::SIGTERM);
    let exit = server.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    wait_for_line(&server, "the stop line", |l| {
        l["fields"]["message"] == "stopped"
    });
    wait_for_line(&server, "actix's shutdown line", |l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("SIGTERM"))
    });
}

/// The `le` bounds of each histogram series, in the order of the text.
fn bucket_bounds(text: &str) -> HashMap<String, Vec<String>> {
    let mut series: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once("_bucket{") else {
            continue;
        };
        let labels = rest.rsplit_once('}').unwrap().0;
        let (others, le): (Vec<&str>, Vec<&str>) =
            labels.split(',').partition(|l| !l.starts_with("le="));
        let le = le[0]
            .trim_start_matches("le=\"")
            .trim_end_matches('"')
            .to_string();
        series
            .entry(format!("{name}{{{}}}", others.join(",")))
            .or_default()
            .push(le);
    }
    series
}

#[test]
fn metrics_parse_as_prometheus_text_and_show_requests_and_the_process() {
    let server = Process::start(&[]);
    let jpeg = model::testdata::images("test", 1).remove(0).bytes;
    let ok = server.post_multipart("/classify", &[("file", "a.jpg", &jpeg)]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let refused = server.post("/classify", "text/plain", b"hi");
    assert_eq!(refused.status, 415);
    // A `/v2` error (its own form): a method `/v2` does not serve.
    let wrong = server.post("/v2", "application/json", b"{}");
    assert_eq!(wrong.status, 405);
    assert!(wrong.body.contains("\"error\""), "{}", wrong.body);
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);

    // Every line is a comment, a type, a sample or blank: nothing the parser had to skip.
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not Prometheus text: {line:?}"
        );
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"));
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{name} is a summary"),
        }
    };

    // The requests just made.
    assert_eq!(
        value(
            "http_requests_total",
            &[("route", "/classify"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "http_requests_total",
            &[("route", "/classify"), ("status", "415")]
        ),
        1.0
    );
    assert_eq!(
        value("http_request_duration_seconds", &[("route", "/classify")]),
        2.0
    );
    assert_eq!(
        value("refusals_total", &[("reason", "unsupported-media-type")]),
        1.0
    );
    assert_eq!(
        value("errors_total", &[("kind", "unsupported-media-type")]),
        1.0
    );
    // A `/v2` error is counted by its kind too.
    assert_eq!(
        value("errors_total", &[("kind", "method-not-allowed")]),
        1.0
    );
    assert_eq!(
        value("refusals_total", &[("reason", "method-not-allowed")]),
        1.0
    );
    assert_eq!(value("images_classified_total", &[]), 1.0);
    assert_eq!(value("inference_queue_wait_seconds", &[]), 1.0);
    assert_eq!(value("inference_batch_size", &[]), 1.0);
    assert_eq!(value("inference_images_in_flight", &[]), 0.0);
    assert_eq!(value("model_reloads_total", &[("result", "success")]), 0.0);
    assert_eq!(value("model_reloads_total", &[("result", "failure")]), 0.0);
    assert_eq!(value("log_lines_dropped_total", &[]), 0.0);
    for (name, kind) in [
        ("http_requests_total", "counter"),
        ("refusals_total", "counter"),
        ("http_request_duration_seconds", "histogram"),
        ("inference_queue_wait_seconds", "histogram"),
        ("inference_batch_size", "histogram"),
        ("inference_images_in_flight", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no {kind} {name} in\n{text}"
        );
    }

    // The process.
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(value("process_open_fds", &[]) >= 3.0);
    assert!(value("process_cpu_seconds_total", &[]) >= 0.0);
    let started = value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > now - 3600.0 && started <= now + 1.0, "{started}");

    // Buckets: strictly rising finite bounds, then +Inf, last.
    let series = bucket_bounds(&text);
    assert!(series.len() >= 3, "{series:?}");
    for (name, bounds) in &series {
        assert_eq!(bounds.last().map(String::as_str), Some("+Inf"), "{name}");
        let finite: Vec<f64> = bounds[..bounds.len() - 1]
            .iter()
            .map(|b| b.parse().unwrap_or_else(|_| panic!("{name}: bound {b}")))
            .collect();
        assert!(finite.iter().all(|b| b.is_finite()), "{name}: {bounds:?}");
        assert!(finite.windows(2).all(|w| w[0] < w[1]), "{name}: {bounds:?}");
    }
}
