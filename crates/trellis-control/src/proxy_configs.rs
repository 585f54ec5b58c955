//! `trellis control --proxy-configs DIR`: compiled proxy configs from a directory, until the
//! directory of user resources (and its compiler) replaces this input.
//!
//! Every `*.yaml` (or `*.yml`) file in the directory is one `trellis_model::ProxyConfig`, the
//! same format `trellis proxy --config` reads, for the proxy its `node` names (name and
//! namespace). The directory is polled every 500 ms (names, sizes and modification times);
//! on a change every file is read again and, if all of them are valid, the whole set replaces
//! the configs in the [`ConfigStore`]. One invalid file refuses the whole change: every error
//! is logged with its file, line and column, `trellis_discovery_config_errors_total` counts
//! it, and the configs in force stay.
//!
//! Write files whole (to a temporary name, then rename): a file caught half-written is refused
//! like any invalid file, and taken on the next poll once it is complete.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use trellis_model::{ConfigErrors, ProxyConfig};
use trellis_runtime::DrainWatcher;

use crate::metrics::Metrics;
use crate::push::{ConfigStore, NodeKey};

/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// A directory of compiled proxy configs.
#[derive(Debug, Clone)]
pub struct ProxyConfigDir {
    path: PathBuf,
}

/// What the directory looked like: each config file's path, size and modification time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// Why the directory's configs were refused, every reason.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<LoadError>);

/// One reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the directory {}: {error}", path.display())]
    ReadDir { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(
        "{}: node {node} is configured by {} already (one file per proxy)",
        second.display(),
        first.display()
    )]
    Duplicate {
        node: NodeKey,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Every proxy's config from one good read of the directory.
pub type Configs = HashMap<NodeKey, ProxyConfig>;

impl ProxyConfigDir {
    pub fn new(path: impl Into<PathBuf>) -> ProxyConfigDir {
        ProxyConfigDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates every config file. The fingerprint is taken before the files are
    /// read, so a file changed while reading is read again on the next poll.
    pub fn load(&self) -> (Fingerprint, Result<Configs, LoadErrors>) {
        let fingerprint = match self.fingerprint() {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                let error = LoadError::ReadDir {
                    path: self.path.clone(),
                    error,
                };
                return (Fingerprint::default(), Err(LoadErrors(vec![error])));
            }
        };
        let mut configs: Configs = HashMap::new();
        let mut files: HashMap<NodeKey, PathBuf> = HashMap::new();
        let mut errors = Vec::new();
        for (path, _, _) in &fingerprint.0 {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(error) => {
                    errors.push(LoadError::Read {
                        path: path.clone(),
                        error,
                    });
                    continue;
                }
            };
            match ProxyConfig::from_yaml(&path.display().to_string(), &text) {
                Ok(config) => {
                    let node = NodeKey::of(&config);
                    if let Some(first) = files.get(&node) {
                        errors.push(LoadError::Duplicate {
                            node,
                            first: first.clone(),
                            second: path.clone(),
                        });
                        continue;
                    }
                    files.insert(node.clone(), path.clone());
                    configs.insert(node, config);
                }
                Err(invalid) => errors.push(LoadError::Invalid(invalid)),
            }
        }
        let result = if errors.is_empty() {
            Ok(configs)
        } else {
            Err(LoadErrors(errors))
        };
        (fingerprint, result)
    }

    /// Polls the directory until drain; each good change replaces the store's configs.
    /// `seen` is the fingerprint of the read that is in force.
    pub async fn watch(
        self,
        store: ConfigStore,
        metrics: Metrics,
        mut seen: Fingerprint,
        drain: DrainWatcher,
    ) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                _ = tick.tick() => {}
            }
            let dir = self.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || dir.fingerprint()).await else {
                return;
            };
            match now {
                Ok(now) if now == seen => continue,
                Ok(_) => {}
                Err(error) => {
                    let error = LoadError::ReadDir {
                        path: self.path.clone(),
                        error,
                    };
                    if seen != Fingerprint::default() {
                        metrics.config_error();
                        tracing::warn!(%error, "cannot read the proxy configs; the configs in force stay");
                        seen = Fingerprint::default();
                    }
                    continue;
                }
            }
            let dir = self.clone();
            let Ok((fingerprint, loaded)) = tokio::task::spawn_blocking(move || dir.load()).await
            else {
                return;
            };
            seen = fingerprint;
            match loaded {
                Ok(configs) => {
                    let proxies = configs.len();
                    let version = store.set(configs);
                    tracing::info!(dir = %self.path.display(), %version, proxies, "proxy configs changed");
                }
                Err(errors) => {
                    metrics.config_error();
                    for error in &errors.0 {
                        tracing::warn!(%error, "invalid proxy config");
                    }
                    tracing::warn!(
                        dir = %self.path.display(),
                        errors = errors.count(),
                        "proxy configs refused; the configs in force stay"
                    );
                }
            }
        }
    }

    /// The config files now, sorted by path.
    fn fingerprint(&self) -> io::Result<Fingerprint> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let path = entry.path();
            let is_config = path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml");
            if !is_config {
                continue;
            }
            // Follows symlinks (a ConfigMap mounted in Kubernetes is a tree of them).
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                files.push((path, meta.len(), meta.modified().ok()));
            }
        }
        files.sort();
        Ok(Fingerprint(files))
    }
}

impl LoadErrors {
    /// How many problems, counting each config error.
    pub fn count(&self) -> usize {
        self.0
            .iter()
            .map(|e| match e {
                LoadError::Invalid(errors) => errors.0.len(),
                _ => 1,
            })
            .sum()
    }
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trellis-proxy-configs-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_config_file_keyed_by_its_node() {
        let path = dir("good");
        std::fs::write(path.join("a.yaml"), "node: { name: a, namespace: test }\n").unwrap();
        std::fs::write(path.join("b.yml"), "node: { name: b, namespace: test }\n").unwrap();
        std::fs::write(path.join("notes.txt"), "not a config").unwrap();
        let (fingerprint, loaded) = ProxyConfigDir::new(&path).load();
        let configs = loaded.unwrap();
        assert_eq!(fingerprint.0.len(), 2);
        let mut nodes: Vec<String> = configs.keys().map(ToString::to_string).collect();
        nodes.sort();
        assert_eq!(nodes, ["a.test", "b.test"]);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn one_bad_file_refuses_the_whole_directory_with_every_error() {
        let path = dir("bad");
        std::fs::write(path.join("a.yaml"), "node: { name: a, namespace: test }\n").unwrap();
        std::fs::write(
            path.join("b.yaml"),
            "node: { name: b, namespace: test }\ntimeouts: { connect: soon }\nbogus: 1\n",
        )
        .unwrap();
        std::fs::write(path.join("c.yaml"), "node: { name: a, namespace: test }\n").unwrap();
        let (_, loaded) = ProxyConfigDir::new(&path).load();
        let errors = loaded.unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.count(), 3, "{text}");
        assert!(text.contains("b.yaml:2:"), "{text}");
        assert!(text.contains("b.yaml:3:"), "{text}");
        assert!(text.contains("node a.test is configured by"), "{text}");
        std::fs::remove_dir_all(&path).unwrap();
    }
}
