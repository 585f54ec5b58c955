//! Logging setup: a human log on stderr and a JSON access log on stdout.
//!
//! - **stderr**: every event except `target: "access"`, in tracing-subscriber's readable
//!   format (colours only on a terminal), filtered by a directive string (`info`,
//!   `info,trellis_proxy=debug`) that [`LogHandle::set_level`] changes at run time.
//! - **stdout**: events with `target: "access"`, one JSON object per line: `timestamp`
//!   (RFC 3339, UTC) followed by the event's fields at the top level under their own names
//!   (`"src.addr":"10.0.0.7:41234"`), no level, target or spans. The log level does not
//!   apply to it; [`TracingOptions::access_log`] turns it off.
//!
//! [`init_tracing`] installs this as the process-wide subscriber. Tests build the same
//! subscriber around their own writers with [`subscriber_with_writers`] and install it with
//! `tracing::subscriber::with_default`.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber, info};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, ParseError, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::{Registry, reload};

/// The target of access log events: `tracing::info!(target: ACCESS_TARGET, ...)`.
pub const ACCESS_TARGET: &str = "access";

/// The level used when none is configured.
pub const DEFAULT_LEVEL: &str = "info";

/// How to set up logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingOptions {
    /// Filter directives for the stderr log: `info`, `warn,trellis_proxy=debug`.
    pub level: String,
    /// Whether access events are written to stdout.
    pub access_log: bool,
}

/// Reads and changes the stderr log filter at run time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogHandle {
    inner: Arc<LogHandleInner>,
}

/// Logging could not be set up, or the level could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error(
        "log level is empty (expected a level such as `info`, or directives such as `info,trellis_proxy=debug`)"
    )]
    EmptyLevel,
    #[error(
        "`{directive}` is not a log level (expected trace, debug, info, warn, error or off; \
         use target=level, e.g. `trellis_proxy=debug`, for one module)"
    )]
    UnknownLevel { directive: String },
    #[error("invalid log directives `{directives}`: {reason}")]
    InvalidDirectives {
        directives: String,
        reason: ParseError,
    },
    #[error("a logger is already installed in this process (init_tracing may be called only once)")]
    AlreadyInitialized,
    #[error("cannot change the log level: the logger is no longer installed")]
    LoggerGone,
}

#[derive(Debug)]
struct LogHandleInner {
    /// `None` for [`LogHandle::disabled`].
    reload: Option<reload::Handle<EnvFilter, Registry>>,
    /// The directives as the operator wrote them, without blanks around commas.
    current: Mutex<String>,
}

/// Writes access events as JSON lines.
struct AccessLogLayer<W> {
    make_writer: W,
}

/// Writes an event's fields as JSON members straight into the line being built, in the order
/// they were recorded: no intermediate values, so a line costs no allocation once the
/// thread's buffer has grown (an access log line is written for every request).
struct JsonLine<'a> {
    line: &'a mut Vec<u8>,
}

/// Installs the process-wide logger: stderr log plus, if enabled, the stdout access log.
pub fn init_tracing(opts: TracingOptions) -> Result<LogHandle, TracingError> {
    let ansi = std::io::stderr().is_terminal();
    let (subscriber, handle) = build(&opts, std::io::stderr, std::io::stdout, ansi)?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| TracingError::AlreadyInitialized)?;
    Ok(handle)
}

/// The subscriber [`init_tracing`] installs, writing the human log to `stderr` and the access
/// log to `access` instead of the process's streams, without colours. For tests; install it
/// with `tracing::subscriber::with_default` or `set_default`.
pub fn subscriber_with_writers<E, A>(
    opts: &TracingOptions,
    stderr: E,
    access: A,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogHandle), TracingError>
where
    E: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    A: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    build(opts, stderr, access, false)
}

fn build<E, A>(
    opts: &TracingOptions,
    stderr: E,
    access: A,
    ansi: bool,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogHandle), TracingError>
