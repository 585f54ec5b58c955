//! Config from the control plane (`trellis.discovery.v1`), when the bootstrap names one
//! (`control:`): the file the proxy started with then only says who the proxy is, where it
//! listens, where its certificate comes from and where the control plane is; everything else
//! arrives here.
//!
//! - One stream at a time, over mutual TLS: the proxy presents its workload certificate and
//!   checks that the control plane is `spiffe://<td>/ns/trellis-system/sa/trellis-control`.
//!   The first message is a Hello with the node's name and namespace.
//! - Each Config is parsed and validated by the same code as a config file
//!   ([`ProxyConfig::from_yaml`]: JSON is YAML), then merged ([`merge`]): `app`, `services`,
//!   `mtls`, `outbound_policy` and `timeouts` come from the push; `node`, `listeners`,
//!   `identity` and `control` stay the bootstrap's, and a push that would change them is
//!   refused (they are bound or in use: restart the proxy to change them). A good config is
//!   swapped in ([`State::store`]) and ACKed; a bad one is NACKed with every reason and the
//!   config in force stays.
//! - When the stream ends or cannot be opened, the proxy retries with jittered exponential
//!   backoff (200 ms to 30 s) and keeps serving with its last good config meanwhile.
//! - Timeouts from a push apply to new connections and requests; `timeouts.drain` and the
//!   connect timeout towards the local app are read once at start, from the bootstrap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;
use trellis_api::discovery::v1::{
    Ack, Config, ControlMessage, Delta, Hello, Nack, ProxyMessage, control_message, proxy_message,
};
use trellis_identity::{Credentials, SpiffeId, client_config};
use trellis_model::{ConfigErrors, ProxyConfig};
use trellis_runtime::DrainWatcher;

use crate::backoff::Backoff;
use crate::grpc::{self, ChannelOptions};
use crate::state::State;

/// HTTP/2 PINGs on the stream this often: a control plane that vanished without closing the
/// connection is noticed within two of them.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The largest Config accepted off the wire. The validator refuses more than 4 MiB with a
/// NACK; a message beyond this fails the stream instead.
const MAX_MESSAGE: usize = 16 << 20;

/// The discovery client of one proxy.
#[derive(Debug)]
pub(crate) struct Discovery {
    /// The control plane's gRPC address.
    pub(crate) control: SocketAddr,
    /// The identity the control plane must prove.
    pub(crate) control_id: SpiffeId,
    /// Our certificate (renewed elsewhere; each connection presents the current one).
    pub(crate) creds: Arc<Credentials>,
    /// The file the proxy started with.
    pub(crate) bootstrap: Arc<ProxyConfig>,
    pub(crate) state: Arc<State>,
    /// Our admin address, told to the control plane for `trellis proxy-config NAME`.
    pub(crate) admin: SocketAddr,
    /// The version in force, once one is (the admin `/config_dump` shows it too).
    pub(crate) applied: watch::Sender<Option<u64>>,
}

/// Why a stream to the control plane ended or could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("cannot build the TLS config for the control plane: {0}")]
    Tls(#[from] trellis_identity::CertError),
    #[error(
        "cannot reach the control plane at {control}: {reason} (is `trellis control` running there?)"
    )]
    Unreachable { control: SocketAddr, reason: String },
    #[error("the control plane at {control} refused the stream: {message} ({code:?})")]
    Refused {
        control: SocketAddr,
        code: tonic::Code,
        message: String,
    },
    #[error("the stream to the control plane at {control} failed: {message} ({code:?})")]
    Broken {
        control: SocketAddr,
        code: tonic::Code,
        message: String,
    },
    #[error("the control plane at {control} closed the stream")]
    Closed { control: SocketAddr },
}

/// Why a pushed config is refused (the NACK's reason).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("config_json is not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    #[error("config_json is not a JSON object: {0}")]
    NotJson(String),
    #[error("invalid config:\n{0}")]
    Invalid(ConfigErrors),
    #[error("the config is for node {pushed}, but this proxy is {ours}")]
    WrongNode { pushed: String, ours: String },
    #[error("a delta on v{base}, but the config in force is {}", in_force.map_or("none".to_owned(), |v| format!("v{v}")))]
    DeltaBase { base: u64, in_force: Option<u64> },
    #[error("the routes cannot be used: {0}")]
    Routes(crate::route::RouteError),
    #[error(
        "{section} cannot change while the proxy runs: restart the proxy to change {section} \
         (running: {ours}; pushed: {pushed})"
    )]
    Fixed {
        section: &'static str,
        ours: String,
        pushed: String,
    },
}

