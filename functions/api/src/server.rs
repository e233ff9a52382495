//! The HTTP/1 server of `bitnet serve` and the Azure handler: the router behind limits that a
//! client cannot get around by holding sockets.
//!
//! - Headers must arrive within `header_timeout` (hyper's header read timeout).
//! - A connection with no request in flight is closed after `idle_timeout` (idle keep-alive
//!   connections and connections that never send a request alike).
//! - At most `max_connections` are open, and never more than the file descriptor limit
//!   allows: at the cap a new connection closes the connection idle the longest (so that a
//!   real client gets in past a crowd of idle sockets), or is closed itself when every open
//!   connection is serving a request.
//!
//! A request counts as in flight from its headers until its response body is finished or
//! dropped (a streamed response too).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::config::HttpLimits;

/// Send buffer of an accepted connection (the kernel doubles it for its bookkeeping): a
/// response is JSON or a token stream, far below this per round trip.
const SEND_BUFFER_BYTES: usize = 64 << 10;

/// File descriptors kept free for everything but connections (the model file, logs, the
/// model store's downloads, the runtime).
const RESERVED_FDS: u64 = 64;

/// The connection cap: the configured one, lowered to what the soft `RLIMIT_NOFILE` leaves.
pub fn effective_max_connections(configured: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match limit {
        Some(n) => configured.min(n.saturating_sub(RESERVED_FDS).max(1) as usize),
        None => configured,
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests between their headers and the end of their response body.
    in_flight: AtomicUsize,
    /// Milliseconds since the server started when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Tells the connection's task to close it.
    close: Notify,
}

struct Table {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Table {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more connection: true when there is room (possibly after telling the
    /// longest-idle connection to close), false when every connection is busy.
    fn make_room(&self, max: usize) -> bool {
        let mut conns = self.lock();
        if conns.len() < max {
            return true;
        }
        let victim = conns
            .iter()
            .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.idle_since_ms.load(Ordering::Relaxed))
            .map(|(&id, _)| id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks a request in flight until dropped (moved into the response body).
struct InFlight {
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl InFlight {
    fn new(conn: Arc<Conn>, table: Arc<Table>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { conn, table }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .idle_since_ms
            .store(self.table.now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish.
pub async fn serve_listener(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = effective_max_connections(limits.max_connections);
    tracing::info!(
        addr = %listener.local_addr()?,
        max_connections = max,
        header_timeout_s = limits.header_timeout.as_secs_f64(),
        idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        "listening"
    );
    let table = Arc::new(Table {
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
    });
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    let mut next_id = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait for a connection to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        if !table.make_room(max) {
            tracing::warn!(%peer, max_connections = max, "every connection is busy; closing a new one");
            drop(tcp);
            continue;
        }
        next_id += 1;
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(table.now_ms()),
            close: Notify::new(),
        });
        table.lock().insert(next_id, conn.clone());
        tasks.spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            limits.clone(),
            ConnHandle {
                id: next_id,
                conn,
                table: table.clone(),
                stop: stop.subscribe(),
            },
        ));
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    stop.send_replace(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

struct ConnHandle {
    id: u64,
    conn: Arc<Conn>,
    table: Arc<Table>,
    stop: tokio::sync::watch::Receiver<bool>,
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    mut h: ConnHandle,
) {
    // SSE sends one small write per token; Nagle would hold each behind the client's delayed
    // ACK (~40 ms per token on a kept-alive connection).
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    // Bounded kernel memory per client, and a client that stops reading is felt within a
    // few hundred tokens (the stream's stall limit then frees its generation) instead of
    // after the megabytes that send-buffer autotuning would queue.
    if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(&tcp, SEND_BUFFER_BYTES) {
        tracing::debug!(error = %e, "SO_SNDBUF not set");
    }
    let (conn, table) = (h.conn.clone(), h.table.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = InFlight::new(conn.clone(), table.clone());
        let app = app.clone();
        async move {
            let resp = app
                .oneshot(req.map(Body::new))
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            // The guard lives as long as the body: a streamed response stays in flight.
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(connection);
    let idle = limits.idle_timeout;
    let mut shutting_down = false;
    loop {
        let idle_for = Duration::from_millis(
            h.table
                .now_ms()
                .saturating_sub(h.conn.idle_since_ms.load(Ordering::Relaxed)),
        );
        let busy = h.conn.in_flight.load(Ordering::Acquire) > 0;
        let check_in = if busy {
            idle
        } else {
            idle.saturating_sub(idle_for)
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = h.conn.close.notified() => {
                tracing::debug!(%peer, "closing the longest-idle connection to admit a new one");
                break;
            }
            _ = tokio::time::sleep(check_in), if !shutting_down => {
                let idle_for = h.table.now_ms().saturating_sub(h.conn.idle_since_ms.load(Ordering::Relaxed));
                if h.conn.in_flight.load(Ordering::Acquire) == 0 && idle_for >= idle.as_millis() as u64 {
                    tracing::debug!(%peer, "closing an idle connection");
                    break;
                }
            }
            _ = h.stop.wait_for(|s| *s), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    h.table.lock().remove(&h.id);
}
