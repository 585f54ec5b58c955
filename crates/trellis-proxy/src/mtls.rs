//! Mutual TLS on the mesh transport: the client side (auto mTLS to peers whose identity is
//! known, checking that identity: secure naming) and the server side (STRICT, PERMISSIVE or
//! DISABLE). The certificates and the SPIFFE checks live in `trellis-identity`; this module
//! only wires them to sockets; `tls_io` carries the bytes once the handshake is done.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::{IpAddr as PkiIp, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use trellis_identity::{Credentials, SpiffeId, client_config, explain_handshake_error};

use crate::error::ProxyError;
use crate::tls_io::TlsIo;

/// This proxy's TLS material: its live credentials and the client configs built from them, one
/// per peer identity (they all follow the credentials as they are renewed).
pub(crate) struct MeshTls {
    creds: Arc<Credentials>,
    acceptor: TlsAcceptor,
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("id", &self.creds.id())
            .finish_non_exhaustive()
    }
}

impl MeshTls {
    pub(crate) fn new(creds: Arc<Credentials>) -> Result<Self, trellis_identity::CertError> {
        let acceptor = TlsAcceptor::from(trellis_identity::server_config(&creds)?);
        Ok(Self {
            creds,
            acceptor,
            clients: Mutex::default(),
        })
    }

    /// Handshake as a client with the peer proxy at `addr`, which must prove `expected`.
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        expected: &SpiffeId,
    ) -> Result<MeshStream, ProxyError> {
        let config = self.client_config(expected).map_err(|e| ProxyError::Tls {
            addr,
            reason: format!("cannot build a TLS client config: {e}"),
        })?;
        // The name is not checked (the peer's SPIFFE ID is); rustls needs one anyway.
        let name = ServerName::IpAddress(PkiIp::from(addr.ip()));
        match TlsConnector::from(config).connect(name, tcp).await {
            Ok(tls) => Ok(MeshStream::ClientTls(Box::new(TlsIo::client(tls)))),
            Err(error) => Err(ProxyError::Tls {
                addr,
                reason: handshake_reason(&error),
            }),
        }
    }

    /// Handshake as a server with a peer proxy; returns the stream and the peer's verified
    /// identity.
    pub(crate) async fn accept<I>(&self, io: I) -> Result<(TlsIo<I>, Option<SpiffeId>), String>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        match self.acceptor.accept(io).await {
            Ok(tls) => {
                let peer = trellis_identity::peer_identity(tls.get_ref().1);
                Ok((TlsIo::server(tls), peer))
            }
            Err(error) => Err(handshake_reason(&error)),
        }
    }

    fn client_config(
        &self,
        expected: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, trellis_identity::CertError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = clients.get(expected) {
            return Ok(config.clone());
        }
        let config = client_config(&self.creds, expected)?;
        clients.insert(expected.clone(), config.clone());
        Ok(config)
    }
}

fn handshake_reason(error: &io::Error) -> String {
    match error.get_ref() {
        Some(inner) => explain_handshake_error(inner),
        None => error.to_string(),
    }
}

/// A connection to a peer proxy: mutual TLS, or plaintext for peers outside the mesh's
/// identity (no identity configured on either side).
#[derive(Debug)]
pub(crate) enum MeshStream {
    Plain(TcpStream),
    ClientTls(Box<TlsIo<TcpStream>>),
}

impl MeshStream {
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, MeshStream::ClientTls(_))
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshStream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshStream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshStream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MeshStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MeshStream::Plain(s) => s.is_write_vectored(),
            MeshStream::ClientTls(s) => s.is_write_vectored(),
        }
    }
}
