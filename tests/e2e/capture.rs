//! Transparent capture between "pods": a real mesh on one machine. Three network namespaces
//! on a bridge (see `trellis_test_support::pods`):
//!
//! - `client`: apps that know nothing of proxies (curl, Python's urllib, grpcio, a raw
//!   socket) beside a sidecar; `trellis iptables apply` sends their connections to it.
//! - `web`: the demo app (HTTP on 8080, the banner-then-echo TCP service on 9000, gRPC on
//!   50051 when a test asks for it) beside a sidecar in STRICT mTLS (but 9000 PERMISSIVE),
//!   capture on too.
//! - `outside`: a demo app outside the mesh, no sidecar, no rules.
//!
//! The client's sidecar knows the service `web` by its virtual address (what `web` resolves
//! to in every pod's /etc/hosts); its endpoint is the web pod, reached over mTLS on 15008.
//! Root only (CI runs as root); elsewhere the tests say they skipped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use trellis_test_support::pcap::{TLS_1_3, contains, tcp_stream, tls_summary};
use trellis_test_support::{
    CommandOutput, DemoApp, DemoOptions, NetNs, Node, Packet, Pod, ProxyProcess, PyPeer, Transport,
    repo_root, require_python_module, require_tool, run,
};

use crate::{log_str, trellis};

const GRPC_PEER: &str = "tests/peers/grpc_peer.py";
const MESH_PORT: u16 = 15008;

/// The three pods and what runs in them. Fields drop in order: processes, then pods, then
/// the node (the bridge).
struct Mesh {
    web_app: DemoApp,
    web_grpc: Option<PyPeer>,
    web_proxy: ProxyProcess,
    client_proxy: ProxyProcess,
    outside_app: DemoApp,
    client: Pod,
    web: Pod,
    outside: Pod,
    node: Node,
}

/// Builds the mesh, or `None` (the test skipped) without root or one of `tools`.
fn mesh(label: &str, grpc: bool, tools: &[&str]) -> Option<Mesh> {
    let mut node = Node::create(label, &trellis())?;
    if !tools.iter().all(|tool| require_tool(tool)) {
        return None;
    }
    if grpc && !require_python_module("grpc") {
        return None;
    }
    let client = node.pod("client");
    let web = node.pod("web");
    let outside = node.pod("outside");
    let web_vip = node.service("web");
    node.host("outside", outside.ip());
    let any = |port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);

    // The web pod: the app on all its addresses, its sidecar, then capture.
    let web_app = DemoOptions::new("web")
        .http_addr(any(8080))
        .tcp_addr(any(9000))
        .start(web.trellis());
    let web_grpc = grpc.then(|| {
        PyPeer::start_with(
            web.exec("python3", &[]),
            GRPC_PEER,
            &["server", "--host", "0.0.0.0", "--port", "50051"],
        )
    });
    let web_proxy = node.sidecar(
        &web,
        &format!(
            "mtls: strict
app:
  address: {ip}
  ports:
    - {{ port: 8080, protocol: http }}
    - {{ port: 9000, protocol: tcp, mtls: permissive }}
    - {{ port: 50051, protocol: grpc }}
",
            ip = web.ip()
        ),
    );
    web.capture(&[]);

    // The client pod: only a sidecar (the clients are run by each test), then capture.
    let client_proxy = node.sidecar(
        &client,
        &format!(
            "services:
  - name: web
    namespace: test
    addresses: [ {web_vip} ]
    ports:
      - {{ name: http, port: 80, protocol: http }}
      - {{ name: echo, port: 9000, protocol: tcp }}
      - {{ name: grpc, port: 50051, protocol: grpc }}
    endpoints:
      - address: {ip}
        ports: {{ http: 8080, echo: 9000, grpc: 50051 }}
        mesh: {ip}:{MESH_PORT}
        workload: web
        identity: {id}
",
            ip = web.ip(),
            id = Node::spiffe_id("web"),
        ),
    );
    client.capture(&[]);

    // Outside the mesh: an app and nothing else.
    let outside_app = DemoOptions::new("outside")
        .http_addr(any(8000))
        .start(outside.trellis());

    Some(Mesh {
        web_app,
        web_grpc,
        web_proxy,
        client_proxy,
        outside_app,
        client,
        web,
        outside,
        node,
    })
}

impl Mesh {
    fn diagnostics(&self) -> String {
        let grpc = self
            .web_grpc
            .as_ref()
            .map(PyPeer::diagnostics)
            .unwrap_or_default();
        format!(
            "{}{}{}{}{grpc}",
            self.client_proxy.diagnostics(),
            self.web_proxy.diagnostics(),
            self.web_app.diagnostics(),
            self.outside_app.diagnostics(),
        )
    }

