//! A real server on 127.0.0.1 (ephemeral port) and a real HTTP client for the tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use model::{Backend, Cnn, Inference, RecordMeta};
use server::{Loaded, LogFormat, ServerConfig};

pub struct TestServer {
    pub base: String,
    pub model: Cnn,
    handle: ServerHandle,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stop without waiting for in-flight requests: the test is over.
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

/// Starts a server on weights made here, with the default (production) inference backend;
/// waits until `/ready`.
pub fn start(mut config: ServerConfig) -> TestServer {
    config.log = LogFormat::Off;
    let backend = Backend::default_inference();
    let device = backend.device();
    let model = model::Cnn::init(&device);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let loaded = Loaded::unsaved(
        Inference::new(model.clone(), backend).unwrap(),
        RecordMeta::default(),
        "test weights",
    );
    let handle = server::spawn(listener, loaded, config).unwrap();
    let server = TestServer {
        base,
        model,
        handle,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&server, "/ready").0 != 200 {
        assert!(Instant::now() < deadline, "server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// The version [`start`]'s servers give their weights (which were never saved).
pub fn test_version() -> String {
    model::RecordVersion::of(b"test weights", &RecordMeta::default()).label
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn reply(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut res = res.expect("request failed");
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect::<Vec<_>>();
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Reply {
        status: res.status().as_u16(),
        content_type,
        headers,
        body: res.body_mut().read_to_string().unwrap_or_default(),
    }
}

pub fn get(server: &TestServer, path: &str) -> (u16, String) {
    let r = reply(agent().get(format!("{}{path}", server.base)).call());
    (r.status, r.body)
}

pub fn get_reply(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().get(format!("{}{path}", server.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.call())
}

pub fn post(server: &TestServer, path: &str, content_type: &str, body: &[u8]) -> Reply {
    reply(
        agent()
            .post(format!("{}{path}", server.base))
            .header("Content-Type", content_type)
            .send(body),
    )
}

pub use model::multipart::multipart;

pub fn post_multipart(server: &TestServer, path: &str, parts: &[(&str, &str, &[u8])]) -> Reply {
    post(
        server,
        path,
        &model::multipart::content_type(),
        &multipart(parts),
    )
}

/// The `server` binary running as a process of its own, so that its memory can be read from
/// `/proc/<pid>/status`. Killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    /// `host:port`.
    pub addr: String,
    /// The server's start-up line: what it serves, where, and with which settings.
    pub banner: String,
    /// Every line the server has written to stderr so far, the start-up line among them.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `server --port 0 --log-format off <args>` and waits until `/ready` answers 200.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Process::start`] with environment variables set for the server.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let process = Self::spawn_with_env(args, env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while process.get("/ready").0 != 200 {
            assert!(Instant::now() < deadline, "server never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    /// Starts `server --port 0 --log-format off <args>` and returns once it has said where it
    /// listens (its first line), before the model is necessarily ready.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// [`Process::spawn`] with environment variables set for the server.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_logging("off", args, env)
    }

    /// Starts `server --port 0 --log-format <log_format> <args>` (without `RUST_LOG` unless
    /// `env` sets it) and returns once it has said where it listens; its stderr lines are
    /// kept in [`Process::log`].
    pub fn spawn_logging(log_format: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .env_remove("CNN_PORT")
            .env_remove("CNN_MODEL")
            .env_remove("CNN_TTA")
            .env_remove("CNN_PRECISION")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .args(["--port", "0", "--log-format", log_format])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // The start-up line is the one that says where the server listens.
        let banner = loop {
            let mut line = String::new();
            let read = stderr.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "the server ended before listening: {:?}",
                log.lock().unwrap()
            );
            let line = line.trim_end().to_string();
            log.lock().unwrap().push(line.clone());
            if line.contains("http://") {
                break line;
            }
        };
        let addr = banner
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .to_string();
        // Keep reading, so that the server never writes into a full or closed pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            addr,
            banner,
            log,
        }
    }

    /// Sends the signal `sig` (`libc::SIGTERM`, `libc::SIGHUP`, ...) to the server.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the child this test started; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits up to `within` for the server to exit; how it exited.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the server's gRPC listener is (`--grpc-port`), from its start-up line.
    pub fn grpc_addr(&self) -> String {
        self.log_lines()
            .iter()
            .find_map(|line| {
                let rest = line.split("gRPC on ").nth(1)?;
                rest.split_whitespace().next().map(String::from)
            })
            .expect("the server says where gRPC listens")
    }

    /// The lines the server has written to stderr so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends a GET with extra headers; the answer's status, headers and body.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = agent().get(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        reply(req.call())
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match agent().get(format!("http://{}{path}", self.addr)).call() {
            Ok(mut res) => (
                res.status().as_u16(),
                res.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        reply(
            agent()
                .post(format!("http://{}{path}", self.addr))
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    pub fn post_multipart(&self, path: &str, parts: &[(&str, &str, &[u8])]) -> Reply {
        self.post(path, &model::multipart::content_type(), &multipart(parts))
    }

    /// A `kB` line of the process's `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn status_bytes(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/<pid>/status"))
            * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Small settings, so that the memory bound is tight (about 124 MiB) and an attack that escaped
/// it would show (`tests/memory.rs`, `tests/v2.rs`).
pub const SMALL_ARGS: [&str; 16] = [
    "--max-connections",
    "64",
    "--max-body",
    "1048576",
    "--body-memory",
    "4194304",
    "--decode-memory",
    "16777216",
    "--max-images",
    "128",
    "--max-files",
    "64",
    "--request-timeout",
    "3",
    "--workers",
    "2",
];

/// [`SMALL_ARGS`] as the library sees them.
pub fn small_config() -> server::ServerConfig {
    let default = server::ServerConfig::default();
    server::ServerConfig {
        workers: 2,
        max_connections: 64,
        batch: server::inference::engine::BatchPolicy {
            max_images: 128,
            ..default.batch
        },
        upload: server::ingest::upload::UploadLimits {
            body: 1 << 20,
            files: 64,
        },
        body_memory: 4 << 20,
        decode_memory: 16 << 20,
        request_timeout: std::time::Duration::from_secs(3),
        ..default
    }
}

/// The server at [`SMALL_ARGS`] kept its peak RSS (its own `VmHWM`) under the bound those
/// settings give, and still answers `/health`; `what` names the attack in the messages.
pub fn check_peak(server: &Process, what: &str) {
    check_peak_at(server, &small_config(), what);
}

/// [`check_peak`] for a server started with the settings `config` describes.
pub fn check_peak_at(server: &Process, config: &server::ServerConfig, what: &str) {
    check_peak_within(server, server::ops::memory::MemoryBound::of(config), what);
}

/// [`check_peak`] against `bound`.
pub fn check_peak_within(server: &Process, bound: server::ops::memory::MemoryBound, what: &str) {
    let peak = server.status_bytes("VmHWM");
    eprintln!(
        "{what}: peak RSS {:.1} MiB, bound {bound}",
        peak as f64 / f64::from(1 << 20)
    );
    assert!(
        peak < bound.total(),
        "{what}: peak RSS {peak} bytes over the bound {bound}"
    );
    assert_eq!(server.get("/health").0, 200, "{what}: /health");
}

/// A unary gRPC call to `path` of the server at `addr` with the encoded `message` (and
/// `authorization: Bearer <key>` when given), made over HTTP/2 by hand: its status code and
/// its answer's message bytes, or `None` when nothing answers.
pub fn grpc_call(
    addr: &str,
    path: &str,
    message: &[u8],
    key: Option<&str>,
) -> Option<(i32, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let mut request = tonic::codegen::http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(prost::bytes::Bytes::from(framed)))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
            .await
            .ok()?
            .ok()?;
        let status = |headers: &tonic::codegen::http::HeaderMap| {
            headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        };
        let in_head = status(response.headers());
        let collected = response.into_body().collect().await.ok()?;
        let code = in_head.or_else(|| collected.trailers().and_then(status))?;
        let body = collected.to_bytes();
        Some((code, body.get(5..).unwrap_or_default().to_vec()))
    })
}

/// `grpc.health.v1.Health/Check` (the server as a whole) of the gRPC server at `addr`: the
/// status it gives (1 `SERVING`, 2 `NOT_SERVING`), or `None` when nothing answers.
pub fn grpc_health(addr: &str) -> Option<i32> {
    let (_, message) = grpc_call(addr, "/grpc.health.v1.Health/Check", &[], None)?;
    // A HealthCheckResponse: field 1, the status, as one varint byte (absent when 0).
    match message[..] {
        [0x08, status] => Some(i32::from(status)),
        [] => Some(0),
        _ => None,
    }
}

/// Waits up to two seconds for the gRPC health at `addr` to say `status` (it follows
/// readiness every 100 ms); whether it did.
pub fn grpc_health_becomes(addr: &str, status: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while grpc_health(addr) != Some(status) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
