//! curl, the client a user would reach for.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::process::{run, run_with_input};

/// Marks where curl's `--write-out` begins on stderr.
const MARK: &str = "\n@@trellis-curl@@";

/// A curl invocation: `-sS` plus the arguments given; the status code and HTTP version are
/// captured with `--write-out` on stderr, so stdout is exactly the body.
#[derive(Debug, Clone)]
pub struct Curl {
    args: Vec<OsString>,
    stdin: Vec<u8>,
    timeout: Duration,
}

/// What curl did.
#[derive(Debug)]
pub struct CurlOutput {
    /// curl's exit status (non-zero for transport errors, not for HTTP error codes).
    pub status: ExitStatus,
    /// The HTTP status code of the last response (0 when there was none).
    pub code: u16,
    /// `1.1`, `2`, ... (`%{http_version}`).
    pub http_version: String,
    pub body: Vec<u8>,
    /// curl's own messages (with `-v`, the whole conversation).
    pub stderr: String,
    pub elapsed: Duration,
    /// The command line, for messages.
    pub command: String,
}

impl Curl {
    pub fn new() -> Curl {
        Curl {
            args: vec!["-sS".into()],
            stdin: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Curl {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Curl {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `-x PROXY_URL`.
    pub fn proxy(self, proxy_url: &str) -> Curl {
        self.args(["-x", proxy_url])
    }

    /// `-H "NAME: VALUE"`.
    pub fn header(self, name: &str, value: &str) -> Curl {
        self.args(["-H".to_owned(), format!("{name}: {value}")])
    }

    /// Bytes for curl's stdin (`--data-binary @-`).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Curl {
        self.stdin = bytes;
        self
    }

    /// Kill curl after this long (default 60 s); also passed as `--max-time`.
    pub fn timeout(mut self, timeout: Duration) -> Curl {
        self.timeout = timeout;
        self
    }

    pub fn run(self) -> CurlOutput {
        let mut command = Command::new("curl");
        command
            .args(&self.args)
            .arg("--max-time")
            .arg(self.timeout.as_secs().max(1).to_string())
            .arg("--write-out")
            .arg(format!("%{{stderr}}{MARK}%{{http_code}} %{{http_version}}"));
        let line = format!("{command:?}");
        // Our own deadline is a little longer than curl's, so curl reports its timeout itself.
        let deadline = self.timeout + Duration::from_secs(5);
        let output = if self.stdin.is_empty() {
            run("curl", command, deadline)
        } else {
            run_with_input("curl", command, self.stdin, deadline)
        };
        let (stderr, written) = match output.stderr.rfind(MARK) {
            Some(at) => (
                output.stderr[..at].to_owned(),
                output.stderr[at + MARK.len()..].to_owned(),
            ),
            None => (output.stderr.clone(), String::new()),
        };
        let mut written = written.split_whitespace();
        let code = written.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let http_version = written.next().unwrap_or_default().to_owned();
        CurlOutput {
            status: output.status,
            code,
            http_version,
            body: output.stdout,
            stderr,
            elapsed: output.elapsed,
            command: line,
        }
    }
}

impl Default for Curl {
    fn default() -> Curl {
        Curl::new()
    }
}

impl CurlOutput {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body and curl's stderr when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("curl body is not JSON ({e})\n{}", self.describe()))
    }

    /// Command, exit status, code, body (truncated) and stderr, for failure messages.
    pub fn describe(&self) -> String {
        let text = self.text();
        let body: String = text.chars().take(2000).collect();
        format!(
            "--- {} ---\nexit {}, HTTP {} (version {}), {:?}\nbody: {body}\nstderr: {}\n",
            self.command, self.status, self.code, self.http_version, self.elapsed, self.stderr
        )
    }
}