    /// `curl -sS ARGS` in `pod`; the answer as JSON, or a panic with everything known.
    fn curl_json(&self, pod: &Pod, args: &[&str]) -> Value {
        let mut all = vec!["-sS", "-m", "10"];
        all.extend(args);
        let out = run("curl", pod.exec("curl", &all), Duration::from_secs(15));
        self.json(&out, &format!("curl {args:?} in {}", pod.name()))
    }

    fn json(&self, out: &CommandOutput, what: &str) -> Value {
        serde_json::from_str(out.stdout_text().trim()).unwrap_or_else(|e| {
            panic!(
                "{what}: not JSON ({e}), exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                out.status,
                out.stdout_text(),
                out.stderr,
                self.diagnostics()
            )
        })
    }

    /// The access log lines of `proxy` for `path`.
    fn logged(proxy: &ProxyProcess, path: &str) -> Vec<Value> {
        proxy
            .access_log()
            .into_iter()
            .filter(|line| log_str(line, "path") == path)
            .collect()
    }
}

/// Sends one UDP datagram from `from` to `to` whose payload no other packet carries, and
/// returns that payload: once a capture has it, it has everything sent before.
fn mark(from: &Pod, to: Ipv4Addr) -> Vec<u8> {
    let marker = format!("trellis-marker-{}-{}", std::process::id(), from.name());
    let script = format!(
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{marker}', ('{to}', 9))\n"
    );
    let out = run(
        "marker",
        from.exec("python3", &["-c", &script]),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "marker: {}", out.stderr);
    marker.into_bytes()
}

/// What [`banner_echo`] gets from the web app's TCP service.
const BANNER_ECHO: &str = "b'trellis-demo web tcp\\r\\n' b'ping\\n'";

/// In `pod`, connects to `host:port` (a raw socket, no HTTP), reads the banner, sends
/// `ping\n` and reads the echo; returns both as Python byte literals, or what went wrong.
fn banner_echo(pod: &Pod, host: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{host}', {port}), timeout=10)\n\
         banner = s.recv(100)\n\
         s.sendall(b'ping\\n')\n\
         echo = b''\n\
         while len(echo) < 5:\n\
         \x20   chunk = s.recv(100)\n\
         \x20   if not chunk: break\n\
         \x20   echo += chunk\n\
         print(repr(banner), repr(echo))\n"
    );
    let out = run(
        "tcp client",
        pod.exec("python3", &["-c", &script]),
        Duration::from_secs(15),
    );
    format!("{}{}", out.stdout_text().trim(), out.stderr.trim())
}

/// The client side of each TCP connection among `packets` from `client` to `server`.
fn connections(packets: &[Packet], client: IpAddr, server: SocketAddr) -> Vec<SocketAddr> {
    let mut seen = Vec::new();
    for p in packets {
        if p.transport == Transport::Tcp
            && p.src.ip() == client
            && p.dst == server
            && !seen.contains(&p.src)
        {
            seen.push(p.src);
        }
    }
    seen
}

