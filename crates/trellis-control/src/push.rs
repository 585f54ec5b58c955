//! The configs the control plane pushes: a store that the rest of the control plane writes
//! whole ([`ConfigStore::set`]: every proxy's compiled config at once) and that every proxy's
//! discovery stream reads ([`ConfigStore::subscribe`]).
//!
//! - Every `set` is a new [`Version`] of the whole mesh's config.
//! - Debounced: after a `set`, the store waits until no other `set` has come for
//!   [`Config::debounce`] (never longer than [`Config::max_delay`] in all), then publishes the
//!   latest. A burst of changes (an editor writing several files, a deployment rolling) is one
//!   push.
//! - Each config is serialised to its wire form once, in `set` ([`WireConfig`]): the config
//!   without its Services, and each Service on its own. A Service that many proxies see is
//!   serialised once and shared. A stream compares the wire form with what it last sent its
//!   proxy, sends nothing when they are the same, and only the Services that changed (a delta)
//!   when the rest is the same as what the proxy has in force.
//!
//! No lock is held across an `.await`: the store is two `tokio::sync::watch` channels (the
//! latest `set`, and what has been published) and a task between them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use trellis_model::{Listeners, ProxyConfig, Service};

/// How pushes are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// A push waits until the configs have been quiet this long (50 ms).
    pub debounce: Duration,
    /// ... but never longer than this after the first change of a burst (1 s), so that a
    /// steady trickle of changes still goes out.
    pub max_delay: Duration,
}

/// Which proxy a config is for: its `node.namespace` and `node.name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NodeKey {
    pub namespace: String,
    pub name: String,
}

/// A generation of the whole mesh's config. Grows by one with every [`ConfigStore::set`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Version(pub u64);

/// One published generation: every proxy's config, in its wire form.
#[derive(Debug, Default)]
pub struct Generation {
    pub version: Version,
    configs: HashMap<NodeKey, Arc<WireConfig>>,
}

/// One proxy's config as it goes on the wire: the config without `services` (a JSON object),
/// and each Service as JSON, shared with every other proxy that sees the same Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireConfig {
    head: Arc<[u8]>,
    services: Vec<WireService>,
}

/// One Service's JSON, and who it is (`namespace/name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireService {
    pub key: Arc<str>,
    pub json: Arc<[u8]>,
}

/// The Services that differ between two configs whose other sections are the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesDelta {
    /// Added or changed, whole.
    pub upserted: Vec<WireService>,
    /// Gone, as `namespace/name`.
    pub removed: Vec<Arc<str>>,
}

/// The store. Cheap to clone; every clone writes and reads the same configs.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The latest `set`, at once.
    latest: watch::Sender<Arc<Generation>>,
    /// What the debouncer has published; streams subscribe here.
    published: watch::Receiver<Arc<Generation>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl NodeKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> NodeKey {
        NodeKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of the proxy `config` is for.
    pub fn of(config: &ProxyConfig) -> NodeKey {
        NodeKey::new(&config.node.namespace, &config.node.name)
    }
}

impl Version {
    fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl Generation {
    /// `node`'s config, if this generation has one.
    pub fn get(&self, node: &NodeKey) -> Option<&Arc<WireConfig>> {
        self.configs.get(node)
    }

    /// Every proxy this generation has a config for.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeKey> {
        self.configs.keys()
    }

    pub fn len(&self) -> usize {
        self.configs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }
}

impl ConfigStore {
    /// An empty store at version 0, and its debouncer task (spawned here: call this inside a
    /// tokio runtime). The task ends when the last clone of the store is dropped.
    pub fn new(config: Config) -> ConfigStore {
        let (latest, latest_rx) = watch::channel(Arc::new(Generation::default()));
        let (published_tx, published) = watch::channel(Arc::new(Generation::default()));
        tokio::spawn(debounce(config, latest_rx, published_tx));
        ConfigStore {
            inner: Arc::new(Inner { latest, published }),
        }
    }