where
    E: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    A: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (level, filter) = parse_level(&opts.level)?;
    let (filter, reload) = reload::Layer::new(filter);
    let not_access = filter_fn(|meta: &Metadata<'_>| meta.target() != ACCESS_TARGET);
    let human = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_ansi(ansi)
        .with_filter(filter.and(not_access));

    // Always present, with a static filter: an absent (`None`) layer would claim interest in
    // every callsite, so every trace-level span of hyper and h2 would be created in the
    // registry on the hot path only to be dropped.
    let enabled = opts.access_log;
    let access = AccessLogLayer {
        make_writer: access,
    }
    // Events, and the `enabled!` checks the proxy makes before copying what only the access
    // log reads (their callsites are hints, not events).
    .with_filter(filter_fn(move |meta: &Metadata<'_>| {
        enabled && !meta.is_span() && meta.target() == ACCESS_TARGET
    }));

    let subscriber = Registry::default().with(human).with(access);
    let handle = LogHandle {
        inner: Arc::new(LogHandleInner {
            reload: Some(reload),
            current: Mutex::new(level),
        }),
    };
    Ok((subscriber, handle))
}

/// Checks and compiles a directive string. Unlike `EnvFilter` alone, a bare word must be a
/// level: `EnvFilter` reads `verbose` as "everything from target `verbose`", which silently
/// hides every other log line.
fn parse_level(directives: &str) -> Result<(String, EnvFilter), TracingError> {
    let parts: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(TracingError::EmptyLevel);
    }
    for part in &parts {
        let names_a_target = part.contains('=') || part.contains('[');
        if !names_a_target && part.parse::<LevelFilter>().is_err() {
            return Err(TracingError::UnknownLevel {
                directive: (*part).to_owned(),
            });
        }
    }
    let directives = parts.join(",");
    let filter = EnvFilter::builder().parse(&directives).map_err(|reason| {
        TracingError::InvalidDirectives {
            directives: directives.clone(),
            reason,
        }
    })?;
    Ok((directives, filter))
}

impl Default for TracingOptions {
    fn default() -> Self {
        Self {
            level: DEFAULT_LEVEL.to_owned(),
            access_log: true,
        }
    }
}

impl LogHandle {
    /// A handle attached to no logger: [`set_level`](Self::set_level) validates and records
    /// the level, nothing else. For tests of code that takes a handle.
    pub fn disabled() -> Self {
        Self {
            inner: Arc::new(LogHandleInner {
                reload: None,
                current: Mutex::new(DEFAULT_LEVEL.to_owned()),
            }),
        }
    }

    /// The stderr filter in effect, as it was set.
    pub fn level(&self) -> String {
        self.current().clone()
    }

    /// Replaces the stderr filter, e.g. with `debug` or `info,trellis_proxy=debug`. An invalid
    /// string changes nothing.
    pub fn set_level(&self, directives: &str) -> Result<(), TracingError> {
        let (level, filter) = parse_level(directives)?;
        // Held across the reload so concurrent changes cannot leave `current` stale.
        let mut current = self.current();
        if let Some(reload) = &self.inner.reload {
            reload
                .reload(filter)
                .map_err(|_| TracingError::LoggerGone)?;
        }
        let previous = std::mem::replace(&mut *current, level);
        info!(from = %previous, to = %*current, "log level changed");
        Ok(())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, String> {
        // A panic while holding the lock cannot leave the string half-written.
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S, W> Layer<S> for AccessLogLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
        }
        LINE.with(|cell| {
            // A subscriber may be re-entered from inside a write: never panic on the borrow.
            let Ok(mut line) = cell.try_borrow_mut() else {
                return;
            };
            line.clear();
            line.extend_from_slice(b"{\"timestamp\":\"");
            let _ = SystemTime.format_time(&mut Writer::new(&mut Escaped(&mut line)));
            line.push(b'"');
            event.record(&mut JsonLine { line: &mut line });
            line.extend_from_slice(b"}\n");
            // One write per line: concurrent lines never interleave. Nowhere to report a failed
            // log write; dropping the line is the only option.
            let _ = self
                .make_writer
                .make_writer_for(event.metadata())
                .write_all(&line);
        });
    }
}

