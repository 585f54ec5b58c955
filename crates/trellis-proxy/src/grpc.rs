//! A gRPC channel to the control plane over our own rustls: tonic's transport knows nothing
//! of SPIFFE, so the TLS stream (which verifies the control plane's identity, and presents
//! ours when the config carries a certificate) is made here and handed to tonic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use trellis_identity::explain_handshake_error;

/// How a channel behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelOptions {
    /// Each request must finish within this (None: streams that stay open).
    pub(crate) request_timeout: Option<Duration>,
    /// HTTP/2 PINGs this often find a control plane that vanished without closing the
    /// connection (None: none).
    pub(crate) keepalive: Option<Duration>,
}

/// Connects to `addr` with `tls`. The error says why, in the operator's words.
pub(crate) async fn connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    options: ChannelOptions,
) -> Result<Channel, String> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let mut endpoint =
        Endpoint::from_static("http://trellis-control").connect_timeout(Duration::from_secs(5));
    if let Some(timeout) = options.request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    if let Some(interval) = options.keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(interval)
            .keep_alive_while_idle(true);
    }
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| explain_handshake_error(&e))
}