/// What a good push does.
#[derive(Debug, PartialEq)]
pub(crate) enum Merged {
    /// A config that differs from the one in force.
    Changed(Box<ProxyConfig>),
    /// The config in force already (a reconnect resends it).
    Unchanged,
}

impl Discovery {
    /// Streams configs from the control plane until drain, reconnecting with backoff.
    pub(crate) async fn run(self, drain: DrainWatcher) {
        let mut backoff = Backoff::default();
        loop {
            let mut configs = 0usize;
            let ended = tokio::select! {
                _ = drain.signaled() => return,
                ended = self.stream(&mut configs) => ended,
            };
            if configs > 0 {
                backoff.reset();
            }
            let retry_in = backoff.next();
            let ready = self.applied.borrow().is_some();
            if ready {
                tracing::warn!(error = %ended, ?retry_in, applied_version = ?*self.applied.borrow(), "no control plane stream; serving with the last good config");
            } else {
                tracing::warn!(error = %ended, ?retry_in, "no config from the control plane yet; not ready");
            }
            tokio::select! {
                _ = drain.signaled() => return,
                _ = tokio::time::sleep(retry_in) => {}
            }
        }
    }

    /// One stream: connect, Hello, then apply and answer every Config. Counts the configs
    /// received in `configs`.
    async fn stream(&self, configs: &mut usize) -> StreamError {
        let control = self.control;
        let tls = match client_config(&self.creds, &self.control_id) {
            Ok(tls) => tls,
            Err(error) => return error.into(),
        };
        let options = ChannelOptions {
            request_timeout: None,
            keepalive: Some(KEEPALIVE),
        };
        let channel = match grpc::connect(control, tls, options).await {
            Ok(channel) => channel,
            Err(reason) => return StreamError::Unreachable { control, reason },
        };

        let (tx, mut rx) = mpsc::channel::<ProxyMessage>(4);
        let hello = Hello {
            node_name: self.bootstrap.node.name.clone(),
            namespace: self.bootstrap.node.namespace.clone(),
            applied_version: self.applied.borrow().unwrap_or(0),
            admin_addr: self.admin.to_string(),
        };
        // The channel has room: the Hello goes out with the request.
        let _ = tx.try_send(message(proxy_message::Message::Hello(hello)));
        let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let mut inbound = match client.stream(outbound).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let (code, message) = (status.code(), status.message().to_owned());
                return if code == tonic::Code::Unavailable {
                    StreamError::Unreachable {
                        control,
                        reason: message,
                    }
                } else {
                    StreamError::Refused {
                        control,
                        code,
                        message,
                    }
                };
            }
        };
        tracing::info!(%control, "connected to the control plane");

        loop {
            let config = match inbound.message().await {
                Ok(Some(ControlMessage {
                    message: Some(control_message::Message::Config(config)),
                })) => config,
                Ok(Some(_)) => {
                    tracing::debug!("an empty message from the control plane is ignored");
                    continue;
                }
                Ok(None) => return StreamError::Closed { control },
                Err(status) => {
                    return StreamError::Broken {
                        control,
                        code: status.code(),
                        message: status.message().to_owned(),
                    };
                }
            };
            *configs += 1;
            let answer = self.apply(config);
            if tx.send(answer).await.is_err() {
                return StreamError::Closed { control };
            }
        }
    }

    /// Applies one Config (or refuses it) and returns the answer to send.
    fn apply(&self, config: Config) -> ProxyMessage {
        let Config {
            version,
            nonce,
            config_json,
            delta,
        } = config;
        let current = self.state.load().config.clone();
        let in_force = *self.applied.borrow();
        let merged = match delta {
            None => merge(&self.bootstrap, &current, version, &config_json),
            Some(delta) => with_delta(&current, in_force, delta)
                .and_then(|json| merge(&self.bootstrap, &current, version, &json)),
        };
        match merged {
            Ok(Merged::Changed(config)) => {
                let services = config.services.len();
                if let Err(error) = self.state.store(*config, Some(version)) {
                    let reason = Refusal::Routes(error).to_string();
                    tracing::warn!(version, %reason, "config from the control plane refused (NACK); the config in force stays");
                    return message(proxy_message::Message::Nack(Nack {
                        version,
                        nonce,
                        reason,
                    }));
                }
                tracing::info!(version, services, "config from the control plane applied");
                self.applied.send_replace(Some(version));
                message(proxy_message::Message::Ack(Ack { version, nonce }))
            }
            Ok(Merged::Unchanged) => {
                tracing::debug!(version, "config from the control plane unchanged");
                // The same config, now under this version (for /config_dump).
                if let Err(error) = self.state.store((*current).clone(), Some(version)) {
                    tracing::warn!(version, %error, "cannot record the version of an unchanged config");
                }
                self.applied.send_replace(Some(version));
                message(proxy_message::Message::Ack(Ack { version, nonce }))
            }
            Err(refusal) => {
                let reason = refusal.to_string();
                tracing::warn!(version, %reason, "config from the control plane refused (NACK); the config in force stays");
                message(proxy_message::Message::Nack(Nack {
                    version,
                    nonce,
                    reason,
                }))
            }
        }
    }
}

