//! The Trellis control plane: sources (a config directory, later Kubernetes) → model →
//! per-proxy compile → push over `trellis.discovery.v1`, and the CA. Built in the control-plane
//! issue; the compiled per-proxy shape it will produce is `trellis_model::ProxyConfig`, which
//! `trellis proxy --config` already serves.
