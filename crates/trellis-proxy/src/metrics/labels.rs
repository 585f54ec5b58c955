//! The label sets of the proxy's metrics, in Istio's shape: what names one series, how two
//! are compared and hashed cheaply per request, and how each label is written out.

use std::fmt;
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

/// The label value Istio uses for a peer attribute it cannot determine.
pub const UNKNOWN: &str = "unknown";

/// Labels of one HTTP or gRPC request, in Istio's shape.
///
/// Peer names are `Arc<str>` so that building one per request copies pointers, not strings;
/// use [`unknown()`] for a value the proxy cannot determine (e.g. principals on plaintext).
#[derive(Clone, Debug)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub request_protocol: RequestProtocol,
    /// The status sent downstream; 0 when no response was sent (downstream went away first).
    pub response_code: u16,
    /// The `grpc-status` of a gRPC response, rendered `-` when absent.
    pub grpc_response_status: Option<u16>,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Each request looks its series up twice (counter and histogram) in maps hashed with SipHash;
/// hashing all seven names in full was 3 % of a proxy's instructions. This hashes one word: a
/// cheap digest of the numbers and, for each name, its length and first and last eight bytes.
/// Equal labels give equal digests, so the maps stay correct; labels that differ only inside a
/// long name share a bucket and are told apart by `Eq` (a proxy has tens of series, not millions).
impl std::hash::Hash for RequestLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn name(digest: u64, s: &str) -> u64 {
            let b = s.as_bytes();
            // Whole-word loads where the name is long enough (no call to memcpy for a
            // variable-length copy); a shorter name is folded byte by byte.
            let (head, tail) = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
                (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
                _ => {
                    let short = b.iter().fold(0u64, |w, &x| w << 8 | u64::from(x));
                    (short, short)
                }
            };
            mix(mix(mix(digest, b.len() as u64), head), tail)
        }
        let mut d = mix(0, self.reporter as u64);
        for s in [
            &self.source_workload,
            &self.source_namespace,
            &self.source_principal,
            &self.destination_service,
            &self.destination_workload,
            &self.destination_namespace,
            &self.destination_principal,
        ] {
            d = name(d, s);
        }
        let numbers = u64::from(self.response_code)
            | u64::from(self.grpc_response_status.map_or(u16::MAX, |g| g)) << 16
            | (self.request_protocol as u64) << 32
            | (self.connection_security_policy as u64) << 40
            | (self.response_flags as u64) << 48;
        state.write_u64(mix(d, numbers));
    }
}

/// Equal when every label is. The names of one request are nearly always the very strings of
/// the series it is recorded in (the config's and the connection's), so each is first compared
/// by pointer: seven length-and-`memcmp` comparisons were 220 instructions a request.
impl PartialEq for RequestLabels {
    fn eq(&self, other: &Self) -> bool {
        fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        // Destructured, so that a label added later cannot be left out of the comparison.
        let RequestLabels {
            reporter,
            source_workload,
            source_namespace,
            source_principal,
            destination_service,
            destination_workload,
            destination_namespace,
            destination_principal,
            request_protocol,
            response_code,
            grpc_response_status,
            response_flags,
            connection_security_policy,
        } = self;
        *reporter == other.reporter
            && *response_code == other.response_code
            && *grpc_response_status == other.grpc_response_status
            && *request_protocol == other.request_protocol
            && *response_flags == other.response_flags
            && *connection_security_policy == other.connection_security_policy
            && same(source_workload, &other.source_workload)
            && same(source_namespace, &other.source_namespace)
            && same(source_principal, &other.source_principal)
            && same(destination_service, &other.destination_service)
            && same(destination_workload, &other.destination_workload)
            && same(destination_namespace, &other.destination_namespace)
            && same(destination_principal, &other.destination_principal)
    }
}

impl Eq for RequestLabels {}

/// One step of a multiplicative hash (FxHash's).
fn mix(digest: u64, word: u64) -> u64 {
    (digest.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

/// Labels of one TCP connection; exposed with `request_protocol="tcp"`.
///
/// Use the same labels for `tcp_opened`, `tcp_bytes` and `tcp_closed` of a connection, so that
/// opened minus closed counts the open connections of a series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Which proxy recorded the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side: the outbound proxy beside the caller (`source`).
    Source,
    /// The server side: the inbound proxy beside the callee (`destination`).
    Destination,
}

/// The protocol of a request (`request_protocol`); TCP connections are always `tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    Http,
    Grpc,
}

/// Whether the connection between the proxies was mutual TLS (`connection_security_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// `mutual_tls`
    MutualTls,
    /// `none`: plaintext.
    Plaintext,
    /// `unknown`: the reporter cannot tell (Istio reports this on the source side).
    Unknown,
}

