//! The TLS side of the control plane's gRPC port: its own certificate, the handshake, and the
//! verified peer handed to the gRPC handlers.
//!
//! - The control plane presents a certificate for
//!   `spiffe://<trust-domain>/ns/trellis-system/sa/trellis-control`, issued by its own CA at
//!   start and renewed at half life (new handshakes get the new one; open connections carry on).
//! - TLS 1.3 only, ALPN `h2`, no session resumption (every connection verifies the client's
//!   current certificate).
//! - A client certificate is optional, because a workload asking for its first certificate has
//!   none (its join token authenticates it). One that is presented must chain to the trust
//!   bundle and carry a SPIFFE ID, or the handshake is refused.
//! - Each accepted connection becomes a [`TlsConn`], whose [`Peer`] tonic puts into every
//!   request's extensions (`request.extensions().get::<Peer>()`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tracing::{Instrument as _, debug, debug_span, info, warn};
use trellis_identity::{
    CaError, CertError, CertificateAuthority, Credentials, SpiffeId, SpiffeIdError, VerifyError,
    WorkloadCert, explain_handshake_error, human,
};
use trellis_runtime::DrainWatcher;

/// The control plane's namespace in its SPIFFE ID.
pub const CONTROL_NAMESPACE: &str = "trellis-system";
/// The control plane's service account in its SPIFFE ID.
pub const CONTROL_SERVICE_ACCOUNT: &str = "trellis-control";

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Retry a failed renewal of the control plane's own certificate after this long.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// The client at the other end of a connection, as the TLS handshake established it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The certificate chain the client presented (leaf first), verified at handshake time;
    /// `None` when it presented none (a bootstrap client).
    pub chain: Option<Arc<[CertificateDer<'static>]>>,
}

/// An accepted, handshaken connection; tonic serves gRPC over it.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

/// Why the control plane cannot have its own certificate.
#[derive(Debug, thiserror::Error)]
pub enum OwnCertError {
    #[error("the CA cannot issue it: {0}")]
    Issue(Box<CaError>),
    #[error("the certificate the CA issued is unusable: {0}")]
    Use(CertError),
}

/// The control plane's SPIFFE ID in `trust_domain`.
pub fn control_identity(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT)
}

/// Issues the control plane's own certificate from `ca` and returns the credentials that
/// present it (and trust the CA's bundle).
pub fn own_credentials(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    ttl: Duration,
) -> Result<Arc<Credentials>, OwnCertError> {
    let cert = issue_own(ca, id, ttl)?;
    Ok(Credentials::new(cert, ca.bundle().clone()))
}

/// The server config of the gRPC port (see the module docs).
pub fn server_config(creds: &Arc<Credentials>) -> Result<Arc<ServerConfig>, CertError> {
    trellis_identity::server_config_optional_client_auth(creds)
}

/// Accepts TCP connections on `listener` and completes their TLS handshakes concurrently (one
/// slow client holds up no one), yielding each established connection. Stops accepting when
/// `drain` is signaled; the stream then ends.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    drain: DrainWatcher,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx, drain));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}

/// Renews the control plane's own certificate at half life until drain. A failed renewal is
/// retried; the old certificate stays in use meanwhile.
pub async fn renew_own_cert(
    ca: Arc<CertificateAuthority>,
    creds: Arc<Credentials>,
    ttl: Duration,
    drain: DrainWatcher,
) {
    let id = creds.id();
    let mut wait = until(creds.cert().renew_at());
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match issue_own(&ca, &id, ttl) {
            Ok(cert) => {
                info!(
                    identity = %id,
                    not_after = %human::time(cert.not_after()),
                    "renewed the control plane's own certificate"
                );
                wait = until(cert.renew_at());
                creds.set_cert(cert);
            }
            Err(error) => {
                let expires = human::time(creds.cert().not_after());
                warn!(%error, %expires, "cannot renew the control plane's own certificate; retrying");
                wait = RENEW_RETRY;
            }
        }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<TlsConn>,
    drain: DrainWatcher,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let span = debug_span!("grpc", src.addr = %addr);
                let handshake = handshake(acceptor.clone(), tcp, addr, tx.clone());
                tokio::spawn(handshake.instrument(span));
            }
            Err(error) => {
                warn!(%error, "gRPC port failed to accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    debug!("gRPC port stopped accepting");
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    tx: mpsc::Sender<TlsConn>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
            debug!(%error, "client closed the connection before the TLS handshake finished");
            return;
        }
        Ok(Err(error)) => {
            let refusal = VerifyError::find(&error).cloned();
            let reason = explain_handshake_error(&error);
            match refusal {
                Some(_) => {
                    warn!(src.addr = %addr, %reason, "TLS handshake refused: client certificate not accepted")
                }
                None => {
                    warn!(src.addr = %addr, %reason, "TLS handshake failed (is the client speaking TLS 1.3 with ALPN h2?)")
                }
            }
            return;
        }
        Err(_elapsed) => {
            warn!(src.addr = %addr, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return;
        }
    };
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| Arc::<[CertificateDer<'static>]>::from(certs.to_vec()));
    debug!(client_cert = chain.is_some(), "TLS handshake complete");
    let conn = TlsConn {
        stream,
        peer: Peer { addr, chain },
    };
    // The server has stopped taking connections (drain): the connection is dropped.
    let _ = tx.send(conn).await;
}

fn issue_own(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    ttl: Duration,
) -> Result<WorkloadCert, OwnCertError> {
    let (key, issued) = ca
        .issue(id, ttl)
        .map_err(|e| OwnCertError::Issue(Box::new(e)))?;
    WorkloadCert::new(&key, issued.chain_pem.as_bytes()).map_err(OwnCertError::Use)
}

/// How long from now until `at` (zero if past).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}
