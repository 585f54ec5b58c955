//! The control plane under test: the real `trellis control` binary in its own process, so that
//! its CPU time and memory are its own.
//!
//! - `trellis ca init --dir D`, then `trellis control --ca-dir D --resources DIR --listen
//!   127.0.0.1:0 --admin 127.0.0.1:0 --ready-file F`, logging at info (as it would run), plus
//!   debug for `trellis_control::push` (one line per publication, to time the debounce).
//! - Its stderr is copied to `control.log` in the work directory, and the milestones of a
//!   change are taken from it as they arrive: `resources compiled` (read, validated, compiled
//!   and serialised: `compile_ms=`, `proxies=`), `publishing configs` (after the debounce),
//!   `change refused` (a generated file was invalid: the run fails).
//! - `/proc/PID/stat` (utime + stime) and `/proc/PID/status` (VmRSS, VmHWM) are sampled every
//!   100 ms; past `max_rss` the process is killed rather than let the machine run out of
//!   memory (it is shared).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How the control plane is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `trellis` binary.
    pub trellis: PathBuf,
    pub ca_dir: PathBuf,
    pub resources: PathBuf,
    /// Where `ready.json` and `control.log` go.
    pub work: PathBuf,
    /// Killed past this RSS, in KiB.
    pub max_rss_kib: u64,
    /// How long the start (the first compile included) may take.
    pub start_timeout: Duration,
}

/// A milestone in the control plane's log, stamped when this process read it.
#[derive(Debug, Clone)]
pub enum Milestone {
    /// `resources compiled`: a read of the directory is in the store (serialised).
    Compiled {
        at: Instant,
        version: u64,
        proxies: u64,
        compile_ms: f64,
    },
    /// `publishing configs`: the debounce is over; the streams send.
    Published { at: Instant, version: u64 },
    /// A warning or error line.
    Warning { line: String },
}

/// CPU and memory of the process at one time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime.
    pub cpu: Duration,
    pub rss_kib: u64,
    /// The peak RSS of the process so far (VmHWM).
    pub hwm_kib: u64,
}

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    pid: u32,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub milestones: mpsc::UnboundedReceiver<Milestone>,
    /// Why the process is gone, once it is.
    pub failure: watch::Receiver<Option<String>>,
    sampler: Arc<Mutex<Sampler>>,
    log: PathBuf,
}

#[derive(Debug, Default)]
struct Sampler {
    latest: Usage,
    /// The highest RSS seen since [`ControlPlane::window_peak`] was last called.
    window_peak_kib: u64,
}

#[derive(Deserialize)]
struct Ready {
    grpc: SocketAddr,
    admin: SocketAddr,
}