#[test]
fn unmodified_clients_call_a_service_by_name_and_pods_speak_only_tls_1_3() {
    let Some(m) = mesh("names", false, &["curl", "python3", "tcpdump"]) else {
        return;
    };
    let Some(capture) = m.node.capture() else {
        return;
    };

    // curl, by the service's short name.
    let body = m.curl_json(&m.client, &["http://web/?from=curl"]);
    assert_eq!(body["service"], "web", "{body}\n{}", m.diagnostics());
    assert_eq!(body["path"], "/?from=curl", "{body}");
    assert_eq!(body["authority"], "web", "{body}");

    // Python's standard library, by another of its names.
    let script = "import json, urllib.request\n\
                  with urllib.request.urlopen('http://web.test/?from=python', timeout=10) as r:\n\
                  \x20   print(r.read().decode())\n";
    let out = run(
        "python urllib",
        m.client.exec("python3", &["-c", script]),
        Duration::from_secs(15),
    );
    let body = m.json(&out, "python urllib");
    assert_eq!(body["service"], "web", "{body}");
    assert_eq!(body["path"], "/?from=python", "{body}");

    // Each request went through both sidecars, authenticated by certificate.
    for path in ["/?from=curl", "/?from=python"] {
        let line = m
            .web_proxy
            .wait_access_log(path, |l| log_str(l, "path") == path);
        assert_eq!(
            log_str(&line, "source_principal"),
            Node::spiffe_id("client"),
            "{line}"
        );
        let line = m
            .client_proxy
            .wait_access_log(path, |l| log_str(l, "path") == path);
        assert_eq!(
            log_str(&line, "destination_service"),
            "web.test.svc.cluster.local",
            "{line}"
        );
    }

    // And one plaintext call outside the mesh, so the capture must show plaintext somewhere.
    let body = m.curl_json(&m.client, &["http://outside:8000/?plaintext-control"]);
    assert_eq!(body["service"], "outside", "{body}");

    let marker = mark(&m.client, m.web.ip());
    let packets =
        capture.finish_after(|p| p.transport == Transport::Udp && contains(&p.payload, &marker));
    let (a, b) = (IpAddr::V4(m.client.ip()), IpAddr::V4(m.web.ip()));
    let between: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.transport == Transport::Tcp && p.between(a, b))
        .collect();
    assert!(!between.is_empty(), "no TCP between the pods was captured");
    // Only the mesh port between the pods: the apps' ports never appear on the wire.
    for p in &between {
        assert!(
            p.has_port(MESH_PORT),
            "TCP between the pods not on {MESH_PORT}: {} -> {}",
            p.src,
            p.dst
        );
    }
    // Every connection is TLS 1.3: a ClientHello, a ServerHello choosing 0x0304, and only
    // encrypted records after it.
    let mesh = SocketAddr::new(b, MESH_PORT);
    let conns = connections(&packets, a, mesh);
    assert!(!conns.is_empty(), "no connection to {mesh}");
    for conn in conns {
        let tls = tls_summary(
            &tcp_stream(&packets, conn, mesh),
            &tcp_stream(&packets, mesh, conn),
        );
        assert!(
            tls.client_hello,
            "{conn} -> {mesh}: no ClientHello: {tls:?}"
        );
        assert_eq!(tls.server_version, Some(TLS_1_3), "{conn}: {tls:?}");
        assert!(
            tls.server_records_after_hello.contains(&23)
                && tls.client_records_after_hello.contains(&23),
            "{conn}: no application data records: {tls:?}"
        );
        for kind in tls
            .server_records_after_hello
            .iter()
            .chain(&tls.client_records_after_hello)
        {
            // 23 application data; 20 is the compatibility ChangeCipherSpec.
            assert!(
                matches!(kind, 20 | 23),
                "{conn}: clear record type {kind}: {tls:?}"
            );
        }
    }
    // No plaintext HTTP between the pods, in any packet.
    let plaintext: [&[u8]; 4] = [b"HTTP/1.1", b"GET /", b"?from=", b"\"service\""];
    for p in &between {
        for needle in plaintext {
            assert!(
                !contains(&p.payload, needle),
                "plaintext {:?} between the pods: {} -> {}",
                String::from_utf8_lossy(needle),
                p.src,
                p.dst
            );
        }
    }
    // The control: the call outside the mesh is plaintext on the same link.
    let outside = IpAddr::V4(m.outside.ip());
    assert!(
        packets
            .iter()
            .any(|p| p.between(a, outside) && contains(&p.payload, b"GET /?plaintext-control")),
        "the capture did not see the plaintext call outside the mesh"
    );
}

#[test]
fn grpc_and_a_server_first_tcp_protocol_work_through_capture() {
    let Some(m) = mesh("grpc", true, &["python3"]) else {
        return;
    };
    // grpcio, knowing nothing of proxies; the native resolver reads /etc/hosts.
    let mut grpc = m
        .client
        .exec("env", &["GRPC_DNS_RESOLVER=native", "python3", "-u"]);
    grpc.arg(repo_root().join(GRPC_PEER))
        .args(["client", "--target", "web:50051"]);
    let out = run("grpc client", grpc, Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout_text().contains("OK"),
        "grpc client failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
        out.status,
        out.stdout_text(),
        out.stderr,
        m.diagnostics()
    );
    let line = m.web_proxy.wait_access_log("a gRPC call", |l| {
        log_str(l, "path") == "/trellis.test.Echo/Unary"
    });
    assert_eq!(log_str(&line, "protocol"), "grpc", "{line}");

    // The demo app's TCP service speaks first (a banner), then echoes; declared `tcp`.
    let said = banner_echo(&m.client, "web", 9000);
    assert_eq!(said, BANNER_ECHO, "{}", m.diagnostics());
    let line = m.client_proxy.wait_access_log("the TCP connection", |l| {
        log_str(l, "kind") == "tcp" && !log_str(l, "destination_service").is_empty()
    });
    assert_eq!(
        log_str(&line, "destination_service"),
        "web.test.svc.cluster.local",
        "{line}"
    );
    assert_eq!(
        log_str(&line, "upstream_host"),
        format!("{}:{MESH_PORT}", m.web.ip()),
        "{line}"
    );
}