impl JsonLine<'_> {
    /// `,"name":` — every member follows the timestamp.
    fn key(&mut self, field: &Field) {
        self.line.extend_from_slice(b",\"");
        escape_into(self.line, field.name());
        self.line.extend_from_slice(b"\":");
    }

    fn string(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.line.push(b'"');
        escape_into(self.line, value);
        self.line.push(b'"');
    }

    fn display(&mut self, field: &Field, value: std::fmt::Arguments<'_>) {
        self.key(field);
        self.line.push(b'"');
        let _ = std::fmt::Write::write_fmt(&mut Escaped(self.line), value);
        self.line.push(b'"');
    }

    fn number(&mut self, field: &Field, value: impl std::fmt::Display) {
        self.key(field);
        let _ = std::io::Write::write_fmt(self.line, format_args!("{value}"));
    }
}

/// A `fmt::Write` that JSON-escapes what it is given into a byte buffer.
struct Escaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// Append `s` JSON-escaped (RFC 8259: quote, backslash and control characters).
fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = std::io::Write::write_fmt(out, format_args!("\\u{b:04x}"));
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

impl Visit for JsonLine<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // Non-finite numbers have no JSON form and become null.
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.key(field);
            self.line.extend_from_slice(b"null");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.display(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.display(field, format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_gives_valid_json_strings() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} é ☃";
        let mut out = b"\"".to_vec();
        escape_into(&mut out, tricky);
        out.push(b'"');
        let parsed: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, tricky);
    }
    use tracing::{debug, error, warn};

    /// A `MakeWriter` that captures everything written to it.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        fn json_lines(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
            self.text()
                .lines()
                .map(|line| match serde_json::from_str(line) {
                    Ok(serde_json::Value::Object(map)) => map,
                    other => panic!("not a JSON object: {line:?} ({other:?})"),
                })
                .collect()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn options(level: &str, access_log: bool) -> TracingOptions {
        TracingOptions {
            level: level.to_owned(),
            access_log,
        }
    }

    #[test]
    fn access_events_are_flat_json_lines_on_their_own_stream() {
        let (stderr, access) = (Capture::default(), Capture::default());
        let (subscriber, _handle) =
            subscriber_with_writers(&options("info", true), stderr.clone(), access.clone())
                .unwrap();

        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", conn.id = 7);
            let _entered = span.enter();
            let src: std::net::SocketAddr = "10.0.0.7:41234".parse().unwrap();
            // `event!` rather than `info!`: with `target:`, the level macros cannot take a
            // dotted field name first (tokio-rs/tracing#1421).
            tracing::event!(
                target: ACCESS_TARGET,
                tracing::Level::INFO,
                src.addr = %src,
                dst.service = "reviews",
                response_code = 200u16,
                duration_ms = 1.5,
                mtls = true,
                "request"
            );
            info!(target: "access", path = "/say \"hi\"\n", bytes = -3i64);
            info!(component = "proxy", "listening");
        });

        let lines = access.json_lines();
        assert_eq!(lines.len(), 2, "{}", access.text());
        let first = &lines[0];
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        let mut expected = vec![
            "timestamp",
            "message",
            "src.addr",
            "dst.service",
            "response_code",
            "duration_ms",
            "mtls",
        ];
        expected.sort_unstable();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected, "no span, level or target noise");
        assert_eq!(first["src.addr"], "10.0.0.7:41234");
        assert_eq!(first["dst.service"], "reviews");
        assert_eq!(first["response_code"], 200);
        assert_eq!(first["duration_ms"], 1.5);
        assert_eq!(first["mtls"], true);
        assert_eq!(first["message"], "request");
        let timestamp = first["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == "2024-01-02T03:04:05.678901Z".len()
                && timestamp.as_bytes()[10] == b'T'
                && timestamp.ends_with('Z'),
            "RFC 3339 UTC: {timestamp}"
        );
        assert!(access.text().starts_with("{\"timestamp\":"));
        assert_eq!(lines[1]["path"], "/say \"hi\"\n");
        assert_eq!(lines[1]["bytes"], -3);

        let human = stderr.text();
        assert!(human.contains("listening"), "{human}");
        assert!(
            !human.contains("reviews"),
            "access events stay off stderr: {human}"
        );
        assert!(!human.contains('\x1b'), "no colours when not a terminal");
    }

    #[test]
    fn access_log_ignores_the_level_and_can_be_turned_off() {
        let (stderr, access) = (Capture::default(), Capture::default());
        let (subscriber, _) =
            subscriber_with_writers(&options("off", true), stderr.clone(), access.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            debug!(target: "access", n = 1);
            error!("hidden");
            // What the proxy asks before copying what only the access log reads.
            assert!(tracing::enabled!(target: "access", tracing::Level::INFO));
        });
        assert_eq!(access.json_lines().len(), 1);
        assert_eq!(stderr.text(), "");

        let (stderr, access) = (Capture::default(), Capture::default());
        let (subscriber, _) =
            subscriber_with_writers(&options("info", false), stderr.clone(), access.clone())
                .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            info!(target: "access", n = 1);
            info!("shown");
            assert!(!tracing::enabled!(target: "access", tracing::Level::INFO));
        });
        assert_eq!(access.text(), "");
        assert!(stderr.text().contains("shown"));
        assert!(!stderr.text().contains("n=1"));
    }

    #[test]
    fn set_level_changes_the_stderr_filter_at_run_time() {
        let (stderr, access) = (Capture::default(), Capture::default());
        let (subscriber, handle) =
            subscriber_with_writers(&options("warn", true), stderr.clone(), access).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            debug!("before-debug");
            warn!("before-warn");
            handle.set_level("info,trellis_runtime=debug").unwrap();
            debug!("after-debug");
            debug!(target: "elsewhere", "after-elsewhere-debug");
            info!(target: "elsewhere", "after-elsewhere-info");
        });
        assert_eq!(handle.level(), "info,trellis_runtime=debug");
        let text = stderr.text();
        assert!(!text.contains("before-debug"), "{text}");
        assert!(text.contains("before-warn"), "{text}");
        assert!(text.contains("after-debug"), "{text}");
        assert!(!text.contains("after-elsewhere-debug"), "{text}");
        assert!(text.contains("after-elsewhere-info"), "{text}");
    }

    #[test]
    fn invalid_levels_are_rejected_and_change_nothing() {
        let handle = LogHandle::disabled();
        assert_eq!(handle.level(), "info");
        for bad in ["", " , ", "verbose", "info,trellis_proxy=loud"] {
            let err = handle.set_level(bad).unwrap_err();
            assert!(!err.to_string().is_empty());
            assert_eq!(handle.level(), "info", "after {bad:?}: {err}");
        }
        assert!(matches!(
            handle.set_level("verbose"),
            Err(TracingError::UnknownLevel { .. })
        ));
        handle.set_level(" DEBUG ").unwrap();
        assert_eq!(handle.level(), "DEBUG");
        handle.set_level(" warn, trellis_proxy=trace ,").unwrap();
        assert_eq!(handle.level(), "warn,trellis_proxy=trace");
    }

    #[test]
    fn bad_initial_level_is_an_error() {
        let result = subscriber_with_writers(
            &options("chatty", true),
            Capture::default(),
            Capture::default(),
        );
        assert!(matches!(result, Err(TracingError::UnknownLevel { .. })));
    }
}
