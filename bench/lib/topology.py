"""Where the processes of a run live.

Four roles: the client (wrk, h2load, trellis-loadgen), proxy A (the client's sidecar), proxy B
(the server's) and the server (nginx with a 1 KiB body). A topology puts each role in a network
namespace (or this one) and says which address side B has as seen from side A; the pinning mode
puts each role on cores.

- loopback: everything on this namespace's loopback (no root needed).
- loopback with capture (the L4 runs): everything in one private namespace on its loopback,
  with the service address 10.96.0.10 on lo and an iptables REDIRECT of 10.96.0.10:80 to proxy
  A's capture port: Trellis routes opaque TCP by the original destination, which only transparent
  capture gives it.
- netns: side A (client, proxy A) and side B (proxy B, server) in two namespaces joined by a veth
  pair, 10.77.0.1/24 and 10.77.0.2/24, as pods on two nodes; the same REDIRECT in A.
"""
import os
import re
import socket
import subprocess

VIP = "10.96.0.10"  # the service's address that L4 clients connect to (port 80)
CAPTURE_PORT = 15001  # proxy A's capture port in a private namespace (Istio's number)
A_IP, B_IP = "10.77.0.1", "10.77.0.2"
NS_PREFIX = "trellis-bench-"

# Cores per role on a 2-core machine (see bench/README.md, "Pinning").
PIN_MODES = {
    "none": {},
    "client": {"client": "0", "a": "1", "b": "1", "server": "1"},
    "sides": {"client": "0", "a": "0", "b": "1", "server": "1"},
    "proxies": {"client": "0", "server": "0", "a": "1", "b": "1"},
}
# Fixed ports inside private namespaces (nothing else listens there).
FIXED_PORTS = {"server": 8080, "server-h2": 8081, "a": 15006, "b": 15008}


class Place:
    """Where one process runs: a network namespace (None: this one) and the cores it may use."""

    def __init__(self, ns=None, cpus=None):
        self.ns, self.cpus = ns, cpus

    def prefix(self):
        p = ["ip", "netns", "exec", self.ns] if self.ns else []
        return p + (["taskset", "-c", self.cpus] if self.cpus else [])


def sh(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {r.stderr.strip()}")


class Topology:
    """Base: the roles' namespaces, addresses and ports; `with topology:` sets it up and always
    tears it down (also on Ctrl-C or an error)."""

    name = ""
    capture = False  # iptables REDIRECT of VIP:80 to proxy A's CAPTURE_PORT in side A

    def __init__(self, pin="none"):
        self.cpus = PIN_MODES[pin]
        self.ns = {}  # role → namespace name
        self.b_ip = "127.0.0.1"  # proxy B and the server as side A reaches them

    def place(self, role):
        return Place(self.ns.get(role), self.cpus.get(role))

    def port(self, what):
        """A port to listen on: fixed in a private namespace, a free one on this host."""
        if self.ns:
            return FIXED_PORTS[what]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def a_port(self):
        """Proxy A's listening port: the capture port when clients are redirected to it."""
        return CAPTURE_PORT if self.capture else self.port("a")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()

    def teardown(self):
        pass


class Loopback(Topology):
    name = "loopback"


class LoopbackCapture(Topology):
    """Loopback in one private namespace, with transparent capture of VIP:80 (the L4 runs)."""

    name = "loopback"
    capture = True

    def __init__(self, pin="none"):
        super().__init__(pin)
        clean_stale()
        self.one = f"{NS_PREFIX}{os.getpid()}-l4"
        self.ns = dict.fromkeys(("client", "a", "b", "server"), self.one)

    def __enter__(self):
        try:
            sh("ip", "netns", "add", self.one)
            sh("ip", "-n", self.one, "link", "set", "lo", "up")
            sh("ip", "-n", self.one, "addr", "add", f"{VIP}/32", "dev", "lo")
            redirect(self.one)
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self):
        subprocess.run(["ip", "netns", "del", self.one], capture_output=True)


class Netns(Topology):
    """Two namespaces joined by a veth pair: side A (client, proxy A), side B (proxy B, server)."""

    name = "netns"
    capture = True

    def __init__(self, pin="none"):
        super().__init__(pin)
        clean_stale()
        pid = os.getpid()
        self.side = {"a": f"{NS_PREFIX}{pid}-a", "b": f"{NS_PREFIX}{pid}-b"}
        self.ns = {"client": self.side["a"], "a": self.side["a"], "b": self.side["b"], "server": self.side["b"]}
        self.veth = {"a": f"tbv{pid % 100000}a", "b": f"tbv{pid % 100000}b"}
        self.b_ip = B_IP

    def __enter__(self):
        try:
            for ns in self.side.values():
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", self.veth["a"], "type", "veth", "peer", "name", self.veth["b"])
            for s, ip in (("a", A_IP), ("b", B_IP)):
                sh("ip", "link", "set", self.veth[s], "netns", self.side[s])
                sh("ip", "-n", self.side[s], "addr", "add", f"{ip}/24", "dev", self.veth[s])
                sh("ip", "-n", self.side[s], "link", "set", self.veth[s], "up")
            # The service address is routed out of the pod, then captured before it leaves.
            sh("ip", "-n", self.side["a"], "route", "add", f"{VIP}/32", "dev", self.veth["a"])
            redirect(self.side["a"])
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self):
        # Deleting a namespace deletes the veth end in it, and with it the pair.
        for ns in self.side.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth["a"]], capture_output=True)


def redirect(ns):
    """Transparent capture as a sidecar's init step sets it up, narrowed to the one service
    address: connections to VIP:80 from this namespace go to proxy A's capture port."""
    sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", VIP,
       "--dport", "80", "-j", "REDIRECT", "--to-ports", str(CAPTURE_PORT))


def clean_stale():
    """Namespaces left by a bench/run that was killed (SIGKILL skips the teardown)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(rf"^({re.escape(NS_PREFIX)}(\d+)-\w+)", out, re.M):
        ns, pid = name
        if int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def need_root(what):
    if os.geteuid() != 0:
        raise SystemExit(f"bench: {what} needs root (network namespaces, veth, iptables): run it as root, "
                         f"or leave it out")