#[test]
fn calls_outside_the_mesh_pass_through_to_the_original_destination() {
    let Some(m) = mesh("passthrough", false, &["curl"]) else {
        return;
    };
    let outside = format!("{}:8000", m.outside.ip());
    let body = m.curl_json(&m.client, &["http://outside:8000/?out"]);
    assert_eq!(body["service"], "outside", "{body}");
    let line = m
        .client_proxy
        .wait_access_log("/?out", |l| log_str(l, "path") == "/?out");
    assert_eq!(log_str(&line, "upstream_host"), outside, "{line}");

    // The original destination decides, not the Host header: a name the proxy cannot
    // resolve (or one that points elsewhere) still reaches the server the app connected to.
    let body = m.curl_json(
        &m.client,
        &[
            "-H",
            "Host: elsewhere.invalid",
            "http://outside:8000/?by-host",
        ],
    );
    assert_eq!(body["service"], "outside", "{body}");
    assert_eq!(body["authority"], "elsewhere.invalid", "{body}");
    let line = m
        .client_proxy
        .wait_access_log("/?by-host", |l| log_str(l, "path") == "/?by-host");
    assert_eq!(log_str(&line, "upstream_host"), outside, "{line}");
}

#[test]
fn the_proxys_own_connections_and_the_apps_loopback_are_not_captured() {
    let Some(m) = mesh("loops", false, &["curl"]) else {
        return;
    };
    // One request, one hop at each sidecar: the web sidecar's connection to its app (from
    // the proxy's uid, to the pod's own address) is not captured back into itself.
    let body = m.curl_json(&m.client, &["http://web/?once"]);
    assert_eq!(body["service"], "web", "{body}\n{}", m.diagnostics());
    m.web_proxy
        .wait_access_log("/?once", |l| log_str(l, "path") == "/?once");
    m.client_proxy
        .wait_access_log("/?once", |l| log_str(l, "path") == "/?once");

    // The proxy's user goes straight out; the app's connection to the same place is captured.
    let out = run(
        "curl as the proxy's uid",
        m.client.exec_as_proxy(
            "curl",
            &["-sS", "-m", "10", "http://outside:8000/?as-proxy-user"],
        ),
        Duration::from_secs(15),
    );
    assert_eq!(m.json(&out, "curl as uid 1337")["service"], "outside");
    let body = m.curl_json(&m.client, &["http://outside:8000/?as-app"]);
    assert_eq!(body["service"], "outside", "{body}");
    m.client_proxy
        .wait_access_log("/?as-app", |l| log_str(l, "path") == "/?as-app");

    // The web app calling itself, by localhost and by its own address: not captured.
    for url in [
        "http://127.0.0.1:8080/?self-loopback".to_owned(),
        format!("http://{}:8080/?self-own-address", m.web.ip()),
    ] {
        let body = m.curl_json(&m.web, &[&url]);
        assert_eq!(body["service"], "web", "{url}: {body}");
    }
    // Something that is logged, after them: their lines would be there by now.
    m.curl_json(&m.client, &["http://web/?after"]);
    m.web_proxy
        .wait_access_log("/?after", |l| log_str(l, "path") == "/?after");

    assert_eq!(Mesh::logged(&m.web_proxy, "/?once").len(), 1);
    assert_eq!(Mesh::logged(&m.client_proxy, "/?once").len(), 1);
    assert!(Mesh::logged(&m.client_proxy, "/?as-proxy-user").is_empty());
    for path in ["/?self-loopback", "/?self-own-address"] {
        assert!(
            Mesh::logged(&m.web_proxy, path).is_empty(),
            "{path} was captured:\n{}",
            m.web_proxy.diagnostics()
        );
    }
}