/// The config in force with a delta's Services applied, as JSON (then validated and merged
/// like a whole config). Services stay sorted by namespace and name, as the control plane
/// compiles them.
pub(crate) fn with_delta(
    current: &ProxyConfig,
    in_force: Option<u64>,
    delta: Delta,
) -> Result<Vec<u8>, Refusal> {
    if in_force != Some(delta.base_version) {
        return Err(Refusal::DeltaBase {
            base: delta.base_version,
            in_force,
        });
    }
    trellis_model::apply_services_delta(current, &delta.services_json, &delta.removed_services)
        .map_err(|e| Refusal::NotJson(e.to_string()))
}

/// Validates a pushed config and merges it with the bootstrap: the push's `app`, `services`,
/// `mtls`, `outbound_policy` and `timeouts`, the bootstrap's `node`, `listeners`, `identity`
/// and `control`. `current` is the config in force.
///
/// The sections the proxy owns may be left out of the push; they are then added from the
/// bootstrap before validation (so that, say, `mtls: strict` sees the identity), appended at
/// the end of the document so that every line and column in an error is the push's own.
pub(crate) fn merge(
    bootstrap: &ProxyConfig,
    current: &ProxyConfig,
    version: u64,
    json: &[u8],
) -> Result<Merged, Refusal> {
    let text = std::str::from_utf8(json).map_err(Refusal::NotUtf8)?;
    let object: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| Refusal::NotJson(e.to_string()))?;
    let mut owned = Vec::new();
    for (section, value) in [
        ("listeners", serde_json::to_value(&bootstrap.listeners)),
        ("identity", serde_json::to_value(&bootstrap.identity)),
        ("control", serde_json::to_value(bootstrap.control)),
    ] {
        if !object.contains_key(section) {
            let value = value.map_err(|e| Refusal::NotJson(e.to_string()))?;
            owned.push(format!("{}:{value}", Value::from(section)));
        }
    }
    let document = if owned.is_empty() {
        text.to_owned()
    } else {
        // A JSON object ends with `}` (and perhaps whitespace): insert before it.
        let body = text.trim_end();
        let open = body.strip_suffix('}').unwrap_or(body);
        let comma = if object.is_empty() { "" } else { "," };
        format!("{open}{comma}{}}}", owned.join(","))
    };
    let name = format!("control plane push v{version}");
    let pushed = ProxyConfig::from_yaml(&name, &document).map_err(Refusal::Invalid)?;

    let ours = &bootstrap.node;
    let same_workload = pushed.node.workload.is_none() || pushed.workload() == bootstrap.workload();
    if pushed.node.name != ours.name || pushed.node.namespace != ours.namespace || !same_workload {
        return Err(Refusal::WrongNode {
            pushed: describe_node(&pushed),
            ours: describe_node(bootstrap),
        });
    }
    if pushed.listeners != bootstrap.listeners {
        return Err(fixed("listeners", &bootstrap.listeners, &pushed.listeners));
    }
    if pushed.identity.is_some() && pushed.identity != bootstrap.identity {
        return Err(fixed("identity", &bootstrap.identity, &pushed.identity));
    }
    if pushed.control.is_some() && pushed.control != bootstrap.control {
        return Err(fixed("control", &bootstrap.control, &pushed.control));
    }
    let merged = ProxyConfig {
        node: bootstrap.node.clone(),
        listeners: bootstrap.listeners.clone(),
        identity: bootstrap.identity.clone(),
        control: bootstrap.control,
        ..pushed
    };
    if merged == *current {
        Ok(Merged::Unchanged)
    } else {
        Ok(Merged::Changed(Box::new(merged)))
    }
}

