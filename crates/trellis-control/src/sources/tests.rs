use super::*;

const MESH: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  selector: { app: web }
  ports: [ { name: http, port: 80, protocol: http } ]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec:
  serviceAccount: web
  address: 127.0.0.1
  ports: { http: 18080 }
  proxy: { mesh: 127.0.0.1:15108 }
";

const CLIENT: &str = "apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: client, namespace: shop }
spec:
  serviceAccount: client
  address: 127.0.0.1
";

fn dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trellis-sources-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    dir
}

fn keys(configs: &HashMap<NodeKey, ProxyConfig>) -> Vec<String> {
    let mut keys: Vec<String> = configs.keys().map(ToString::to_string).collect();
    keys.sort();
    keys
}

#[test]
fn every_workload_with_a_sidecar_gets_its_compiled_config() {
    let path = dir("good");
    std::fs::write(path.join("web.yaml"), MESH).unwrap();
    std::fs::write(path.join("nested/client.yml"), CLIENT).unwrap();
    std::fs::write(path.join("notes.txt"), "not a resource").unwrap();
    std::fs::write(path.join(".hidden.yaml"), "not: [valid").unwrap();
    let source = ResourceDir::new(&path, CompileOptions::default());
    let (fingerprint, loaded) = source.load();
    let compiled = loaded.unwrap();
    assert_eq!(fingerprint.0.len(), 2);
    assert_eq!(compiled.resources.len(), 3);
    // The client names no sidecar: outside the mesh, no config.
    assert_eq!(keys(&compiled.configs), ["web-1.shop"]);
    let web = &compiled.configs[&NodeKey::new("shop", "web-1")];
    assert_eq!(web.app.ports[0].port, 18080);
    assert_eq!(
        web.services[0].endpoints[0].mesh,
        Some("127.0.0.1:15108".parse().unwrap())
    );

    // `trellis up` gives the client a sidecar.
    let sidecar = WorkloadProxy {
        mesh: "127.0.0.1:15208".parse().unwrap(),
        outbound: Some("127.0.0.1:15201".parse().unwrap()),
        admin: None,
    };
    let source = source.with_sidecars(BTreeMap::from([(NodeKey::new("shop", "client"), sidecar)]));
    let compiled = source.load().1.unwrap();
    assert_eq!(keys(&compiled.configs), ["client.shop", "web-1.shop"]);
    std::fs::remove_dir_all(&path).unwrap();
}

#[test]
fn an_invalid_directory_is_refused_with_every_error_and_its_place() {
    let path = dir("bad");
    std::fs::write(
        path.join("web.yaml"),
        MESH.replace("protocol: http", "protocol: htp"),
    )
    .unwrap();
    std::fs::write(
        path.join("nested/client.yaml"),
        CLIENT.replace("address: 127.0.0.1", "address: nowhere"),
    )
    .unwrap();
    std::fs::write(path.join("nested/latin1.yaml"), b"kind: \xe9\n").unwrap();
    let (_, loaded) = ResourceDir::new(&path, CompileOptions::default()).load();
    let error = loaded.unwrap_err();
    let lines = error.lines();
    let text = lines.join("\n");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(text.contains("web.yaml:6:"), "{text}");
    assert!(text.contains("client.yaml:6:"), "{text}");
    assert!(text.contains("latin1.yaml: not UTF-8"), "{text}");
    std::fs::remove_dir_all(&path).unwrap();
}

#[test]
fn an_empty_directory_compiles_to_nothing_and_a_missing_one_is_refused() {
    let path = dir("empty");
    let (_, loaded) = ResourceDir::new(&path, CompileOptions::default()).load();
    assert!(loaded.unwrap().configs.is_empty());
    let (_, loaded) = ResourceDir::new(path.join("missing"), CompileOptions::default()).load();
    assert!(matches!(loaded, Err(LoadError::Read { .. })), "{loaded:?}");
    std::fs::remove_dir_all(&path).unwrap();
}

#[tokio::test]
async fn a_change_on_disk_replaces_the_configs_and_a_bad_one_is_refused() {
    let path = dir("watch");
    std::fs::write(path.join("web.yaml"), MESH).unwrap();
    let source = ResourceDir::new(&path, CompileOptions::default());
    let store = ConfigStore::new(crate::push::Config::default());
    let status = SourceStatus::default();
    let metrics = Metrics::new();
    let (fingerprint, loaded) = source.load();
    source.apply(loaded.unwrap(), &store, &status);
    let (trigger, drain) = trellis_runtime::drain::new();
    tokio::spawn(source.clone().watch(
        store.clone(),
        metrics.clone(),
        status.clone(),
        fingerprint,
        drain,
    ));
    assert_eq!(status.to_json()["version"], 1);

    // A bad change: refused, recorded, nothing new in the store.
    std::fs::write(path.join("web.yaml"), MESH.replace("18080", "eighteen")).unwrap();
    let refused = wait(|| {
        status.to_json()["refused"]["errors"][0]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(refused.contains("web.yaml:14:"), "{refused}");
    assert_eq!(store.latest_version(), Version(1));
    assert!(
        metrics
            .encode()
            .contains("trellis_discovery_config_errors_total 1")
    );

    // A good one: in force, the refusal forgotten.
    std::fs::write(path.join("web.yaml"), MESH.replace("18080", "18081")).unwrap();
    wait(|| (store.latest_version() == Version(2)).then_some(())).await;
    assert!(status.to_json()["refused"].is_null());
    drop(trigger);
    std::fs::remove_dir_all(&path).unwrap();
}

async fn wait<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(t) = f() {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out");
}
