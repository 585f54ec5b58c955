//! Helpers for Trellis's end-to-end tests: real processes, real sockets, real clients.
//!
//! The pieces, bottom up:
//! - [`TestDir`]: a private temporary directory, removed on drop (kept when the test fails).
//! - [`Process`]: a child whose stdout and stderr are captured line by line while it runs,
//!   killed on drop; [`run`] for short commands with a deadline.
//! - [`Trellis`], [`ProxyProcess`], [`DemoApp`]: the binary under test and the processes it
//!   runs, each started with `--ready-file` and waited for with a deadline.
//! - [`Chain`]: the usual topology, client → proxy A → proxy B → app.
//! - [`NetNs`]: a private network namespace with its own iptables (root only), for
//!   transparent capture; [`Node`] and [`Pod`]: pods on a bridge, each with its app, its
//!   sidecar under its own uid and `trellis iptables apply`; [`PacketCapture`]: tcpdump on
//!   their link, read back packet by packet.
//! - Peers: [`PyPeer`] (the Python gRPC/WebSocket peers), [`TlsServer`] (`openssl s_server`),
//!   [`HeldUpstream`] (an HTTP/1.1 upstream that holds each request for a while).
//! - Clients: [`Curl`], [`RawConn`] (scripted bytes), [`client`] (hyper, for streamed bodies).
//! - [`Metrics`]: a Prometheus text parser; [`require_tool`]: skip (or fail under `CI=true`).
//!
//! Nothing here sleeps for a fixed time: every wait polls a condition up to a deadline.

pub mod chain;
pub mod client;
pub mod control;
pub mod curl;
pub mod demo;
pub mod dir;
pub mod discovery;
pub mod metrics;
pub mod netns;
pub mod pcap;
pub mod peer;
pub mod pods;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod tools;
pub mod upstream;
pub mod wait;

pub use chain::{Chain, ChainBuilder, NAMESPACE, ServiceSpec, Target};
pub use control::ControlProcess;
pub use curl::{Curl, CurlOutput};
pub use demo::{DemoApp, DemoOptions};
pub use dir::TestDir;
pub use metrics::{Metrics, Sample};
pub use netns::NetNs;
pub use pcap::{Packet, PacketCapture, TlsSummary, Transport};
pub use peer::{PyPeer, TlsServer, repo_root, run_python};
pub use pods::{Node, PROXY_GID, PROXY_UID, Pod};
pub use process::{CommandOutput, Process, run, run_with_input, thp_enabled};
pub use proxy::{ProxyAddrs, ProxyProcess, Trellis};
pub use raw::{Closed, RawConn, RawResponse, http_request};
pub use tools::{free_port, require_python_module, require_tool};
pub use upstream::HeldUpstream;
pub use wait::wait_until;