fn fixed<T: serde::Serialize>(section: &'static str, ours: &T, pushed: &T) -> Refusal {
    let json = |v: &T| serde_json::to_string(v).unwrap_or_else(|_| "?".to_owned());
    Refusal::Fixed {
        section,
        ours: json(ours),
        pushed: json(pushed),
    }
}

fn describe_node(config: &ProxyConfig) -> String {
    format!(
        "{}.{} (workload {})",
        config.node.name,
        config.node.namespace,
        config.workload()
    )
}

fn message(message: proxy_message::Message) -> ProxyMessage {
    ProxyMessage {
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTSTRAP: &str = "node: { name: web-0, namespace: test, workload: web }
listeners: { admin: 127.0.0.1:0, mesh: 127.0.0.1:0 }
identity:
  id: spiffe://cluster.local/ns/test/sa/web
  bundle: /etc/trellis/root-cert.pem
  ca: 127.0.0.1:15010
  join_token_file: /etc/trellis/token
control: 127.0.0.1:15010
";

    fn bootstrap() -> ProxyConfig {
        ProxyConfig::from_yaml("bootstrap", BOOTSTRAP).unwrap()
    }

    /// A push as the control plane sends it: the config's JSON without the proxy's sections
    /// when they say nothing.
    fn push(yaml: &str) -> Vec<u8> {
        let config = ProxyConfig::from_yaml("push", yaml).unwrap();
        let mut value = serde_json::to_value(&config).unwrap();
        let object = value.as_object_mut().unwrap();
        if config.listeners == trellis_model::Listeners::default() {
            object.remove("listeners");
        }
        object.retain(|_, v| !v.is_null());
        serde_json::to_vec(&value).unwrap()
    }

    /// Strict mTLS, valid only with the bootstrap's identity added.
    const SERVICES: &[u8] = br#"{"node":{"name":"web-0","namespace":"test"},"mtls":"strict",
"services":[{"name":"db","namespace":"test","ports":[{"name":"tcp","port":5432,"protocol":"tcp"}]}],
"timeouts":{"request":"3s"}}"#;

    fn changed(result: Result<Merged, Refusal>) -> ProxyConfig {
        match result {
            Ok(Merged::Changed(config)) => *config,
            other => panic!("expected a changed config, got {other:?}"),
        }
    }

    #[test]
    fn a_push_brings_services_and_policy_and_keeps_the_bootstrap_sections() {
        let boot = bootstrap();
        let merged = changed(merge(&boot, &boot, 1, SERVICES));
        assert_eq!(merged.services.len(), 1);
        assert_eq!(merged.services[0].name, "db");
        assert_eq!(merged.mtls, trellis_model::MtlsMode::Strict);
        assert_eq!(merged.timeouts.request, Duration::from_secs(3));
        assert_eq!(merged.node, boot.node);
        assert_eq!(merged.listeners, boot.listeners);
        assert_eq!(merged.identity, boot.identity);
        assert_eq!(merged.control, boot.control);
        // The same push again changes nothing.
        assert_eq!(
            merge(&boot, &merged, 2, SERVICES).unwrap(),
            Merged::Unchanged
        );
    }

    #[test]
    fn a_push_that_repeats_the_bootstrap_sections_exactly_is_accepted() {
        let boot = bootstrap();
        let mut full = serde_json::to_value(&boot).unwrap();
        full["outbound_policy"] = Value::from("registry_only");
        let merged = changed(merge(&boot, &boot, 1, &serde_json::to_vec(&full).unwrap()));
        assert_eq!(
            merged.outbound_policy,
            trellis_model::OutboundPolicy::RegistryOnly
        );
    }

    #[test]
    fn a_push_that_changes_listeners_identity_or_control_is_refused() {
        let boot = bootstrap();
        let cases = [
            (
                "listeners",
                "listeners: { admin: 127.0.0.1:15000, mesh: 127.0.0.1:0 }",
            ),
            (
                "identity",
                "identity: { id: spiffe://cluster.local/ns/test/sa/other, bundle: /b.pem, cert: /c.pem, key: /k.pem }",
            ),
            (
                "control",
                "control: 127.0.0.1:9999\nidentity: { id: spiffe://cluster.local/ns/test/sa/web, bundle: /etc/trellis/root-cert.pem, ca: 127.0.0.1:15010, join_token_file: /etc/trellis/token }",
            ),
        ];
        for (section, yaml) in cases {
            let text = format!("node: {{ name: web-0, namespace: test }}\n{yaml}\n");
            let refusal = merge(&boot, &boot, 4, &push(&text)).unwrap_err();
            let reason = refusal.to_string();
            assert!(
                matches!(&refusal, Refusal::Fixed { section: s, .. } if *s == section),
                "{section}: {reason}"
            );
            assert!(
                reason.contains(&format!("restart the proxy to change {section}")),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_push_for_another_node_is_refused() {
        let boot = bootstrap();
        for node in [
            "node: { name: web-1, namespace: test }",
            "node: { name: web-0, namespace: prod }",
            "node: { name: web-0, namespace: test, workload: api }",
        ] {
            let refusal = merge(&boot, &boot, 1, &push(node)).unwrap_err();
            assert!(matches!(refusal, Refusal::WrongNode { .. }), "{refusal}");
        }
        // Naming the same workload is fine.
        let same = "node: { name: web-0, namespace: test, workload: web }\nmtls: disable";
        changed(merge(&boot, &boot, 1, &push(same)));
    }

    #[test]
    fn an_invalid_push_is_refused_with_every_error_at_its_place_in_the_push() {
        let boot = bootstrap();
        let json = br#"{"node":{"name":"web-0","namespace":"test"},
"services":[{"name":"db","ports":[{"name":"tcp","port":0,"protocol":"smtp"}]}],
"timeouts":{"request":"soon"}}"#;
        let refusal = merge(&boot, &boot, 7, json).unwrap_err();
        let reason = refusal.to_string();
        let Refusal::Invalid(errors) = &refusal else {
            panic!("{reason}")
        };
        assert_eq!(errors.0.len(), 3, "{reason}");
        assert!(reason.contains("control plane push v7:2:"), "{reason}");
        assert!(reason.contains("control plane push v7:3:"), "{reason}");
        assert!(reason.contains("services[0].ports[0].protocol"), "{reason}");
        assert!(reason.contains("timeouts.request"), "{reason}");
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        let boot = bootstrap();
        for json in [
            &b"\xff\xfe"[..],
            b"[1, 2]",
            b"{\"node\": ",
            b"node: { name: web-0 }",
        ] {
            let refusal = merge(&boot, &boot, 1, json).unwrap_err();
            assert!(
                matches!(refusal, Refusal::NotUtf8(_) | Refusal::NotJson(_)),
                "{refusal}"
            );
        }
    }

    #[test]
    fn a_delta_applies_to_the_config_in_force_and_only_to_it() {
        let boot = bootstrap();
        let first = "node: { name: web-0, namespace: test }
services:
  - { name: a, namespace: test, ports: [ { name: http, port: 80, protocol: http } ] }
  - { name: c, namespace: test, ports: [ { name: http, port: 80, protocol: http } ] }
";
        let current = match merge(&boot, &boot, 1, &push(first)).unwrap() {
            Merged::Changed(config) => *config,
            Merged::Unchanged => panic!("a change"),
        };
        let delta = |base: u64| {
            Delta {
            base_version: base,
            services_json: vec![
                br#"{"name":"b","namespace":"test","ports":[{"name":"tcp","port":7,"protocol":"tcp"}]}"#.to_vec(),
                br#"{"name":"c","namespace":"test","ports":[{"name":"http","port":81,"protocol":"http"}]}"#.to_vec(),
            ],
            removed_services: vec!["test/a".into()],
        }
        };
        let json = with_delta(&current, Some(1), delta(1)).unwrap();
        let next = match merge(&boot, &current, 2, &json).unwrap() {
            Merged::Changed(config) => *config,
            Merged::Unchanged => panic!("a change"),
        };
        let names: Vec<&str> = next.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(next.services[1].ports[0].port, 81);
        assert_eq!(next.listeners, boot.listeners);

        let wrong = with_delta(&current, Some(1), delta(3))
            .unwrap_err()
            .to_string();
        assert_eq!(wrong, "a delta on v3, but the config in force is v1");
        let none = with_delta(&current, None, delta(1))
            .unwrap_err()
            .to_string();
        assert!(none.ends_with("the config in force is none"), "{none}");
    }
}
