//! Child processes with their output captured while they run.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use crate::wait::wait_until;

/// Proxy settings in the environment would send curl, grpc and websockets through some other
/// proxy; every command the tests start runs without them.
const PROXY_ENV: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// A running child process. Its stdout and stderr are read line by line into buffers the test
/// can look at any time. Killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    output: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished short command printed.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
struct Captured {
    stdout: Mutex<Vec<String>>,
    stderr: Mutex<Vec<String>>,
}

impl Process {
    /// Starts `command` with stdin closed and stdout/stderr captured. `name` labels messages.
    pub fn spawn(name: &str, mut command: Command) -> Process {
        for var in PROXY_ENV {
            command.env_remove(var);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let output = Arc::new(Captured::default());
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                read_lines(stdout, &output.stdout)
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                read_lines(stderr, &output.stderr)
            }));
        }
        Process {
            name: name.to_owned(),
            child,
            exit: None,
            output,
            readers,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.output.stdout).clone()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        lock(&self.output.stderr).clone()
    }

    /// All of stderr so far, as one string.
    pub fn stderr(&self) -> String {
        lock(&self.output.stderr).join("\n")
    }

    /// The first stdout line matching `pred`, waiting up to `timeout` for it.
    pub fn wait_for_stdout(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_until(timeout, || {
            lock(&self.output.stdout)
                .iter()
                .find(|line| pred(line))
                .cloned()
        })
    }

    /// The first stderr line matching `pred`, waiting up to `timeout` for it.
    pub fn wait_for_stderr(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_until(timeout, || {
            lock(&self.output.stderr)
                .iter()
                .find(|line| pred(line))
                .cloned()
        })
    }

    /// The exit status if the process has ended (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_until(timeout, || self.try_exit());
        if status.is_some() {
            self.wait_for_readers();
        }
        status
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`, ...) with kill(1). Does nothing once the process
    /// has been reaped (its pid may belong to someone else by then).
    pub fn signal(&mut self, signal: &str) {
        if self.try_exit().is_some() {
            return;
        }
        let sent = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            sent,
            "kill -s {signal} {} ({}) failed",
            self.pid(),
            self.name
        );
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.wait_for_readers();
    }

    /// Peak resident set size (`VmHWM` in `/proc/PID/status`) in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The last `lines` lines of stderr under a header, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let stderr = lock(&self.output.stderr);
        let start = stderr.len().saturating_sub(lines);
        format!(
            "--- {} stderr (last {} of {} lines) ---\n{}\n",
            self.name,
            stderr.len() - start,
            stderr.len(),
            stderr[start..].join("\n")
        )
    }

    /// Gives the reader threads a moment to take the last bytes once the pipes have closed.
    fn wait_for_readers(&mut self) {
        wait_until(Duration::from_secs(2), || {
            self.readers
                .iter()
                .all(|reader| reader.is_finished())
                .then_some(())
        });
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a short command to completion with stdin closed, killing it after `timeout`
/// (then panics with what it printed).
pub fn run(name: &str, command: Command, timeout: Duration) -> CommandOutput {
    run_with_input(name, command, Vec::new(), timeout)
}

/// Like [`run`], with `input` written to the command's stdin (then closed).
pub fn run_with_input(
    name: &str,
    mut command: Command,
    input: Vec<u8>,
    timeout: Duration,
) -> CommandOutput {
    for var in PROXY_ENV {
        command.env_remove(var);
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name} ({command:?}): {e}"));
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input);
        }
    });
    let stdout = child.stdout.take();
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut bytes);
        }
        bytes
    });
    let stderr = child.stderr.take();
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let status = wait_until(timeout, || child.try_wait().ok().flatten());
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for a killed child");
    let _ = writer.join();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if timed_out {
        panic!(
            "{name} did not finish within {timeout:?} ({command:?})\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
            String::from_utf8_lossy(&stdout)
        );
    }
    CommandOutput {
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

impl CommandOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn read_lines(pipe: impl Read, into: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                lock(into).push(text.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether transparent huge pages are allowed for process `pid` (`THP_enabled` in
/// `/proc/PID/status`, there since Linux 5.0): false once the process has turned them off with
/// `PR_SET_THP_DISABLE`, or inherited that from its parent. `None` if it cannot be read.
pub fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))?;
    match value.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}