    /// Replaces every proxy's config and returns the new version. The configs reach the
    /// streams after the debounce; a proxy missing from `configs` keeps what it has but gets
    /// nothing new (and a proxy that connects later gets nothing: it waits).
    pub fn set(&self, configs: HashMap<NodeKey, ProxyConfig>) -> Version {
        let mut interned = Interner::default();
        let configs: HashMap<NodeKey, Arc<WireConfig>> = configs
            .into_iter()
            .map(|(node, config)| (node, Arc::new(interned.wire(config))))
            .collect();
        let mut version = Version::default();
        self.inner.latest.send_modify(|current| {
            version = current.version.next();
            *current = Arc::new(Generation { version, configs });
        });
        version
    }

    /// The latest version `set`, published or not.
    pub fn latest_version(&self) -> Version {
        self.inner.latest.borrow().version
    }

    /// What is published now.
    pub fn published(&self) -> Arc<Generation> {
        self.inner.published.borrow().clone()
    }

    /// A receiver that sees every published generation (the current one is marked unseen, so
    /// that a new stream acts on it at once).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Generation>> {
        let mut rx = self.inner.published.clone();
        rx.mark_changed();
        rx
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl WireConfig {
    /// The whole config as one JSON document (a `ProxyConfig`).
    pub fn full_json(&self) -> Vec<u8> {
        let services: usize = self.services.iter().map(|s| s.json.len() + 1).sum();
        let mut out = Vec::with_capacity(self.head.len() + services + 16);
        // The head is a JSON object: `{...}`, never empty (it has `node`).
        out.extend_from_slice(&self.head[..self.head.len().saturating_sub(1)]);
        if self.head.len() > 2 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"services\":[");
        for (i, service) in self.services.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&service.json);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// What changed from `base` (the config the proxy has in force) if only Services did;
    /// None when another section differs (then the whole config goes).
    pub fn delta_from(&self, base: &WireConfig) -> Option<ServicesDelta> {
        if self.head != base.head {
            return None;
        }
        let old: HashMap<&str, &Arc<[u8]>> =
            base.services.iter().map(|s| (&*s.key, &s.json)).collect();
        let new: HashMap<&str, ()> = self.services.iter().map(|s| (&*s.key, ())).collect();
        let upserted = self
            .services
            .iter()
            .filter(|s| {
                old.get(&*s.key)
                    .is_none_or(|json| !same_bytes(json, &s.json))
            })
            .cloned()
            .collect();
        let removed = base
            .services
            .iter()
            .filter(|s| !new.contains_key(&*s.key))
            .map(|s| s.key.clone())
            .collect();
        Some(ServicesDelta { upserted, removed })
    }

    /// Whether two wire forms carry the same config (shared Services compare by pointer).
    pub fn same_as(&self, other: &WireConfig) -> bool {
        self.head == other.head
            && self.services.len() == other.services.len()
            && self
                .services
                .iter()
                .zip(&other.services)
                .all(|(a, b)| a.key == b.key && same_bytes(&a.json, &b.json))
    }
}

