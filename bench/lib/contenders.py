"""What runs: the server, and each contender's pair of proxies in three modes.

- l7: HTTP/1.1 from the client to proxy A (explicit proxy, Host header), mTLS between A and B,
  HTTP/1.1 from B to the server.
- h2: the same, but the client speaks HTTP/2 prior knowledge (h2c) to proxy A.
- l4: the client connects to the service address (VIP:80), transparent capture sends it to
  proxy A, which carries the bytes opaquely over mTLS to B, which connects to the server.

Every contender gets the same certificates (ECDSA P-256 from `trellis ca`), TLS 1.3 and one
worker per proxy. A setup function returns a Target: where the client connects, what Host or
:authority it sends, and the proxies' pids (for CPU and RSS).
"""
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from .procs import SetupError
from .topology import VIP

TD = "cluster.local"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def pki(work, trellis):
    """A mesh CA and certificates for the two proxy sides, from `trellis ca` (ECDSA P-256);
    returns the CA's directory."""
    ca = work / "ca"
    subprocess.run([trellis, "ca", "init", "--dir", ca, "--trust-domain", TD], check=True, capture_output=True)
    for sa in ("client", "server"):
        subprocess.run([trellis, "ca", "issue", "--dir", ca, "--id", f"spiffe://{TD}/ns/bench/sa/{sa}",
                        "--out", work / sa], check=True, capture_output=True)
        # haproxy wants certificate and key in one file.
        (work / sa / "haproxy.pem").write_text((work / sa / "cert-chain.pem").read_text() + (work / sa / "key.pem").read_text())
    return ca


@dataclass
class Target:
    ip: str
    port: int
    host: str = None
    pids: list = field(default_factory=list)

    def url(self):
        return f"http://{self.ip}:{self.port}/"


@dataclass
class Ctx:
    """What every setup needs: the run's files, binaries, topology and processes."""
    work: Path
    ca: Path
    trellis: Path
    topo: object
    procs: object
    server_port: int = 0
    server_h2_port: int = 0
    # `bench/run --baseline DIR`: another build's `trellis` (its `trellis-proxy` beside it).
    baseline: Path = None
    # A command the proxies (not the server) run under, e.g. valgrind (bench/instructions).
    wrap: tuple = ()


def server(ctx):
    """The server every contender talks to: nginx, one worker, a 1 KiB body; HTTP/1.1 on one
    port and HTTP/2 prior knowledge on another (nginx 1.22 speaks only h2 on an `http2` port
    without TLS). Listens on loopback, and on side B's address in the netns topology."""
    work = ctx.work
    (work / "www").mkdir(exist_ok=True)
    (work / "www" / "index.html").write_bytes(b"x" * 1024)
    ctx.server_port, ctx.server_h2_port = ctx.topo.port("server"), ctx.topo.port("server-h2")
    ips = sorted({"127.0.0.1", ctx.topo.b_ip})
    listen = "".join(f"listen {ip}:{ctx.server_port}; listen {ip}:{ctx.server_h2_port} http2; " for ip in ips)
    conf = work / "server.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {work}/server.pid; error_log {work}/server.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ {listen} root {work}/www; location / {{ }} }} }}