#[test]
fn clients_outside_the_mesh_are_captured_inbound_and_strict_ports_refuse_them() {
    let Some(m) = mesh("inbound", false, &["curl", "python3"]) else {
        return;
    };
    // The outside pod has no sidecar: plaintext to the web pod's own address, captured by
    // the web pod's inbound rules. Port 8080 is STRICT: refused, and said so.
    let url = format!("http://{}:8080/?from-outside", m.web.ip());
    let out = run(
        "curl from outside",
        m.outside.exec(
            "curl",
            &[
                "-sS",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        ),
        Duration::from_secs(15),
    );
    assert_eq!(
        out.stdout_text(),
        "403",
        "{}\n{}",
        out.stderr,
        m.diagnostics()
    );
    let line = m.web_proxy.wait_access_log("the refused request", |l| {
        log_str(l, "path") == "/?from-outside"
    });
    assert_eq!(log_str(&line, "reporter"), "destination", "{line}");
    assert_eq!(
        log_str(&line, "downstream_remote_address")
            .split(':')
            .next(),
        Some(m.outside.ip().to_string().as_str()),
        "{line}"
    );

    // Port 9000 is PERMISSIVE: relayed to the app.
    let said = banner_echo(&m.outside, &m.web.ip().to_string(), 9000);
    assert_eq!(said, BANNER_ECHO, "{}", m.diagnostics());
    let line = m.web_proxy.wait_access_log("the relayed connection", |l| {
        log_str(l, "kind") == "tcp" && log_str(l, "reporter") == "destination"
    });
    assert_eq!(
        log_str(&line, "upstream_host"),
        format!("{}:9000", m.web.ip()),
        "{line}"
    );
}

/// `iptables-save` and `ip6tables-save` of every table, without what changes by itself
/// (the `#` lines with dates, the `[packets:bytes]` counters).
fn tables(ns: &NetNs, backend: &str) -> String {
    let mut out = String::new();
    for family in ["iptables", "ip6tables"] {
        let text = ns.output(&format!("{family}-{backend}-save"), &[]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.find(" [") {
                Some(at) if line.starts_with(':') => &line[..at],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn iptables_apply_is_idempotent_and_clean_restores_the_tables_exactly() {
    for backend in ["nft", "legacy"] {
        let Some(ns) = NetNs::create(&format!("iptables-{backend}")) else {
            return;
        };
        if !require_tool(&format!("iptables-{backend}-save")) {
            return;
        }
        // Rules of someone else's, in the tables we touch and in one we do not.
        for (family, args) in [
            ("iptables", "-t nat -A OUTPUT -d 192.0.2.0/24 -j RETURN"),
            ("iptables", "-t nat -A PREROUTING -p udp -j ACCEPT"),
            ("iptables", "-A INPUT -p tcp --dport 22 -j ACCEPT"),
            ("ip6tables", "-t nat -A OUTPUT -d 2001:db8::/32 -j RETURN"),
        ] {
            let args: Vec<&str> = args.split(' ').collect();
            ns.output(&format!("{family}-{backend}"), &args);
        }
        let before = tables(&ns, backend);
        let trellis = trellis().in_netns(&ns);
        let iptables = |args: &[&str]| {
            let mut command = trellis.command();
            command.arg("iptables").args(args);
            let out = run("trellis iptables", command, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "trellis iptables {args:?} ({backend}): {}",
                out.stderr
            );
            out.stdout_text()
        };
        let options = [
            "--backend",
            backend,
            "--ipv6",
            "--proxy-uid",
            "1337",
            "--proxy-gid",
            "1337",
            "--exclude-inbound-ports",
            "15000,15020",
            "--exclude-outbound-cidrs",
            "169.254.169.254,fd00::1",
        ];

        // A dry run says what it would do and does nothing.
        let dry = iptables(&[&["apply", "--dry-run"][..], &options].concat());
        assert!(dry.contains(":TRELLIS_OUTPUT - [0:0]"), "{dry}");
        assert_eq!(
            tables(&ns, backend),
            before,
            "{backend}: the dry run changed the tables"
        );

        // Applied: every rule `print` shows is there, as iptables-save prints it.
        iptables(&[&["apply"][..], &options].concat());
        let applied = tables(&ns, backend);
        let printed = iptables(&[&["print"][..], &options].concat());
        for rule in printed.lines().filter(|l| l.starts_with("-A")) {
            assert!(
                applied.lines().any(|l| l == rule),
                "{backend}: {rule:?} is not installed as printed:\n{applied}"
            );
        }
        assert!(applied.contains(":TRELLIS_IN_REDIRECT -"), "{applied}");

        // Twice is once.
        iptables(&[&["apply"][..], &options].concat());
        assert_eq!(
            tables(&ns, backend),
            applied,
            "{backend}: apply twice differs"
        );

        // Clean leaves exactly what was there before; cleaning again is a no-op.
        iptables(&["clean", "--ipv6", "--backend", backend]);
        assert_eq!(
            tables(&ns, backend),
            before,
            "{backend}: clean left a difference"
        );
        iptables(&["clean", "--ipv6", "--backend", backend]);
        assert_eq!(
            tables(&ns, backend),
            before,
            "{backend}: second clean changed something"
        );
    }
}
