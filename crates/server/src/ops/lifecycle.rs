//! Process signals: SIGTERM and SIGINT drain and stop the server, SIGHUP reloads the record.
//!
//! A load balancer or Kubernetes stops routing to a replica only once it has seen it unready; a
//! server that closed its listener at SIGTERM would refuse the requests still sent to it in
//! that gap. So at the first SIGTERM or SIGINT, `/ready` (and the V2 readiness paths) answer
//! 503 at once while requests are still served for the drain time (`--drain-seconds`); then
//! the listener closes and requests in flight finish, for up to the shutdown timeout. A second
//! signal, or SIGQUIT, stops at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use tokio::signal::unix::{SignalKind, signal};

use crate::grpc::GrpcStop;
use crate::inference::models::{Models, Trigger};

/// Whether the server is draining (set at the first stop signal).
#[derive(Debug, Default, Clone)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// True once a stop signal has arrived.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the server as draining: readiness answers 503 from now on.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Reloads the record each time `asked` is notified, one reload at a time (a notification
/// that comes while one runs is kept, once, for after it).
async fn reload_on_request(models: Arc<Models>, asked: Arc<tokio::sync::Notify>) {
    loop {
        asked.notified().await;
        let models = models.clone();
        // Reading and checking a record is blocking work.
        let _ = actix_web::rt::task::spawn_blocking(move || models.reload(Trigger::Signal)).await;
    }
}

/// Handles the process's signals for `server` (and the gRPC server, stopped with it) until it
/// stops (spawn it on the server's runtime). Returns at once, logging why, if the signals
/// cannot be listened for.
pub async fn handle_signals(
    server: ServerHandle,
    grpc: Option<GrpcStop>,
    models: Arc<Models>,
    draining: Draining,
    drain: Duration,
) {
    let stop = |graceful: bool| {
        if let Some(grpc) = &grpc {
            grpc.stop(graceful);
        }
        server.stop(graceful)
    };
    let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot listen for signals: stop with SIGKILL; reload is unavailable");
        return;
    };
    // SIGHUPs that come while a reload runs are merged into one reload after it: a burst of
    // signals costs at most two reloads, never a queue of blocking ones.
    let reload_asked = Arc::new(tokio::sync::Notify::new());
    actix_web::rt::spawn(reload_on_request(models, reload_asked.clone()));
    let first = loop {
        tokio::select! {
            _ = hup.recv() => reload_asked.notify_one(),
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = quit.recv() => {
                tracing::info!(signal = "SIGQUIT", "stopping now");
                stop(false).await;
                return;
            }
        }
    };
    draining.set();
    let drain_s = drain.as_secs_f64();
    tracing::info!(
        signal = first,
        drain_s,
        "{first}: readiness off; serving for {drain_s} s more, then finishing requests in flight and stopping"
    );
    let graceful = tokio::select! {
        () = tokio::time::sleep(drain) => true,
        _ = term.recv() => false,
        _ = int.recv() => false,
        _ = quit.recv() => false,
    };
    if !graceful {
        tracing::info!("second signal: stopping now");
        stop(false).await;
        return;
    }
    tracing::info!("drained: closing the listeners, finishing requests in flight");
    // Still listening: a signal while requests in flight finish stops at once.
    tokio::select! {
        () = stop(true) => {}
        _ = term.recv() => stop(false).await,
        _ = int.recv() => stop(false).await,
        _ = quit.recv() => stop(false).await,
    }
}
