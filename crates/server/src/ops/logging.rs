//! Logs: [`tracing`] events and spans, printed by [`tracing_subscriber`] as text or as one JSON
//! object per line, filtered by `RUST_LOG` (an [`EnvFilter`], `info` by default). actix's own
//! messages (it logs through the `log` crate) are bridged into the same output.
//!
//! Every request runs in a span of its own ([`RequestSpan`], under
//! [`tracing_actix_web::TracingLogger`]) that carries its request id — the client's
//! `X-Request-Id` when it sends a usable one, else a fresh UUID — with its method, path and
//! route; the server answers with that id in `X-Request-Id` and logs one `answered` event
//! in the span (status, duration, error kind).
//!
//! Logging never blocks a request and its memory is bounded: lines go to a writer thread
//! through a bounded queue of [`LOG_LINES`] lines that drops lines when full (counted in
//! `log_lines_dropped_total`), and no line is longer than [`LOG_LINE_BYTES`]: the
//! client-chosen fields are cut before they are logged ([`LOG_PATH_BYTES`],
//! [`LOG_METHOD_BYTES`]; a request id is at most 128 bytes) and any longer line is cut by the
//! writer.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use tracing::Span;
use tracing::level_filters::LevelFilter;
use tracing_actix_web::{RequestId, RootSpanBuilder};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::LogFormat;
use crate::ops::memory::{LOG_LINE_BYTES, LOG_LINES, LOG_METHOD_BYTES, LOG_PATH_BYTES};

/// The target of the request spans and of their `answered` events: `RUST_LOG=server::request=off`
/// silences them (as `--log-format off` does).
pub const REQUEST_TARGET: &str = "server::request";

/// Longest request id taken from a client's `X-Request-Id` (printable ASCII); another is
/// replaced by a fresh one.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Lines the lossy writer has dropped so far, once [`init`] has run.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread; dropping it writes out the lines still queued (for up to a second).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _guard: WorkerGuard,
}

/// Installs the process's log output on stderr in `format` (`Off`: text, without the
/// per-request lines), filtered by `RUST_LOG` (default `info`), and bridges `log` records into
/// it. Call it once, early; a second call leaves the first subscriber in place.
pub fn init(format: LogFormat) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES)
        .thread_name("log-writer")
        .finish(io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let writer = BoundedLines(writer);
    let (mut filter, bad_filter) = match EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
    {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    if format == LogFormat::Off
        && let Ok(directive) = format!("{REQUEST_TARGET}=off").parse()
    {
        filter = filter.add_directive(directive);
    }
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Human | LogFormat::Off => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(io::stderr().is_terminal())
                    .with_writer(writer),
            )
            .try_init(),
    };
    if let Err(e) = installed {
        tracing::warn!("logging was already set up: {e}");
    }
    if let Some(e) = bad_filter {
        tracing::warn!("RUST_LOG ignored ({e}); logging at info");
    }
    LogGuard { _guard: guard }
}

/// Log lines dropped so far because the writer's queue was full.
#[must_use]
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, ErrorCounter::dropped_lines)
}

/// Hands each formatted line to the non-blocking writer, cut to [`LOG_LINE_BYTES`].
#[derive(Clone)]
struct BoundedLines(NonBlocking);

impl<'a> MakeWriter<'a> for BoundedLines {
    type Writer = BoundedLine;

    fn make_writer(&'a self) -> Self::Writer {
        BoundedLine(self.0.clone())
    }
}

/// One event's writer: the formatter writes a whole line in one call.
struct BoundedLine(NonBlocking);

impl Write for BoundedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let max = usize::try_from(LOG_LINE_BYTES).unwrap_or(usize::MAX);
        if buf.len() <= max {
            return self.0.write(buf);
        }
        // Cut on a character boundary, keeping the line's end.
        let mut end = max - 1;
        while end > 0 && buf[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let mut line = Vec::with_capacity(end + 1);
        line.extend_from_slice(&buf[..end]);
        line.push(b'\n');
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The request id of a request, as [`RequestSpan`] chose it, for the `X-Request-Id` answer.
#[derive(Clone)]
pub struct RequestTag {
    /// The id, ready to be sent back.
    pub id: HeaderValue,
    /// The route pattern that matched, or `unmatched`.
    pub route: String,
}

/// Builds each request's root span (for [`tracing_actix_web::TracingLogger`]): its id (the
/// client's, or a fresh UUID), method, path and route, every client-chosen field cut short.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = request
            .headers()
            .get("x-request-id")
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= MAX_REQUEST_ID_BYTES
                    && v.as_bytes().iter().all(u8::is_ascii_graphic)
            })
            .cloned()
            .or_else(|| {
                let uuid = *request.extensions().get::<RequestId>()?;
                let mut text = [0u8; 36];
                HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut text)).ok()
            })
            .unwrap_or_else(|| HeaderValue::from_static("-"));
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        let span = tracing::info_span!(
            target: REQUEST_TARGET,
            "request",
            request_id = id.to_str().unwrap_or("-"),
            method = cut(request.method().as_str(), LOG_METHOD_BYTES),
            path = cut(request.path(), LOG_PATH_BYTES),
            route = route.as_str(),
        );
        request.extensions_mut().insert(RequestTag { id, route });
        span
    }

    fn on_request_end<B: MessageBody>(
        _span: Span,
        _outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        // The `answered` event is logged by the server's own middleware, which knows the
        // error kind and the elapsed time.
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that keeps each write it gets.
    #[derive(Clone, Default)]
    struct Kept(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let kept = Kept::default();
        let (writer, guard) = NonBlockingBuilder::default().finish(kept.clone());
        let mut line = BoundedLine(writer);
        let long = format!("{}\n", "é".repeat(4000));
        assert_eq!(line.write(long.as_bytes()).unwrap(), long.len());
        line.write_all(b"short\n").unwrap();
        drop(guard);
        let lines = kept.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 2);
        let max = usize::try_from(LOG_LINE_BYTES).unwrap();
        let first = String::from_utf8(lines[0].clone()).unwrap();
        assert!(
            first.len() <= max && first.len() > max - 4,
            "{}",
            first.len()
        );
        assert!(first.ends_with("é\n"));
        assert_eq!(lines[1], b"short\n");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("abc", 10), "abc");
    }
}
