//! Where the mesh's configuration comes from: a directory of resources (DESIGN §4), read,
//! validated and compiled into every proxy's config, and watched for changes.
//!
//! - Every `*.yaml`/`*.yml` file at or under the directory (recursively, hidden entries
//!   skipped, links followed to files, in path order) is read ([`read_files`]; `trellis check`
//!   reads the same way) and validated as one set ([`Resources::load`]): every error is
//!   reported at once with its file, line, field and reason.
//! - A good set is compiled ([`Compiler`]) into the config of each Workload that has a sidecar
//!   (`spec.proxy`, or an address assigned by `trellis up`, see [`ResourceDir::with_sidecars`]),
//!   keyed by the Workload's namespace and name: a proxy's `node.name` is its Workload's name.
//! - The directory is polled ([`POLL`]: names, sizes, modification times). On a change the
//!   whole set is read again; if it is valid it replaces every config in the [`ConfigStore`]
//!   (which debounces and pushes); if not, the change is refused whole, every error goes to
//!   the log, `trellis_discovery_config_errors_total` counts it, the [`SourceStatus`] (served
//!   at `/debug/proxies`, shown by `trellis proxy-status`) records it, and the configs in force
//!   stay.
//!
//! Editors and `kubectl`-like tools write files in place or by rename; a file caught
//! half-written is refused like any invalid file and taken on the next poll once complete.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;
use trellis_identity::human;
use trellis_model::resources::{CompileOptions, Compiler, Resources, WorkloadProxy};
use trellis_model::{ConfigError, ConfigErrors, ProxyConfig};
use trellis_runtime::DrainWatcher;

use crate::metrics::Metrics;
use crate::push::{ConfigStore, NodeKey, Version};

/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// A directory of resources, and what the caller adds to it.
#[derive(Debug, Clone)]
pub struct ResourceDir {
    path: PathBuf,
    options: CompileOptions,
    /// Sidecar addresses for Workloads that name none (`trellis up` assigns them).
    sidecars: BTreeMap<NodeKey, WorkloadProxy>,
    /// Documents read after the directory's, as `(name, text)` (`trellis up`'s ingress).
    extra: Vec<(String, String)>,
}

/// What the directory looked like: each resource file's path, size and modification time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// The files of a directory as read: each one's name and text, and the files that could not
/// be taken as text (an error in that file, like any other).
#[derive(Debug, Default)]
pub struct Files {
    pub texts: Vec<(String, String)>,
    pub errors: Vec<ConfigError>,
}

/// One good read of the directory: the resources, and every sidecar's compiled config.
#[derive(Debug)]
pub struct Compiled {
    pub resources: Resources,
    pub configs: HashMap<NodeKey, ProxyConfig>,
    /// How long compiling every proxy's config took.
    pub compile_time: Duration,
}

/// Why a read of the directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// The state of the source, for operators: what is in force and what was last refused.
/// Cheap to clone; every clone shares the same state.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    inner: Arc<Mutex<StatusInner>>,
}

#[derive(Debug, Default)]
struct StatusInner {
    dir: Option<PathBuf>,
    /// The version of the configs in force, when they came from this source, and when.
    in_force: Option<(Version, SystemTime, usize, usize)>,
    /// The last refused change, when it is newer than the one in force.
    refused: Option<(SystemTime, Vec<String>)>,
}

impl ResourceDir {
    pub fn new(path: impl Into<PathBuf>, options: CompileOptions) -> ResourceDir {
        ResourceDir {
            path: path.into(),
            options,
            sidecars: BTreeMap::new(),
            extra: Vec::new(),
        }
    }

    /// Adds documents of the caller's to every read, after the directory's files.
    pub fn with_extra(mut self, extra: Vec<(String, String)>) -> ResourceDir {
        self.extra = extra;
        self
    }

    /// Gives each Workload named here (that names no sidecar of its own) this sidecar.
    pub fn with_sidecars(mut self, sidecars: BTreeMap<NodeKey, WorkloadProxy>) -> ResourceDir {
        self.sidecars = sidecars;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and compiles the directory. The fingerprint is taken before the files
    /// are read, so a file changed while reading is read again on the next poll.
    pub fn load(&self) -> (Fingerprint, Result<Compiled, LoadError>) {
        let fingerprint = match fingerprint(&self.path) {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                let error = LoadError::Read {
                    path: self.path.clone(),
                    error,
                };
                return (Fingerprint::default(), Err(error));
            }
        };
        (fingerprint, self.load_files())
    }

    fn load_files(&self) -> Result<Compiled, LoadError> {
        let mut files =
            read_files(&self.path).map_err(|(path, error)| LoadError::Read { path, error })?;
        if files.texts.is_empty() && files.errors.is_empty() {
            // Allowed (a mesh being set up): no proxy gets a config, and those that have one
            // keep it.
            tracing::warn!(dir = %self.path.display(), "no *.yaml or *.yml files: nothing to push");
        }
        files.texts.extend(self.extra.iter().cloned());
        let mut resources = match Resources::load(&files.texts) {
            Ok(resources) if files.errors.is_empty() => resources,
            Ok(_) => return Err(LoadError::Invalid(ConfigErrors(files.errors))),
            Err(ConfigErrors(more)) => {
                let mut errors = files.errors;
                errors.extend(more);
                return Err(LoadError::Invalid(ConfigErrors(errors)));
            }
        };
        for workload in &mut resources.workloads {
            let key = NodeKey::new(&workload.metadata.namespace, &workload.metadata.name);
            if workload.spec.proxy.is_none() {
                workload.spec.proxy = self.sidecars.get(&key).copied();
            }
        }
        let started = Instant::now();
        let configs = compile_all(&resources, &self.options);
        Ok(Compiled {
            resources,
            configs,
            compile_time: started.elapsed(),
        })
    }