/// `trellis ca init --dir <dir>`.
pub async fn init_ca(trellis: &Path, dir: &Path) -> anyhow::Result<()> {
    let output = Command::new(trellis)
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", trellis.display()))?;
    if !output.status.success() {
        bail!(
            "trellis ca init failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl ControlPlane {
    /// Starts the control plane and waits until it serves (its first compile done).
    pub async fn start(options: &Options) -> anyhow::Result<ControlPlane> {
        let ready_file = options.work.join("ready.json");
        let log = options.work.join("control.log");
        let mut child = Command::new(&options.trellis)
            .arg("control")
            .arg("--ca-dir")
            .arg(&options.ca_dir)
            .arg("--resources")
            .arg(&options.resources)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_file)
            .args(["--log-level", "info,trellis_control::push=debug"])
            .env_remove("TRELLIS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} control", options.trellis.display()))?;
        let pid = child.id().context("the control plane exited at once")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;

        let (milestones_tx, milestones) = mpsc::unbounded_channel();
        let (failure_tx, failure) = watch::channel(None);
        tokio::spawn(read_log(stderr, log.clone(), milestones_tx));
        let sampler = Arc::new(Mutex::new(Sampler::default()));
        tokio::spawn(sample(
            pid,
            options.max_rss_kib,
            sampler.clone(),
            failure_tx,
        ));

        let deadline = Instant::now() + options.start_timeout;
        let ready = loop {
            if let Some(ready) = std::fs::read(&ready_file)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Ready>(&bytes).ok())
            {
                break ready;
            }
            if let Some(why) = failure.borrow().clone() {
                bail!("the control plane did not start: {why}\n{}", tail(&log));
            }
            if Instant::now() > deadline {
                bail!(
                    "the control plane did not write {} within {:?}\n{}",
                    ready_file.display(),
                    options.start_timeout,
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(ControlPlane {
            child,
            pid,
            grpc: ready.grpc,
            admin: ready.admin,
            milestones,
            failure,
            sampler,
            log,
        })
    }

    /// CPU and memory now (read now, not from the last sample).
    pub fn usage(&self) -> Usage {
        let now = read_usage(self.pid).unwrap_or_else(|| self.lock().latest);
        let mut sampler = self.lock();
        sampler.window_peak_kib = sampler.window_peak_kib.max(now.rss_kib);
        now
    }

    /// The highest RSS since the last call (sampled every 100 ms), and a new window begins.
    pub fn window_peak(&self) -> u64 {
        let now = self.usage();
        let mut sampler = self.lock();
        std::mem::replace(&mut sampler.window_peak_kib, now.rss_kib)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log, for an error message.
    pub fn tail(&self) -> String {
        tail(&self.log)
    }

    /// SIGTERM, and SIGKILL if it has not exited within 15 s. The final usage.
    pub async fn stop(mut self) -> Usage {
        let last = self.usage();
        if let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let waited = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        if waited.is_err() {
            let _ = self.child.kill().await;
        }
        last
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sampler> {
        self.sampler.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Copies the log to `path` and reports its milestones.
async fn read_log(
    stderr: tokio::process::ChildStderr,
    path: PathBuf,
    milestones: mpsc::UnboundedSender<Milestone>,
) {
    let mut file = match tokio::fs::File::create(&path).await {
        Ok(file) => Some(file),
        Err(error) => {
            eprintln!("control-scale: cannot write {}: {error}", path.display());
            None
        }
    };
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let at = Instant::now();
        if let Some(milestone) = parse(&line, at) {
            let _ = milestones.send(milestone);
        }
        if let Some(file) = &mut file {
            let _ = file.write_all(line.as_bytes()).await;
            let _ = file.write_all(b"\n").await;
        }
    }
    if let Some(file) = &mut file {
        let _ = file.flush().await;
    }
}

/// The milestone a log line records, if any. Lines look like
/// `2026-01-01T00:00:00.000000Z  INFO trellis_control::sources: resources compiled dir=...
/// version=v2 resources=55051 proxies=50000 compile_ms=1234.5`.
fn parse(line: &str, at: Instant) -> Option<Milestone> {
    let field = |name: &str| {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        let value = line[start..].split_whitespace().next()?;
        Some(value.trim_start_matches('v').to_owned())
    };
    let number = |name: &str| field(name)?.parse::<f64>().ok();
    if line.contains("resources compiled") {
        Some(Milestone::Compiled {
            at,
            version: number("version")? as u64,
            proxies: number("proxies")? as u64,
            compile_ms: number("compile_ms")?,
        })
    } else if line.contains("publishing configs") {
        Some(Milestone::Published {
            at,
            version: number("version")? as u64,
        })
    } else if line.contains(" WARN ") || line.contains(" ERROR ") {
        Some(Milestone::Warning {
            line: line.to_owned(),
        })
    } else {
        None
    }
}

/// Samples the process every 100 ms until it is gone; kills it past `max_rss_kib`.
async fn sample(
    pid: u32,
    max_rss_kib: u64,
    sampler: Arc<Mutex<Sampler>>,
    failure: watch::Sender<Option<String>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(usage) = read_usage(pid) else {
            failure.send_replace(Some("the control plane exited".to_owned()));
            return;
        };
        {
            let mut s = sampler.lock().unwrap_or_else(PoisonError::into_inner);
            s.latest = usage;
            s.window_peak_kib = s.window_peak_kib.max(usage.rss_kib);
        }
        if usage.rss_kib > max_rss_kib {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            failure.send_replace(Some(format!(
                "killed: its RSS reached {} MiB, over --max-rss {} MiB",
                usage.rss_kib / 1024,
                max_rss_kib / 1024
            )));
            return;
        }
    }
}

/// CPU and memory of `pid` from /proc; None once it has exited (or is a zombie).
pub fn read_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, hence the last ')').
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    let ticks: u64 = fields
        .get(11..13)?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let cpu = Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Usage {
        cpu,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// The last 20 lines of a file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    format!(
        "last lines of {}:\n{}",
        path.display(),
        lines[from..].join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_milestones_are_read_from_the_log_lines() {
        let at = Instant::now();
        let line = "2026-05-04T02:23:19.123456Z  INFO trellis_control::sources: resources compiled \
                    dir=/tmp/x/resources version=v12 resources=55051 proxies=50000 compile_ms=1234.5";
        match parse(line, at) {
            Some(Milestone::Compiled {
                version,
                proxies,
                compile_ms,
                ..
            }) => {
                assert_eq!((version, proxies), (12, 50000));
                assert!((compile_ms - 1234.5).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        let line = "2026-05-04T02:23:19.123456Z DEBUG trellis_control::push: publishing configs \
                    version=v3 proxies=10 waited=51.2ms";
        assert!(matches!(
            parse(line, at),
            Some(Milestone::Published { version: 3, .. })
        ));
        let line = "2026-05-04T02:23:19Z  INFO trellis_control::discovery: config applied (ACK)";
        assert!(parse(line, at).is_none());
    }

    #[test]
    fn this_process_can_be_measured() {
        let usage = read_usage(std::process::id()).unwrap();
        assert!(usage.rss_kib > 0 && usage.hwm_kib >= usage.rss_kib);
    }
}
