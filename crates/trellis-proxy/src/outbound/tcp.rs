//! Opaque TCP captured transparently (declared `tcp`/`tls`, or not HTTP): relayed to an
//! endpoint of the service it addressed (routes are for HTTP), or straight through.

use std::net::SocketAddr;

use trellis_model::OutboundPolicy;

use super::{Outbound, Upstream};
use crate::error::ProxyError;
use crate::metrics::Reporter;
use crate::observe::{ConnAddrs, TcpObserver};
use crate::state::Snapshot;
use crate::tunnel::relay;

impl Outbound {
    /// A TCP connection captured transparently (declared `tcp`/`tls`, or not HTTP).
    pub(super) async fn tcp<I>(
        &self,
        io: I,
        addrs: ConnAddrs,
        dst: SocketAddr,
        sni: Option<String>,
        snapshot: &Snapshot,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut obs = TcpObserver::start(&self.metrics, Reporter::Source, &snapshot.node, addrs);
        obs.set_sni(sni);
        // Routes are for HTTP: a TCP connection goes to the service it addressed.
        let dest = snapshot.by_addr(dst).map(|f| &f.own);
        let (target, mesh, identity) = match dest {
            Some(d) => match d.pick(d.connection_hash(addrs.client.ip()), &[]) {
                Some((_, ep)) => {
                    let mtls = self.upstreams.connector.uses_tls(ep.identity.as_deref());
                    obs.set_destination(d, ep, mtls);
                    (ep.target, ep.mesh, ep.identity.clone())
                }
                None => {
                    return obs.fail(&ProxyError::NoEndpoints {
                        service: d.fqdn.to_string(),
                    });
                }
            },
            None if snapshot.outbound_policy == OutboundPolicy::RegistryOnly => {
                return obs.fail(&ProxyError::NoRoute {
                    authority: dst.to_string(),
                });
            }
            None => {
                obs.set_upstream(dst);
                (dst, None, None)
            }
        };
        // Over the service's max_connections: closed at once, logged with `UO`.
        let _slot = match super::connection_slot(dest.map(|d| &**d)) {
            Ok(slot) => slot,
            Err(error) => return obs.fail(&error),
        };
        let t = dest.map_or(snapshot.timeouts, |d| d.timeouts);
        let upstream = Upstream {
            target,
            mesh,
            h2: false,
            identity,
            index: None,
            meta: None,
        };
        match self
            .open_tunnel(&upstream, dest.map(|d| &**d), snapshot, t)
            .await
        {
            Ok(tunnel) => {
                obs.connected();
                obs.close(relay(io, tunnel, t.idle).await);
            }
            Err(error) => obs.fail(&error),
        }
    }
}