    /// Polls the directory until drain; each good change replaces the store's configs.
    /// `seen` is the fingerprint of the read in force.
    pub async fn watch(
        self,
        store: ConfigStore,
        metrics: Metrics,
        status: SourceStatus,
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
            let path = self.path.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&path)).await else {
                return;
            };
            match now {
                Ok(now) if now == seen => continue,
                Ok(_) => {}
                Err(error) => {
                    if seen != Fingerprint::default() {
                        let error = LoadError::Read {
                            path: self.path.clone(),
                            error,
                        };
                        self.refused(&error, &metrics, &status);
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
                Ok(compiled) => self.apply(compiled, &store, &status),
                Err(error) => self.refused(&error, &metrics, &status),
            }
        }
    }

    /// Puts a good read in force.
    pub fn apply(&self, compiled: Compiled, store: &ConfigStore, status: &SourceStatus) {
        let proxies = compiled.configs.len();
        let resources = compiled.resources.len();
        let version = store.set(compiled.configs);
        status.in_force(&self.path, version, resources, proxies);
        tracing::info!(
            dir = %self.path.display(),
            %version,
            resources,
            proxies,
            compile_ms = compiled.compile_time.as_secs_f64() * 1000.0,
            "resources compiled"
        );
    }

    fn refused(&self, error: &LoadError, metrics: &Metrics, status: &SourceStatus) {
        metrics.config_error();
        let lines = error.lines();
        for line in &lines {
            tracing::warn!(error = %line, "invalid resource");
        }
        tracing::warn!(
            dir = %self.path.display(),
            errors = lines.len(),
            "change refused; the config in force stays"
        );
        status.refused(&self.path, lines);
    }
}

/// Every sidecar's config: one per Workload with a proxy, keyed by its namespace and name.
pub fn compile_all(
    resources: &Resources,
    options: &CompileOptions,
) -> HashMap<NodeKey, ProxyConfig> {
    let compiler = Compiler::new(resources, options.clone());
    resources
        .workloads
        .iter()
        .filter(|w| w.spec.proxy.is_some())
        .filter_map(|w| {
            let (ns, name) = (&w.metadata.namespace, &w.metadata.name);
            // The workload is one of the resources: this cannot miss.
            let config = compiler.proxy(name, ns).ok()?;
            Some((NodeKey::new(ns, name), config))
        })
        .collect()
}

/// Reads every `*.yaml`/`*.yml` file at or under `path` (a directory or one file), in path
/// order. An I/O error fails the whole read (with the path that failed); a file that is not
/// UTF-8 is an error in that file.
pub fn read_files(path: &Path) -> Result<Files, (PathBuf, io::Error)> {
    let mut paths = Vec::new();
    find_files(path, &mut paths)?;
    paths.sort();
    let mut files = Files::default();
    for path in paths {
        let name = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| (path.clone(), e))?;
        match String::from_utf8(bytes) {
            Ok(text) => files.texts.push((name, text)),
            Err(e) => files.errors.push(ConfigError {
                file: name,
                line: None,
                column: None,
                field: String::new(),
                reason: format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            }),
        }
    }
    Ok(files)
}

/// The resource files now, sorted by path.
fn fingerprint(path: &Path) -> io::Result<Fingerprint> {
    let mut paths = Vec::new();
    find_files(path, &mut paths).map_err(|(_, e)| e)?;
    let mut files: Vec<(PathBuf, u64, Option<SystemTime>)> = paths
        .into_iter()
        .filter_map(|p| {
            // A file removed since it was listed: the next poll sees the directory as it is.
            let meta = std::fs::metadata(&p).ok()?;
            Some((p, meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    Ok(Fingerprint(files))
}

/// Every `*.yaml`/`*.yml` file at or under `path`, not following links to directories.
fn find_files(path: &Path, found: &mut Vec<PathBuf>) -> Result<(), (PathBuf, io::Error)> {
    let at = |e: io::Error| (path.to_path_buf(), e);
    if std::fs::metadata(path).map_err(at)?.is_file() {
        found.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(at)? {
        let entry = entry.map_err(at)?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| (path.clone(), e))?;
        if file_type.is_dir() {
            find_files(&path, found)?;
        } else if is_yaml(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            found.push(path);
        }
    }
    Ok(())
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}

impl LoadError {
    /// One line per problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

impl SourceStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn in_force(&self, dir: &Path, version: Version, resources: usize, proxies: usize) {
        let mut inner = self.lock();
        inner.dir = Some(dir.to_path_buf());
        inner.in_force = Some((version, SystemTime::now(), resources, proxies));
        inner.refused = None;
    }

    fn refused(&self, dir: &Path, errors: Vec<String>) {
        let mut inner = self.lock();
        inner.dir = Some(dir.to_path_buf());
        inner.refused = Some((SystemTime::now(), errors));
    }

    /// `{"dir", "version", "since", "resources", "proxies", "refused": {"at", "errors"}|null}`.
    pub fn to_json(&self) -> Value {
        let inner = self.lock();
        let (version, since, resources, proxies) = match inner.in_force {
            Some((v, at, r, p)) => (Some(v), Some(human::time(at)), Some(r), Some(p)),
            None => (None, None, None, None),
        };
        json!({
            "dir": inner.dir.as_ref().map(|d| d.display().to_string()),
            "version": version,
            "since": since,
            "resources": resources,
            "proxies": proxies,
            "refused": inner.refused.as_ref().map(|(at, errors)| json!({
                "at": human::time(*at),
                "errors": errors,
            })),
        })
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} files", self.0.len())
    }
}

#[cfg(test)]
mod tests;