/// Why the proxy, rather than the application, shaped a response: Envoy's response flags.
///
/// One flag per request or connection: the one that decided the outcome (when attempts failed
/// with `UF` and retries ran out, that is `URX`). `-` when the proxy did nothing unusual.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// `-`
    #[default]
    None,
    /// `UH`: no healthy endpoint for the destination.
    NoHealthyUpstream,
    /// `UF`: connecting to the endpoint failed.
    UpstreamConnectionFailure,
    /// `UO`: a connection or request limit (circuit breaker) was reached.
    UpstreamOverflow,
    /// `NR`: no route (or no service) for the request.
    NoRouteFound,
    /// `NC`: the route names a backend the proxy does not know.
    NoClusterFound,
    /// `URX`: the retry limit or retry budget was exhausted.
    UpstreamRetryLimitExceeded,
    /// `UT`: the route's request timeout fired.
    UpstreamRequestTimeout,
    /// `SI`: the stream was idle too long.
    StreamIdleTimeout,
    /// `DT`: the connection or request exceeded its maximum duration.
    DurationTimeout,
    /// `LR`: the proxy reset the stream or connection itself.
    LocalReset,
    /// `UR`: the endpoint reset the stream.
    UpstreamRemoteReset,
    /// `UC`: the endpoint closed the connection mid-request.
    UpstreamConnectionTermination,
    /// `DC`: the downstream client closed the connection mid-request.
    DownstreamConnectionTermination,
    /// `DPE`: the downstream request broke the protocol.
    DownstreamProtocolError,
    /// `UPE`: the endpoint's response broke the protocol.
    UpstreamProtocolError,
    /// `RBAC`: an authorization policy denied the request or connection. Trellis's own flag:
    /// Envoy's RBAC filters set none (the detail is in its `response_code_details`).
    AccessDenied,
    /// `FI`: the request was aborted by fault injection.
    FaultInjected,
    /// `DI`: the request was delayed by fault injection.
    DelayInjected,
}

/// What became of a request copy (route mirroring).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorResult {
    /// The shadow answered (whatever its status).
    Sent,
    /// No answer: the shadow could not be reached, or timed out.
    Failed,
    /// Not sent: too many copies in flight.
    Dropped,
    /// Not sent: the request body was too large to keep, or never ended.
    Skipped,
}

/// Labels of `trellis_mirror_requests_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct MirrorLabels {
    pub(super) destination_service: Arc<str>,
    pub(super) result: MirrorResult,
}

/// A shared `"unknown"` label value: cloning it bumps a refcount instead of allocating.
pub fn unknown() -> Arc<str> {
    static UNKNOWN_VALUE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(UNKNOWN));
    Arc::clone(&UNKNOWN_VALUE)
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("reporter", self.reporter).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_namespace", &*self.source_namespace).encode(encoder.encode_label())?;
        ("source_principal", &*self.source_principal).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("destination_workload", &*self.destination_workload).encode(encoder.encode_label())?;
        ("destination_namespace", &*self.destination_namespace).encode(encoder.encode_label())?;
        ("destination_principal", &*self.destination_principal).encode(encoder.encode_label())?;
        ("request_protocol", self.request_protocol).encode(encoder.encode_label())?;
        ("response_code", self.response_code).encode(encoder.encode_label())?;
        (
            "grpc_response_status",
            GrpcStatus(self.grpc_response_status),
        )
            .encode(encoder.encode_label())?;
        ("response_flags", self.response_flags).encode(encoder.encode_label())?;
        (
            "connection_security_policy",
            self.connection_security_policy,
        )
            .encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("reporter", self.reporter).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_namespace", &*self.source_namespace).encode(encoder.encode_label())?;
        ("source_principal", &*self.source_principal).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("destination_workload", &*self.destination_workload).encode(encoder.encode_label())?;
        ("destination_namespace", &*self.destination_namespace).encode(encoder.encode_label())?;
        ("destination_principal", &*self.destination_principal).encode(encoder.encode_label())?;
        ("request_protocol", "tcp").encode(encoder.encode_label())?;
        ("response_flags", self.response_flags).encode(encoder.encode_label())?;
        (
            "connection_security_policy",
            self.connection_security_policy,
        )
            .encode(encoder.encode_label())
    }
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

impl RequestProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        }
    }
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Plaintext => "none",
            SecurityPolicy::Unknown => "unknown",
        }
    }
}

impl EncodeLabelSet for MirrorLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("result", self.result).encode(encoder.encode_label())
    }
}

impl MirrorResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorResult::Sent => "sent",
            MirrorResult::Failed => "failed",
            MirrorResult::Dropped => "dropped",
            MirrorResult::Skipped => "skipped",
        }
    }
}

impl ResponseFlags {
    /// Envoy's short name: `UF`, `URX`, … or `-` for none.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::NoHealthyUpstream => "UH",
            ResponseFlags::UpstreamConnectionFailure => "UF",
            ResponseFlags::UpstreamOverflow => "UO",
            ResponseFlags::NoRouteFound => "NR",
            ResponseFlags::NoClusterFound => "NC",
            ResponseFlags::UpstreamRetryLimitExceeded => "URX",
            ResponseFlags::UpstreamRequestTimeout => "UT",
            ResponseFlags::StreamIdleTimeout => "SI",
            ResponseFlags::DurationTimeout => "DT",
            ResponseFlags::LocalReset => "LR",
            ResponseFlags::UpstreamRemoteReset => "UR",
            ResponseFlags::UpstreamConnectionTermination => "UC",
            ResponseFlags::DownstreamConnectionTermination => "DC",
            ResponseFlags::DownstreamProtocolError => "DPE",
            ResponseFlags::UpstreamProtocolError => "UPE",
            ResponseFlags::AccessDenied => "RBAC",
            ResponseFlags::FaultInjected => "FI",
            ResponseFlags::DelayInjected => "DI",
        }
    }
}

/// Display and label encoding through `as_str`, for the small enums above.
macro_rules! label_value_via_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}

label_value_via_as_str!(
    Reporter,
    RequestProtocol,
    SecurityPolicy,
    ResponseFlags,
    MirrorResult
);

/// `grpc_response_status`: the code, or `-` for a response without one.
struct GrpcStatus(Option<u16>);

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        match self.0 {
            Some(code) => EncodeLabelValue::encode(&code, encoder),
            None => EncodeLabelValue::encode(&"-", encoder),
        }
    }
}