""")
    proc = ctx.procs.start("server", ["nginx", "-c", conf, "-p", work], ctx.topo.place("server"))
    ctx.procs.wait_listen(proc, ctx.server_port)


def direct(ctx, mode):
    """No proxies: the client talks to the server (the floor)."""
    return Target(ctx.topo.b_ip, ctx.server_h2_port if mode == "h2" else ctx.server_port)


# --- trellis ---------------------------------------------------------------------------------

def trellis(ctx, mode):
    """`trellis proxy` A (explicit outbound listener, or the capture listener for l4) → mTLS
    HTTP/2 mesh transport → `trellis proxy` B (inbound) → server. For l4 the service port is
    declared `tcp`: A carries the bytes in an HTTP/2 CONNECT stream, B relays them. For h2 every
    hop is HTTP/2, the server's included."""
    work, topo = ctx.work, ctx.topo
    a_port, b_mesh = topo.a_port(), topo.port("b")
    # B forwards a request in the protocol the client sent it in (DESIGN §2): for h2 the app
    # port is the server's HTTP/2 one, declared `http2`.
    proto = {"l4": "tcp", "l7": "http", "h2": "http2"}[mode]
    app_port = ctx.server_h2_port if mode == "h2" else ctx.server_port

    def identity(sa):
        return (f"identity: {{ id: 'spiffe://{TD}/ns/bench/sa/{sa}', bundle: {ctx.ca}/root-cert.pem, "
                f"cert: {work}/{sa}/cert-chain.pem, key: {work}/{sa}/key.pem }}\n")
    (work / "trellis-b.yaml").write_text(
        f"node: {{ name: server-0, namespace: bench, workload: server }}\n"
        f"listeners: {{ admin: 127.0.0.1:0, mesh: '{topo.b_ip}:{b_mesh}' }}\n"
        f"mtls: strict\napp: {{ ports: [ {{ port: {app_port}, protocol: {proto} }} ] }}\n" + identity("server"))
    listener = f"outbound_transparent: 127.0.0.1:{a_port}" if mode == "l4" else f"outbound: 127.0.0.1:{a_port}"
    addresses = f"    addresses: [ {VIP} ]\n" if mode == "l4" else ""
    (work / "trellis-a.yaml").write_text(
        f"node: {{ name: client-0, namespace: bench, workload: client }}\n"
        f"listeners: {{ admin: 127.0.0.1:0, {listener} }}\n"
        f"services:\n  - name: server\n    namespace: bench\n{addresses}"
        f"    ports: [ {{ name: p, port: 80, protocol: {proto} }} ]\n"
        f"    endpoints: [ {{ address: 127.0.0.1, ports: {{ p: {app_port} }}, mesh: '{topo.b_ip}:{b_mesh}', "
        f"workload: server, identity: 'spiffe://{TD}/ns/bench/sa/server' }} ]\n" + identity("client"))
    # One worker thread per proxy, as nginx and haproxy get (worker_processes 1, nbthread 1).
    env = dict(os.environ, TOKIO_WORKER_THREADS=os.environ.get("TRELLIS_BENCH_WORKERS", "1"))
    # The sidecar binary (`trellis-proxy`, beside `trellis`): the proxy without the control
    # plane, CA and tools linked in, as a sidecar image would ship it.
    sidecar = Path(ctx.trellis).with_name("trellis-proxy")
    args = ["--no-access-log", "--log-level", "warn", "--config"]
    b = ctx.procs.start("trellis-b", [*ctx.wrap, sidecar, *args, work / "trellis-b.yaml"], topo.place("b"), env=env)
    ctx.procs.wait_listen(b, b_mesh)
    a = ctx.procs.start("trellis-a", [*ctx.wrap, sidecar, *args, work / "trellis-a.yaml"], topo.place("a"), env=env)
    ctx.procs.wait_listen(a, a_port)
    if mode == "l4":
        return Target(VIP, 80, None, [a.pid, b.pid])
    return Target("127.0.0.1", a_port, "server.bench", [a.pid, b.pid])


# --- nginx -----------------------------------------------------------------------------------

NGINX_COMMON = "worker_processes 1; daemon off; events { worker_connections 4096; }"


def nginx(ctx, mode):
    """l7/h2: nginx `proxy_pass https://` with a client certificate and an upstream keepalive
    pool of HTTP/1.1 connections → nginx `ssl_verify_client on` → server (for h2, A's listener
    is `http2`: nginx cannot speak HTTP/2 to an upstream). l4: the `stream` module,
    `proxy_ssl on` with a client certificate → `ssl_verify_client on`, one TLS connection to
    B per client connection."""
    work, topo, ca = ctx.work, ctx.topo, ctx.ca
    a_port, b_port = topo.a_port(), topo.port("b")
    client_tls = (f"proxy_ssl_protocols TLSv1.3; proxy_ssl_certificate {work}/client/cert-chain.pem; "
                  f"proxy_ssl_certificate_key {work}/client/key.pem; proxy_ssl_trusted_certificate {ca}/root-cert.pem; "
                  f"proxy_ssl_verify off; proxy_ssl_session_reuse on;")
    server_tls = (f"ssl_protocols TLSv1.3; ssl_certificate {work}/server/cert-chain.pem; "
                  f"ssl_certificate_key {work}/server/key.pem; ssl_client_certificate {ca}/root-cert.pem; "
                  f"ssl_verify_client on; ssl_verify_depth 3;")
    if mode == "l4":
        if not STREAM_MODULE.exists():
            raise SetupError(f"no nginx stream module at {STREAM_MODULE} (apt-get install libnginx-mod-stream)")
        load = f"load_module {STREAM_MODULE};"
        b_conf = (f"{load} {NGINX_COMMON} pid {work}/nginx-b.pid; error_log {work}/nginx-b.err warn;\n"
                  f"stream {{ server {{ listen {topo.b_ip}:{b_port} ssl; {server_tls}\n"
                  f"  proxy_pass 127.0.0.1:{ctx.server_port}; }} }}\n")
        a_conf = (f"{load} {NGINX_COMMON} pid {work}/nginx-a.pid; error_log {work}/nginx-a.err warn;\n"
                  f"stream {{ server {{ listen 127.0.0.1:{a_port}; proxy_pass {topo.b_ip}:{b_port};\n"
                  f"  proxy_ssl on; {client_tls} }} }}\n")
    else:
        b_conf = f"""{NGINX_COMMON} pid {work}/nginx-b.pid; error_log {work}/nginx-b.err warn;
http {{ access_log off; keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{ctx.server_port}; keepalive 256; }}
  server {{ listen {topo.b_ip}:{b_port} ssl; {server_tls}
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""
        a_conf = f"""{NGINX_COMMON} pid {work}/nginx-a.pid; error_log {work}/nginx-a.err warn;
