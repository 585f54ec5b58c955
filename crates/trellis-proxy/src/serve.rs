//! Accept loops and the HTTP server settings shared by every listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use trellis_runtime::DrainWatcher;

use crate::pool::Body;

/// The largest request header section accepted from a client (431 beyond).
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// HTTP/2 settings of every connection the proxy serves or opens (hyper's server here,
/// `h2_server`, `h2_client`): windows large enough for one stream to fill a fast link, 64 KiB
/// frames, and up to 1 MiB buffered per stream before its sender waits.
pub(crate) const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const H2_MAX_FRAME: u32 = 64 * 1024;
pub(crate) const H2_MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Concurrent streams a client may open on a connection the proxy serves.
pub(crate) const H2_MAX_STREAMS: u32 = 1024;
/// Keep-alive: a ping after this long, and the connection is given up if the pong takes longer
/// than [`PING_TIMEOUT`]. Idle connections are pinged too, so a dead peer is noticed before a
/// request is sent to it.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(30);
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections until drain starts; each connection runs `serve` in its own task under
/// a span naming the listener and both addresses, and holds a drain watcher while it runs so
/// that shutdown waits for it.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    drain: DrainWatcher,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, DrainWatcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                // Latency matters more than packet count on every hop we own.
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let span = tracing::debug_span!(
                    "conn", listener = name, id = next_id, src.addr = %client,
                    dst.addr = ?local,
                );
                let task = serve(stream, client, drain.clone());
                tokio::spawn(task.instrument(span));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(listener = name, "stopped accepting");
}

/// Serve HTTP/1.1 on `io` until the client is done or drain asks the connection to close
/// after its in-flight request. Upgrades (CONNECT, WebSocket) are allowed.
pub(crate) async fn http1<I, S>(io: I, header_timeout: Duration, drain: &DrainWatcher, service: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/1 connection ended with an error");
    }
}

/// Serve HTTP/2 (prior knowledge) on `io`; on drain, send GOAWAY and finish open streams.
pub(crate) async fn http2<I, S>(io: I, drain: &DrainWatcher, service: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/2 connection ended with an error");
    }
}

/// Answer a client that broke HTTP/1 framing with `400 Bad Request` and `reason`, then close.
pub(crate) async fn bad_request<I: AsyncWrite + Unpin>(mut io: I, reason: &str) {
    use tokio::io::AsyncWriteExt;
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    );
    let _ = io.write_all(resp.as_bytes()).await;
    let _ = io.shutdown().await;
}
