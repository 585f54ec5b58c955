//! The discovery service inside one process: a real control plane (`app::build`) on 127.0.0.1:0
//! over TLS, and real tonic streams from clients that present workload certificates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Streaming;
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;
use trellis_identity::{
    CertificateAuthority, Credentials, Existing, TrustBundle, WorkloadCert,
    bootstrap_client_config, client_config,
};
use trellis_model::ProxyConfig;
use trellis_runtime::{LogHandle, ShutdownKind};

use super::*;
use crate::app::{self, Bound};
use crate::ca::tests::channel;
use crate::push::Version;

const WAIT: Duration = Duration::from_secs(10);

struct Plane {
    dir: PathBuf,
    bound: Option<Bound>,
    ca: CertificateAuthority,
    bundle: TrustBundle,
}

/// One proxy's end of a stream.
struct Proxy {
    tx: mpsc::Sender<ProxyMessage>,
    rx: Streaming<ControlMessage>,
}

impl Plane {
    async fn start(label: &str) -> Plane {
        let dir = std::env::temp_dir().join(format!(
            "trellis-control-discovery-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        CertificateAuthority::init(&dir, "cluster.local", Existing::Refuse).unwrap();
        let mut config = app::Config::new(&dir);
        config.listen.grpc = "127.0.0.1:0".parse().unwrap();
        config.listen.admin = "127.0.0.1:0".parse().unwrap();
        let bound = app::build(config, LogHandle::disabled()).await.unwrap();
        let ca = CertificateAuthority::load(&dir).unwrap();
        let bundle = ca.bundle().clone();
        Plane {
            dir,
            bound: Some(bound),
            ca,
            bundle,
        }
    }

    fn bound(&self) -> &Bound {
        self.bound.as_ref().unwrap()
    }

    /// A stream presenting a certificate for `sa` in namespace `ns` (or none), saying Hello
    /// as `node` in `hello_ns`.
    async fn open(
        &self,
        cert: Option<(&str, &str)>,
        node: &str,
        hello_ns: &str,
    ) -> Result<Proxy, Status> {
        let control = self.bound().identity.clone();
        let tls = match cert {
            Some((ns, sa)) => {
                let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
                let (key, issued) = self.ca.issue(&id, Duration::from_secs(3600)).unwrap();
                let cert = WorkloadCert::new(&key, issued.chain_pem.as_bytes()).unwrap();
                client_config(&Credentials::new(cert, self.bundle.clone()), &control).unwrap()
            }
            None => bootstrap_client_config(self.bundle.clone(), &control).unwrap(),
        };
        let channel = channel(self.bound().addrs.grpc, tls)
            .await
            .map_err(|e| Status::unavailable(format!("{e:?}")))?;
        let (tx, mut out) = mpsc::channel(4);
        tx.send(hello(node, hello_ns)).await.unwrap();
        let outbound = futures_util::stream::poll_fn(move |cx| out.poll_recv(cx));
        let rx = DiscoveryClient::new(channel)
            .stream(outbound)
            .await?
            .into_inner();
        Ok(Proxy { tx, rx })
    }

    fn set(&self, configs: &[(&str, &str)]) -> Version {
        let configs: HashMap<NodeKey, ProxyConfig> = configs
            .iter()
            .map(|(name, yaml)| {
                let text = format!("node: {{ name: {name}, namespace: test }}\n{yaml}");
                (
                    NodeKey::new("test", *name),
                    ProxyConfig::from_yaml("test", &text).unwrap(),
                )
            })
            .collect();
        self.bound().store.set(configs)
    }

    async fn admin_get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(self.bound().addrs.admin).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text.split_once("\r\n\r\n").unwrap().1.to_owned()
    }

    /// `/debug/proxies` once `ready` holds for it (or after [`WAIT`], for the assertion).
    async fn proxies_when(&self, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let json: serde_json::Value =
                serde_json::from_str(&self.admin_get("/debug/proxies").await).unwrap();
            if ready(&json) || tokio::time::Instant::now() > deadline {
                return json;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(bound) = self.bound.take() {
            let outcome = bound
                .shutdown(ShutdownKind::Drain, Duration::from_secs(5))
                .await;
            assert!(outcome.is_complete(), "{outcome:?}");
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proxy {
    async fn config(&mut self) -> Config {
        let message = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a config in time")
            .expect("an open stream")
            .expect("a message");
        match message.message {
            Some(control_message::Message::Config(config)) => config,
            None => panic!("an empty message"),
        }
    }

    async fn answer(&self, message: proxy_message::Message) {
        let message = ProxyMessage {
            message: Some(message),
        };
        self.tx.send(message).await.unwrap();
    }
}

fn hello(node: &str, namespace: &str) -> ProxyMessage {
    ProxyMessage {
        message: Some(proxy_message::Message::Hello(Hello {
            node_name: node.to_owned(),
            namespace: namespace.to_owned(),
            applied_version: 0,
            admin_addr: "127.0.0.1:15000".to_owned(),
        })),
    }
}

fn row<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["proxies"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn a_proxy_gets_its_config_when_it_changes_and_its_answers_are_recorded() {
    let plane = Plane::start("flow").await;
    let mut web = plane
        .open(Some(("test", "web")), "web-0", "test")
        .await
        .unwrap();

    // No config for it yet: it waits.
    let json = plane
        .proxies_when(|j| row(j, "web-0")["state"] == "waiting")
        .await;
    let web_row = row(&json, "web-0");
    assert_eq!(web_row["state"], "waiting", "{json}");
    assert_eq!(web_row["identity"], "spiffe://cluster.local/ns/test/sa/web");
    assert_eq!(web_row["admin"], "127.0.0.1:15000");

    // Its config arrives; the other proxy's config is not sent to it.
    let v1 = plane.set(&[("web-0", "timeouts: { request: 2s }"), ("api-0", "")]);
    let config = web.config().await;
    assert_eq!(config.version, v1.0);
    let pushed =
        ProxyConfig::from_yaml("push", std::str::from_utf8(&config.config_json).unwrap()).unwrap();
    assert_eq!(pushed.node.name, "web-0");
    assert_eq!(pushed.timeouts.request, Duration::from_secs(2));

    // A stale ACK counts for nothing; the right one makes it synced.
    web.answer(proxy_message::Message::Ack(Ack {
        version: v1.0,
        nonce: "not-the-nonce".into(),
    }))
    .await;
    web.answer(proxy_message::Message::Ack(Ack {
        version: v1.0,
        nonce: config.nonce.clone(),
    }))
    .await;
    let json = plane
        .proxies_when(|j| row(j, "web-0")["state"] == "synced")
        .await;
    let web_row = row(&json, "web-0");
    assert_eq!(web_row["state"], "synced", "{json}");
    assert_eq!(web_row["acked_version"], v1.0);
    assert!(web_row["last_push_latency_ms"].as_f64().is_some(), "{json}");
    assert_eq!(row(&json, "api-0")["state"], "never connected", "{json}");

    // A generation that leaves its config as it was sends nothing; the next change does.
    plane.set(&[("web-0", "timeouts: { request: 2s }")]);
    let v3 = plane.set(&[("web-0", "timeouts: { request: 5s }")]);
    let config = web.config().await;
    assert_eq!(config.version, v3.0, "only the changed config is sent");
    web.answer(proxy_message::Message::Nack(Nack {
        version: v3.0,
        nonce: config.nonce.clone(),
        reason: "restart the proxy to change listeners".into(),
    }))
    .await;
    let json = plane
        .proxies_when(|j| !row(j, "web-0")["last_nack"].is_null())
        .await;
    let web_row = row(&json, "web-0");
    assert_eq!(web_row["state"], "stale", "{json}");
    assert_eq!(web_row["acked_version"], v1.0);
    assert_eq!(web_row["last_nack"]["version"], v3.0);
    assert_eq!(
        web_row["last_nack"]["reason"],
        "restart the proxy to change listeners"
    );

    let metrics = plane.admin_get("/metrics").await;
    for line in [
        "trellis_discovery_pushes_total{kind=\"full\"} 2",
        "trellis_discovery_nacks_total 1",
        "trellis_discovery_connected_proxies 1",
        "trellis_discovery_push_latency_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // The proxy goes away: disconnected, and the gauge says so.
    drop(web);
    let json = plane
        .proxies_when(|j| row(j, "web-0")["connected"] == false)
        .await;
    assert_eq!(row(&json, "web-0")["state"], "disconnected", "{json}");
    plane.stop().await;
}

#[tokio::test]
async fn a_stream_without_a_certificate_or_from_another_namespace_is_refused() {
    let plane = Plane::start("refused").await;
    let status = plane.open(None, "web-0", "test").await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("no client certificate"),
        "{status:?}"
    );

    let status = plane
        .open(Some(("test", "web")), "web-0", "prod")
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("Hello says namespace \"prod\", but the certificate is for spiffe://cluster.local/ns/test/sa/web"),
        "{status:?}"
    );
    plane.stop().await;
}

#[tokio::test]
async fn streams_end_at_drain_so_that_shutdown_does_not_wait_for_them() {
    let plane = Plane::start("drain").await;
    let mut web = plane
        .open(Some(("test", "web")), "web-0", "test")
        .await
        .unwrap();
    plane.set(&[("web-0", "")]);
    web.config().await;
    let bound = {
        let mut plane = plane;
        plane.bound.take().unwrap()
    };
    let started = tokio::time::Instant::now();
    let outcome = bound
        .shutdown(ShutdownKind::Drain, Duration::from_secs(5))
        .await;
    assert!(outcome.is_complete(), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The proxy sees its stream end.
    let end = tokio::time::timeout(WAIT, web.rx.message()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn a_change_to_services_alone_goes_as_a_delta_and_whole_again_if_refused() {
    let plane = Plane::start("delta").await;
    let mut web = plane
        .open(Some(("test", "web")), "web-0", "test")
        .await
        .unwrap();
    let svc = |port: u16| {
        format!(
            "services:
  - {{ name: a, namespace: test, ports: [ {{ name: http, port: 80, protocol: http }} ] }}
  - {{ name: b, namespace: test, ports: [ {{ name: http, port: {port}, protocol: http }} ] }}
"
        )
    };
    let v1 = plane.set(&[("web-0", &svc(81))]);
    let first = web.config().await;
    assert!(first.delta.is_none(), "the first config goes whole");
    web.answer(proxy_message::Message::Ack(Ack {
        version: v1.0,
        nonce: first.nonce.clone(),
    }))
    .await;
    plane
        .proxies_when(|j| row(j, "web-0")["state"] == "synced")
        .await;

    // Only `b` changed: a delta on v1 with `b` alone.
    let v2 = plane.set(&[("web-0", &svc(82))]);
    let second = web.config().await;
    assert_eq!(second.version, v2.0);
    assert!(second.config_json.is_empty());
    let delta = second.delta.clone().expect("a delta");
    assert_eq!(delta.base_version, v1.0);
    assert_eq!(delta.services_json.len(), 1);
    let b: serde_json::Value = serde_json::from_slice(&delta.services_json[0]).unwrap();
    assert_eq!(b["name"], "b");
    assert_eq!(b["ports"][0]["port"], 82);
    assert!(delta.removed_services.is_empty());

    // Refused: the whole config follows at once, same version.
    web.answer(proxy_message::Message::Nack(Nack {
        version: v2.0,
        nonce: second.nonce.clone(),
        reason: "a delta on v1, but the config in force is none".into(),
    }))
    .await;
    let third = web.config().await;
    assert_eq!(third.version, v2.0);
    assert!(third.delta.is_none());
    let whole =
        ProxyConfig::from_yaml("push", std::str::from_utf8(&third.config_json).unwrap()).unwrap();
    assert_eq!(whole.services[1].ports[0].port, 82);
    assert_ne!(third.nonce, second.nonce);
}
