//! HTTP methods as RFC 9110 says: HEAD wherever GET is served (same headers, no body), 405
//! with an `Allow` header for a method a known path does not serve, and OPTIONS answered with
//! `Allow` with or without CORS. The routes come from the server's own OpenAPI document, so
//! a route added later is checked too.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{TestServer, get, start};
use server::ServerConfig;

/// A raw HTTP/1.1 exchange, so that what HEAD sends after its headers can be seen.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn raw(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        write!(request, "{k}: {v}\r\n").unwrap();
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Raw {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
    }
}

/// Every documented path with its methods, plus the docs assets (not in the document).
fn routes(server: &TestServer) -> Vec<(String, Vec<String>)> {
    let spec: serde_json::Value = serde_json::from_str(&get(server, "/openapi.json").1).unwrap();
    let mut routes: Vec<(String, Vec<String>)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, ops)| {
            let methods = ops.as_object().unwrap().keys().map(|m| m.to_uppercase());
            (path.clone(), methods.collect())
        })
        .collect();
    for path in ["/openapi.json", "/docs", "/docs/swagger-ui.css"] {
        routes.push((path.into(), vec!["GET".into()]));
    }
    assert!(routes.len() >= 12, "{routes:?}");
    routes
}

#[test]
fn head_is_served_wherever_get_is_with_the_same_headers_and_no_body() {
    let s = start(ServerConfig::default());
    let mut checked = 0;
    for (path, methods) in routes(&s) {
        if !methods.contains(&"GET".to_string()) {
            continue;
        }
        let got = raw(&s, "GET", &path, &[]);
        let head = raw(&s, "HEAD", &path, &[]);
        assert_eq!(head.status, got.status, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            head.header("content-type"),
            got.header("content-type"),
            "HEAD {path}"
        );
        // /metrics changes between two requests; every other answer is the same twice.
        if path != "/metrics" {
            assert_eq!(
                head.header("content-length"),
                Some(got.body.len().to_string().as_str()),
                "HEAD {path}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn a_method_a_path_does_not_serve_is_405_with_allow() {
    let s = start(ServerConfig::default());
    for (path, methods) in routes(&s) {
        let allow = if methods.contains(&"GET".to_string()) {
            "GET, HEAD, OPTIONS"
        } else {
            "POST, OPTIONS"
        };
        for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "TRACE"] {
            if allow.split(", ").any(|m| m == method) {
                continue;
            }
            let r = raw(&s, method, &path, &[]);
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
            if method != "HEAD" {
                let problem: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                if path.starts_with("/v2") {
                    // The Open Inference Protocol's own error form.
                    let error = problem["error"].as_str().unwrap_or_default();
                    assert!(error.contains("not allowed"), "{method} {path}: {problem}");
                } else {
                    assert_eq!(problem["type"], "/problems/method-not-allowed");
                }
            }
        }
    }
    // An unknown path is still 404.
    assert_eq!(raw(&s, "PUT", "/nowhere", &[]).status, 404);
}

#[test]
fn options_answers_allow_with_and_without_cors() {
    let s = start(ServerConfig::default());
    let r = raw(&s, "OPTIONS", "/classify", &[]);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = raw(&s, "OPTIONS", "/health", &[]);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));

    let s = start(ServerConfig {
        cors_origins: vec!["http://app.example".into()],
        ..ServerConfig::default()
    });
    // A preflight is the CORS middleware's to answer.
    let preflight = raw(
        &s,
        "OPTIONS",
        "/classify",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
    );
    assert_eq!(preflight.status, 200);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    // A plain OPTIONS still gets the resource's methods.
    let r = raw(&s, "OPTIONS", "/classify", &[]);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
}

/// The document says what the server accepts: non-empty images, one to `--max-files` files.
#[test]
fn the_openapi_document_states_the_upload_limits() {
    let s = start(ServerConfig::default());
    let spec: serde_json::Value = serde_json::from_str(&get(&s, "/openapi.json").1).unwrap();
    let schemas = &spec["components"]["schemas"];
    assert_eq!(schemas["ImageFile"]["minLength"], 1);
    assert_eq!(schemas["BatchForm"]["properties"]["files"]["minItems"], 1);
    assert_eq!(
        schemas["BatchForm"]["properties"]["files"]["maxItems"],
        ServerConfig::default().upload.files
    );
    let classify = &spec["paths"]["/classify"]["post"];
    for status in ["200", "400", "408", "413", "415", "422", "500", "503"] {
        assert!(classify["responses"][status].is_object(), "{status}");
    }
    assert!(classify["requestBody"]["content"]["image/jpeg"].is_object());
}
