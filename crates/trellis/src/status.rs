//! `trellis proxy-status`: every proxy the control plane knows, with its identity, the last
//! config version it ACKed, whether it is in sync, its last NACK and when it was last heard
//! from; read from the control plane's admin page `/debug/proxies`.
//!
//! `trellis proxy-config`: what one proxy has applied, from that proxy's own admin page
//! `/config_dump` (the proxy is the authority on what it runs). Name the proxy and the control
//! plane finds its admin address (each proxy reports it in its Hello), or give the address.
//!
//! ```text
//! trellis proxy-status [--control-admin 127.0.0.1:15014] [--json]
//! trellis proxy-config NAME[.NAMESPACE] [--control-admin 127.0.0.1:15014]
//! trellis proxy-config --admin PROXY_ADMIN_ADDR
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long an admin page may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A NACK reason is cut to this many characters on its line (`--json` has it whole).
const REASON_WIDTH: usize = 70;

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyStatusArgs {
    /// The control plane's admin address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    control_admin: SocketAddr,
    /// Print the control plane's JSON as it is (every field, whole NACK reasons).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyConfigArgs {
    /// The proxy, as NAME or NAME.NAMESPACE (its `node`); the control plane knows its admin
    /// address.
    #[arg(required_unless_present = "admin", conflicts_with = "admin")]
    proxy: Option<String>,
    /// Ask the proxy at this admin address directly.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The control plane's admin address (to find the proxy by name).
    #[arg(long, default_value = "127.0.0.1:15014")]
    control_admin: SocketAddr,
}

pub(crate) async fn proxy_status(args: ProxyStatusArgs) -> anyhow::Result<ExitCode> {
    let json = control_proxies(args.control_admin).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&json, args.control_admin));
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn proxy_config(args: ProxyConfigArgs) -> anyhow::Result<ExitCode> {
    let admin = match (args.admin, &args.proxy) {
        (Some(admin), _) => admin,
        (None, Some(proxy)) => {
            let json = control_proxies(args.control_admin).await?;
            find_admin(&json, proxy)?
        }
        (None, None) => bail!("name a proxy, or give its admin address with --admin"),
    };
    let (status, body) = get(admin, "/config_dump")
        .await
        .with_context(|| format!("cannot read /config_dump from the proxy's admin at {admin}"))?;
    if status != 200 {
        bail!("the proxy's admin at {admin} answered {status} for /config_dump: {body}");
    }
    let dump: Value = serde_json::from_str(&body).with_context(|| {
        format!("the proxy's admin at {admin} sent a /config_dump that is not JSON")
    })?;
    println!("{}", serde_json::to_string_pretty(&dump)?);
    Ok(ExitCode::SUCCESS)
}

/// `/debug/proxies` of the control plane at `admin`.
async fn control_proxies(admin: SocketAddr) -> anyhow::Result<Value> {
    let (status, body) = get(admin, "/debug/proxies").await.with_context(|| {
        format!(
            "cannot reach the control plane's admin at {admin} (is `trellis control` running? \
             give its admin address with --control-admin)"
        )
    })?;
    if status != 200 {
        bail!("the control plane's admin at {admin} answered {status} for /debug/proxies: {body}");
    }
    serde_json::from_str(&body).with_context(|| {
        format!("the control plane's admin at {admin} sent a status that is not JSON")
    })
}

/// The admin address of `proxy` (NAME or NAME.NAMESPACE) in `/debug/proxies`.
fn find_admin(json: &Value, proxy: &str) -> anyhow::Result<SocketAddr> {
    let (name, namespace) = match proxy.split_once('.') {
        Some((name, namespace)) => (name, Some(namespace)),
        None => (proxy, None),
    };
    let rows: Vec<&Value> = json["proxies"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["name"] == name && namespace.is_none_or(|ns| r["namespace"] == ns))
                .collect()
        })
        .unwrap_or_default();
    let row = match rows.as_slice() {
        [] => bail!("the control plane knows no proxy {proxy} (see `trellis proxy-status`)"),
        [row] => *row,
        several => {
            let names: Vec<String> = several.iter().map(|r| qualified(r)).collect();
            bail!(
                "{proxy} is ambiguous: {}; say NAME.NAMESPACE",
                names.join(", ")
            )
        }
    };
    let admin = row["admin"].as_str().unwrap_or_default();
    admin.parse().map_err(|_| {
        anyhow::anyhow!(
            "the control plane does not know the admin address of {} (is it connected?); \
             give it with --admin",
            qualified(row)
        )
    })
}

/// One line per proxy, under a header line, columns aligned.
/// The resources line, and the last refused change with its first errors.
fn source(config: &Value) -> String {
    let Some(dir) = config["dir"].as_str() else {
        return String::new();
    };
    let mut out = match config["resources"].as_u64() {
        Some(n) => format!(
            "resources: {dir}: {n} in force as {} since {}\n",
            version(&config["version"]),
            config["since"].as_str().unwrap_or("?"),
        ),
        None => format!("resources: {dir}: none in force\n"),
    };
    if let Some(errors) = config["refused"]["errors"].as_array() {
        out.push_str(&format!(
            "last change REFUSED at {} ({} errors; the config in force stays):\n",
            config["refused"]["at"].as_str().unwrap_or("?"),
            errors.len(),
        ));
        for error in errors.iter().take(SHOWN_ERRORS) {
            out.push_str(&format!("  {}\n", error.as_str().unwrap_or("?")));
        }
        if errors.len() > SHOWN_ERRORS {
            out.push_str(&format!("  ... and {} more\n", errors.len() - SHOWN_ERRORS));
        }
    }
    out
}