http {{ access_log off; keepalive_requests 1000000;
  upstream peer {{ server {topo.b_ip}:{b_port}; keepalive 256; }}
  server {{ listen 127.0.0.1:{a_port}{' http2' if mode == 'h2' else ''};
    location / {{ proxy_pass https://peer; proxy_http_version 1.1; proxy_set_header Connection ""; {client_tls} }} }} }}
"""
    # Under a wrapper (valgrind) the one worker is the process started: no master to fork it.
    single = "master_process off; " if ctx.wrap else ""
    (work / "nginx-b.conf").write_text(single + b_conf)
    (work / "nginx-a.conf").write_text(single + a_conf)
    b = ctx.procs.start("nginx-b", [*ctx.wrap, "nginx", "-c", work / "nginx-b.conf", "-p", work], topo.place("b"))
    ctx.procs.wait_listen(b, b_port)
    a = ctx.procs.start("nginx-a", [*ctx.wrap, "nginx", "-c", work / "nginx-a.conf", "-p", work], topo.place("a"))
    ctx.procs.wait_listen(a, a_port)
    return target(ctx, mode, a_port, [a.pid, b.pid])


# --- haproxy ---------------------------------------------------------------------------------

def haproxy(ctx, mode):
    """l7: `server ... ssl crt ... verify required`, `http-reuse always` → `bind ... ssl ...
    verify required` → server, HTTP/1.1 on every hop. h2: HTTP/2 on every hop as with Trellis:
    A's bind is `proto h2`, A → B ALPN h2 (multiplexed), B → server `proto h2`. l4: `mode tcp`,
    TLS with a client certificate between A and B, one TLS connection per client connection."""
    work, topo, ca = ctx.work, ctx.topo, ctx.ca
    a_port, b_port = topo.a_port(), topo.port("b")
    tcp = mode == "l4"
    common = ("global\n  nbthread 1\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n"
              "  ssl-default-server-options ssl-min-ver TLSv1.3\n"
              f"defaults\n  mode {'tcp' if tcp else 'http'}\n  timeout connect 5s\n  timeout client 60s\n"
              f"  timeout server 60s\n" + ("" if tcp else "  http-reuse always\n"))
    h2 = mode == "h2"
    (work / "haproxy-b.cfg").write_text(common +
        f"frontend fe\n  bind {topo.b_ip}:{b_port} ssl crt {work}/server/haproxy.pem ca-file {ca}/root-cert.pem "
        f"verify required{' alpn h2,http/1.1' if h2 else ''}\n"
        f"  default_backend app\nbackend app\n"
        + (f"  server s1 127.0.0.1:{ctx.server_h2_port} proto h2\n" if h2 else f"  server s1 127.0.0.1:{ctx.server_port}\n"))
    (work / "haproxy-a.cfg").write_text(common +
        f"frontend fe\n  bind 127.0.0.1:{a_port}{' proto h2' if h2 else ''}\n  default_backend peer\n"
        f"backend peer\n  server b {topo.b_ip}:{b_port} ssl crt {work}/client/haproxy.pem ca-file {ca}/root-cert.pem "
        f"verify required{' alpn h2' if h2 else ''}\n")
    b = ctx.procs.start("haproxy-b", [*ctx.wrap, "haproxy", "-db", "-f", work / "haproxy-b.cfg"], topo.place("b"))
    ctx.procs.wait_listen(b, b_port)
    a = ctx.procs.start("haproxy-a", [*ctx.wrap, "haproxy", "-db", "-f", work / "haproxy-a.cfg"], topo.place("a"))
    ctx.procs.wait_listen(a, a_port)
    return target(ctx, mode, a_port, [a.pid, b.pid])


def target(ctx, mode, a_port, pids):
    if mode == "l4":
        return Target(VIP, 80, None, pids)
    return Target("127.0.0.1", a_port, None, pids)


def baseline(ctx, mode):
    """Trellis from another build (`bench/run --baseline DIR`), set up exactly as `trellis`: a
    change measured against the code before it, in the same run, interleaved with it. On this
    machine the same binary reads ±10 % from one hour to the next; within a run it does not."""
    return trellis(replace(ctx, trellis=ctx.baseline), mode)


CONTENDERS = {"direct": direct, "trellis": trellis, "baseline": baseline, "nginx": nginx, "haproxy": haproxy}
