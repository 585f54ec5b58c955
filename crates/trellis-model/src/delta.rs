//! A config push that carries only the Services that changed (`trellis.discovery.v1` `Delta`):
//! applied to the config in force, the result is a whole config again, validated like any
//! other by [`ProxyConfig::from_yaml`].

use serde_json::Value;

use crate::ProxyConfig;

/// `current` with the Services of `upserted` (each one whole, as JSON) added or put in place
/// of the one with the same namespace and name, and those of `removed` (`namespace/name`)
/// gone; as JSON, Services sorted by namespace and name as the control plane compiles them.
pub fn apply_services_delta(
    current: &ProxyConfig,
    upserted: &[Vec<u8>],
    removed: &[String],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut config = serde_json::to_value(current)?;
    let mut services: Vec<Value> = match config["services"].take() {
        Value::Array(services) => services,
        _ => Vec::new(),
    };
    services.retain(|s| !removed.contains(&key(s)));
    for json in upserted {
        let service: Value = serde_json::from_slice(json)?;
        let k = key(&service);
        match services.iter_mut().find(|s| key(s) == k) {
            Some(slot) => *slot = service,
            None => services.push(service),
        }
    }
    services.sort_by_cached_key(|s| (namespace(s).to_owned(), name(s).to_owned()));
    config["services"] = Value::Array(services);
    serde_json::to_vec(&config)
}

fn namespace(service: &Value) -> &str {
    service["namespace"].as_str().unwrap_or("default")
}

fn name(service: &Value) -> &str {
    service["name"].as_str().unwrap_or_default()
}

/// `namespace/name`.
fn key(service: &Value) -> String {
    format!("{}/{}", namespace(service), name(service))
}
