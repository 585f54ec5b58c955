//! The wire APIs between the proxies and the control plane (`trellis.discovery.v1` for config
//! push, the certificate-signing service for identity). The `.proto` files and their generated
//! tonic/prost code (compiled by protox, no protoc) land here with the control plane; this
//! crate holds no logic. Until then the proxy reads the same `trellis_model::ProxyConfig` from
//! a file.