/// Errors of a refused change listed by `proxy-status` (all of them in `--json`).
const SHOWN_ERRORS: usize = 5;

fn render(json: &Value, control_admin: SocketAddr) -> String {
    let rows = json["proxies"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "control plane {control_admin}: config {}, {} proxies connected, {} configured\n",
        version(&json["version"]),
        json["connected"].as_u64().unwrap_or(0),
        json["configs"].as_u64().unwrap_or(0),
    );
    out.push_str(&source(&json["config"]));
    if rows.is_empty() {
        out.push_str("no proxies\n");
        return out;
    }
    let mut table = vec![[
        "PROXY".to_owned(),
        "IDENTITY".to_owned(),
        "ACKED".to_owned(),
        "SYNC".to_owned(),
        "LAST SEEN".to_owned(),
        "LAST NACK".to_owned(),
    ]];
    for row in &rows {
        let nack = match &row["last_nack"] {
            Value::Null => "-".to_owned(),
            nack => format!(
                "{}: {}",
                version(&nack["version"]),
                first_line(nack["reason"].as_str().unwrap_or_default(), REASON_WIDTH)
            ),
        };
        let seen = match row["last_seen_seconds_ago"].as_f64() {
            Some(_) if row["connected"] == true => "connected".to_owned(),
            Some(ago) => format!("{} ago", ago_text(ago)),
            None => "never".to_owned(),
        };
        table.push([
            qualified(row),
            row["identity"].as_str().unwrap_or("-").to_owned(),
            version(&row["acked_version"]),
            row["state"].as_str().unwrap_or("?").to_owned(),
            seen,
            nack,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c < 5 {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn qualified(row: &Value) -> String {
    format!(
        "{}.{}",
        row["name"].as_str().unwrap_or("?"),
        row["namespace"].as_str().unwrap_or("?")
    )
}

fn version(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), |v| format!("v{v}"))
}

fn first_line(text: &str, width: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut line = lines.first().copied().unwrap_or_default().to_owned();
    if lines.len() > 1 {
        line = format!("{} {}", line.trim_end_matches(':'), lines[1].trim());
        if lines.len() > 2 {
            line.push_str(&format!(" (+{} more)", lines.len() - 2));
        }
    }
    if line.chars().count() > width {
        line = line
            .chars()
            .take(width.saturating_sub(1))
            .collect::<String>()
            + "…";
    }
    line
}

fn ago_text(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        trellis_identity::human::duration(Duration::from_secs_f64(seconds))
    }
}

/// GET `path` from the HTTP/1.1 server at `addr`: the status and the body as text.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::json!({
            "version": 7, "configs": 2, "connected": 1,
            "proxies": [
                { "name": "client-0", "namespace": "test", "connected": false, "state": "never connected" },
                { "name": "web-0", "namespace": "test", "identity": "spiffe://cluster.local/ns/test/sa/web",
                  "admin": "127.0.0.1:15000", "connected": true, "state": "stale", "acked_version": 5,
                  "last_nack": { "version": 7, "reason": "listeners cannot change while the proxy runs: restart the proxy to change listeners (running: {\"admin\":\"127.0.0.1:15000\"}; pushed: {\"admin\":\"127.0.0.1:1\"})" },
                  "last_seen_seconds_ago": 0.2 },
            ]
        })
    }

    #[test]
    fn one_line_per_proxy_with_its_sync_state() {
        let text = render(&sample(), "127.0.0.1:15014".parse().unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].contains("config v7, 1 proxies connected, 2 configured"),
            "{text}"
        );
        assert!(lines[1].starts_with("PROXY"), "{text}");
        assert!(
            lines[2].starts_with("client-0.test") && lines[2].contains("never"),
            "{text}"
        );
        assert!(lines[3].starts_with("web-0.test"), "{text}");
        for part in [
            "spiffe://cluster.local/ns/test/sa/web",
            "v5",
            "stale",
            "connected",
            "v7: listeners cannot change while the proxy runs",
        ] {
            assert!(lines[3].contains(part), "{part} missing: {text}");
        }
        assert!(lines[3].ends_with('…'), "{text}");
    }

    #[test]
    fn a_proxy_is_found_by_name_or_name_and_namespace() {
        let json = sample();
        assert_eq!(
            find_admin(&json, "web-0").unwrap(),
            "127.0.0.1:15000".parse::<SocketAddr>().unwrap()
        );
        assert!(find_admin(&json, "web-0.test").is_ok());
        let unknown = find_admin(&json, "web-0.prod").unwrap_err().to_string();
        assert!(unknown.contains("knows no proxy web-0.prod"), "{unknown}");
        let no_admin = find_admin(&json, "client-0").unwrap_err().to_string();
        assert!(no_admin.contains("give it with --admin"), "{no_admin}");
    }

    #[test]
    fn multi_line_reasons_fold_onto_one_line() {
        let reason = "invalid config:\npush v3:1:20: services[0].ports[0].port: must be 1-65535\npush v3:1:40: timeouts.request: not a duration\n";
        assert_eq!(
            first_line(reason, 200),
            "invalid config push v3:1:20: services[0].ports[0].port: must be 1-65535 (+1 more)"
        );
    }
}
