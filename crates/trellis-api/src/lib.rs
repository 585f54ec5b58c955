//! The wire APIs between the proxies and the control plane: the `.proto` files under `proto/`
//! and the prost/tonic code generated from them at build time (by protox: no protoc). No
//! logic lives here.
//!
//! - [`ca::v1`]: `trellis.ca.v1.CertificateService`, the mesh CA's signing service (a CSR and
//!   a credential in; a certificate chain and the trust bundle out). See
//!   `proto/trellis/ca/v1/ca.proto` for the contract and its error codes.
//! - [`demo::v1`]: `trellis.demo.v1.Demo`, the gRPC face of `trellis demo-app`: who answered
//!   and the outcomes of its own backend calls, the same call tree its `GET /` gives in JSON.
//!   See `proto/trellis/demo/v1/demo.proto`.
//! - [`discovery::v1`]: `trellis.discovery.v1.Discovery`, config push: one bidirectional
//!   stream per proxy over mutual TLS; the control plane sends the proxy's compiled
//!   `trellis_model::ProxyConfig` as JSON with a version and a nonce, the proxy answers ACK or
//!   NACK. See `proto/trellis/discovery/v1/discovery.proto` for the exchange and why the
//!   payload is JSON of the model.
//!
//! # Getting a certificate (what a proxy does at start and at half life)
//!
//! The generated client takes any channel; tonic's own transport knows nothing of SPIFFE, so
//! the caller connects with rustls itself and hands the TLS stream to tonic through
//! `Endpoint::connect_with_connector` (tonic feature `channel`). The control plane presents
//! `spiffe://<trust-domain>/ns/trellis-system/sa/trellis-control`.
//!
//! ```ignore
//! use trellis_api::ca::v1::{CreateCertificateRequest, certificate_service_client::CertificateServiceClient};
//!
//! // 1. A key that never leaves the process, and a CSR for our identity.
//! let key = trellis_identity::WorkloadKey::generate()?;
//! let csr = key.csr_pem(&my_id)?;
//!
//! // 2. TLS to the control plane, verifying its chain against the bundle and its identity.
//! let control_id = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control".parse()?;
//! let tls: Arc<rustls::ClientConfig> = if bootstrapping {
//!     // No client certificate (the join token authenticates); the bundle is the
//!     // root-cert.pem handed over out of band.
//!     let bundle = trellis_identity::TrustBundle::from_pem_file(&root_cert_pem)?;
//!     trellis_identity::bootstrap_client_config(bundle, &control_id)?
//! } else {
//!     // Renewal: present the current certificate, send no token.
//!     trellis_identity::client_config(&creds, &control_id)?
//! };
//! let channel = tonic::transport::Endpoint::from_static("http://trellis-control")
//!     .connect_with_connector(tower::service_fn(move |_: http::Uri| {
//!         let tls = tokio_rustls::TlsConnector::from(tls.clone());
//!         async move {
//!             let tcp = tokio::net::TcpStream::connect(control_addr).await?;
//!             let name = rustls_pki_types::ServerName::from(control_addr.ip());
//!             Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls.connect(name, tcp).await?))
//!         }
//!     }))
//!     .await?;
//!
//! // 3. Ask. An error is a tonic::Status whose message says what to fix.
//! let response = CertificateServiceClient::new(channel)
//!     .create_certificate(CreateCertificateRequest {
//!         csr,
//!         requested_ttl_seconds: 0,            // the CA's default (24 h)
//!         join_token: token_or_empty,          // empty on renewal
//!     })
//!     .await?
//!     .into_inner();
//!
//! // 4. Present it; trust the bundle that came with it.
//! let cert = trellis_identity::WorkloadCert::new(&key, response.cert_chain.concat().as_bytes())?;
//! let bundle = trellis_identity::TrustBundle::from_pem("the trust bundle", response.trust_bundle.as_bytes())?;
//! creds.set_cert(cert);
//! creds.set_bundle(bundle);
//! ```

/// `trellis.ca.v1`.
pub mod ca {
    /// The mesh CA's signing service, version 1.
    pub mod v1 {
        #![allow(
            unreachable_pub,
            rust_2018_idioms,
            missing_docs,
            clippy::all,
            clippy::pedantic
        )]
        tonic::include_proto!("trellis.ca.v1");
    }
}

/// `trellis.demo.v1`.
pub mod demo {
    /// The demo app's service, version 1.
    pub mod v1 {
        #![allow(
            unreachable_pub,
            rust_2018_idioms,
            missing_docs,
            clippy::all,
            clippy::pedantic
        )]
        tonic::include_proto!("trellis.demo.v1");
    }
}

/// `trellis.discovery.v1`.
pub mod discovery {
    /// Config push, version 1.
    pub mod v1 {
        #![allow(
            unreachable_pub,
            rust_2018_idioms,
            missing_docs,
            clippy::all,
            clippy::pedantic
        )]
        tonic::include_proto!("trellis.discovery.v1");
    }
}