impl ServicesDelta {
    /// Bytes of Service JSON it carries.
    pub fn len(&self) -> usize {
        self.upserted.iter().map(|s| s.json.len()).sum::<usize>()
            + self.removed.iter().map(|k| k.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

fn same_bytes(a: &Arc<[u8]>, b: &Arc<[u8]>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Serialises each distinct Service once per `set`: proxies that see the same Service share
/// its JSON.
#[derive(Default)]
struct Interner {
    services: HashMap<(String, String), Vec<(Service, WireService)>>,
}

impl Interner {
    fn wire(&mut self, mut config: ProxyConfig) -> WireConfig {
        let services = std::mem::take(&mut config.services);
        let head = Arc::from(head_json(&config));
        let services = services.into_iter().map(|s| self.service(s)).collect();
        WireConfig { head, services }
    }

    fn service(&mut self, service: Service) -> WireService {
        let candidates = self
            .services
            .entry((service.namespace.clone(), service.name.clone()))
            .or_default();
        if let Some((_, wire)) = candidates.iter().find(|(s, _)| *s == service) {
            return wire.clone();
        }
        let json = serde_json::to_vec(&service).unwrap_or_default();
        let wire = WireService {
            key: Arc::from(format!("{}/{}", service.namespace, service.name)),
            json: Arc::from(json),
        };
        candidates.push((service, wire.clone()));
        wire
    }
}

/// The JSON a proxy is sent for `config`: the whole `ProxyConfig`, leaving out the sections a
/// proxy owns when they say nothing (`listeners` at their defaults, no `identity`, no
/// `control`), so that the proxy keeps its bootstrap's. A section that is there must match the
/// proxy's bootstrap, or the proxy refuses the push.
pub fn wire_json(config: &ProxyConfig) -> Vec<u8> {
    Interner::default().wire(config.clone()).full_json()
}

/// [`wire_json`] without `services` (which [`WireConfig`] carries one by one).
fn head_json(config: &ProxyConfig) -> Vec<u8> {
    let mut value = match serde_json::to_value(config) {
        Ok(value) => value,
        // A ProxyConfig is plain data with string keys: serialising it cannot fail. Should it
        // ever, the proxy refuses the empty document and says why.
        Err(error) => {
            tracing::error!(%error, node = %NodeKey::of(config), "cannot serialise a proxy config");
            return b"{}".to_vec();
        }
    };
    if let Some(object) = value.as_object_mut() {
        object.remove("services");
        if config.listeners == Listeners::default() {
            object.remove("listeners");
        }
        if config.identity.is_none() {
            object.remove("identity");
        }
        if config.control.is_none() {
            object.remove("control");
        }
    }
    serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec())
}

/// Publishes the latest generation once the `set`s have been quiet for `debounce` (or
/// `max_delay` has passed since the first of them).
async fn debounce(
    config: Config,
    mut latest: watch::Receiver<Arc<Generation>>,
    published: watch::Sender<Arc<Generation>>,
) {
    while latest.changed().await.is_ok() {
        let first = Instant::now();
        let mut open = true;
        while open {
            let deadline = (Instant::now() + config.debounce).min(first + config.max_delay);
            match tokio::time::timeout_at(deadline, latest.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => open = false,
                Err(_quiet) => break,
            }
        }
        let generation = latest.borrow_and_update().clone();
        tracing::debug!(
            version = %generation.version,
            proxies = generation.len(),
            waited = ?first.elapsed(),
            "publishing configs"
        );
        published.send_replace(generation);
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, yaml: &str) -> ProxyConfig {
        let text = format!("node: {{ name: {name}, namespace: test }}\n{yaml}");
        ProxyConfig::from_yaml("test", &text).unwrap()
    }

    fn one(name: &str, yaml: &str) -> HashMap<NodeKey, ProxyConfig> {
        HashMap::from([(NodeKey::new("test", name), config(name, yaml))])
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_sets_is_one_publication_of_the_last() {
        let store = ConfigStore::new(Config::default());
        let mut rx = store.subscribe();
        assert_eq!(rx.borrow_and_update().version, Version(0));
        let start = Instant::now();
        for i in 0..5 {
            store.set(one("a", &format!("timeouts: {{ connect: {}s }}", i + 1)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.latest_version(), Version(5));
        rx.changed().await.unwrap();
        let generation = rx.borrow_and_update().clone();
        assert_eq!(generation.version, Version(5));
        // The last set was at 80 ms; the publication 50 ms of quiet later.
        assert_eq!(start.elapsed(), Duration::from_millis(130));
        let json = String::from_utf8(
            generation
                .get(&NodeKey::new("test", "a"))
                .unwrap()
                .full_json(),
        );
        assert!(json.unwrap().contains(r#""connect":"5s""#));
        // Nothing else was published.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!rx.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_still_published_within_the_max_delay() {
        let store = ConfigStore::new(Config::default());
        let mut rx = store.subscribe();
        rx.borrow_and_update();
        let start = Instant::now();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    store.set(one("a", ""));
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            })
        };
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let version = rx.borrow_and_update().version;
        assert!(version.0 >= 33 && version.0 <= 35, "{version}");
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_subscriber_sees_the_current_generation_at_once() {
        let store = ConfigStore::new(Config::default());
        store.set(one("a", ""));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut rx = store.subscribe();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().version, Version(1));
        assert_eq!(store.published().len(), 1);
    }

    const TWO_SERVICES: &str = "services:
  - { name: web, namespace: test, ports: [ { name: http, port: 80, protocol: http } ] }
  - { name: api, namespace: test, ports: [ { name: http, port: 8080, protocol: http } ] }
";

    #[test]
    fn proxies_share_the_json_of_a_service_they_both_see() {
        let mut interner = Interner::default();
        let a = interner.wire(config("a", TWO_SERVICES));
        let b = interner.wire(config("b", TWO_SERVICES));
        assert!(Arc::ptr_eq(&a.services[0].json, &b.services[0].json));
        assert_eq!(&*a.services[1].key, "test/api");
        assert!(!a.same_as(&b), "the heads (node names) differ");
    }

    #[test]
    fn a_delta_carries_the_services_that_changed_and_those_gone() {
        let base = Interner::default().wire(config("a", TWO_SERVICES));
        let changed = TWO_SERVICES
            .replace("port: 8080", "port: 8081")
            .replace("  - { name: web, namespace: test, ports: [ { name: http, port: 80, protocol: http } ] }\n", "")
            + "  - { name: new, namespace: test, ports: [ { name: tcp, port: 7, protocol: tcp } ] }\n";
        let next = Interner::default().wire(config("a", &changed));
        let delta = next.delta_from(&base).unwrap();
        let keys: Vec<&str> = delta.upserted.iter().map(|s| &*s.key).collect();
        assert_eq!(keys, ["test/api", "test/new"]);
        assert_eq!(delta.removed, [Arc::<str>::from("test/web")]);
        // Nothing changed: an empty delta.
        assert!(base.delta_from(&base).unwrap().is_empty());
        // Another section changed: no delta, the whole config goes.
        let timeouts = Interner::default().wire(config(
            "a",
            &format!("{TWO_SERVICES}timeouts: {{ request: 3s }}\n"),
        ));
        assert!(timeouts.delta_from(&base).is_none());
    }

    #[test]
    fn the_wire_json_leaves_out_what_the_proxy_owns_when_it_says_nothing() {
        let plain = config("a", "services: []");
        let json: serde_json::Value = serde_json::from_slice(&wire_json(&plain)).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(!keys.contains(&"listeners"), "{keys:?}");
        assert!(!keys.contains(&"identity"), "{keys:?}");
        assert!(!keys.contains(&"control"), "{keys:?}");
        assert!(
            keys.contains(&"node") && keys.contains(&"services"),
            "{keys:?}"
        );

        let with_listeners = config("a", "listeners: { admin: 127.0.0.1:0 }");
        let json: serde_json::Value = serde_json::from_slice(&wire_json(&with_listeners)).unwrap();
        assert_eq!(json["listeners"]["admin"], "127.0.0.1:0");
    }

    #[test]
    fn the_wire_json_reads_back_as_the_same_config() {
        let original = config(
            "a",
            "services:
  - name: web
    namespace: test
    ports: [ { name: http, port: 80, protocol: http } ]
    endpoints: [ { address: 127.0.0.1, mesh: 127.0.0.1:15008, identity: \"spiffe://cluster.local/ns/test/sa/web\" } ]
timeouts: { request: 2s, idle: 90s }
mtls: disable
",
        );
        let json = String::from_utf8(wire_json(&original)).unwrap();
        let back = ProxyConfig::from_yaml("push", &json).unwrap();
        assert_eq!(back, original);
    }
}
