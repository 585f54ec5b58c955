"""Before a run: the tools, the nginx stream module, matplotlib, and the release build."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .contenders import STREAM_MODULE


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def tools(modes, netns, pin):
    need = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy"}
    if "h2" in modes:
        need["h2load"] = "nghttp2-client"
    if "l4" in modes or netns:
        need.update(ip="iproute2", iptables="iptables")
    if pin != "none":
        need["taskset"] = "util-linux"
    missing = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: missing tools and not root: apt-get install {' '.join(missing)}")
    say(f"installing the contenders and load generators from Debian's packages: {' '.join(missing)}")
    apt_install(missing)
    still = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool)})
    if still:
        sys.exit(f"bench: installing {' '.join(still)} with apt-get failed (see above)")


def apt_install(packages):
    """apt-get install, with an `apt-get update` and a second try when the package lists are
    missing or stale (a fresh machine has none)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        subprocess.run(install, env=env)


def stream_module():
    """nginx-light has no `stream` module; Debian ships it on its own as libnginx-mod-stream."""
    if STREAM_MODULE.exists():
        return None
    if os.geteuid() != 0:
        return f"nginx has no stream module ({STREAM_MODULE}): apt-get install libnginx-mod-stream (nginx runs without L4)"
    say("nginx has no stream module (nginx-light leaves it out) and the L4 run needs it: "
        "installing libnginx-mod-stream with apt-get")
    apt_install(["libnginx-mod-stream"])
    if not STREAM_MODULE.exists():
        return f"installing libnginx-mod-stream failed: nginx runs without L4"
    return None


def matplotlib():
    """The chart needs matplotlib: installed from PyPI into this Python when missing. A failure
    only costs the chart."""
    try:
        import matplotlib  # noqa: F401
        return None
    except ImportError:
        pass
    say(f"installing matplotlib from PyPI for the chart ({sys.executable} -m pip install matplotlib)")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "matplotlib"]
    if subprocess.run(pip).returncode != 0 and subprocess.run(pip + ["--break-system-packages"]).returncode != 0:
        return "matplotlib could not be installed: no chart (python3 -m pip install matplotlib)"
    import importlib
    importlib.invalidate_caches()
    return None


def target_dir(root):
    """Where cargo puts its output: honours CARGO_TARGET_DIR and build.target-dir."""
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
                         cwd=root, capture_output=True, text=True)
    if out.returncode == 0:
        return Path(json.loads(out.stdout)["target_directory"])
    env = os.environ.get("CARGO_TARGET_DIR")
    return (root / env) if env else root / "target"


def build(root, pgo=False):
    # Two builds, not one: built together, the load generator would change the features (and
    # so the symbol names) of the dependencies it shares with trellis, the binary would differ
    # from what `cargo run --release -- up` builds, and the linker's function order
    # (crates/trellis/hot-functions.txt) would no longer match its names.
    say("cargo build --release (trellis and trellis-proxy; then trellis-loadgen)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "trellis"], cwd=root, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "trellis-loadgen"], cwd=root, check=True)
    if pgo:
        say("scripts/build-pgo (instrumented build, training, profile-guided build, its function order: 12-15 minutes)")
        subprocess.run([root / "scripts" / "build-pgo"], cwd=root, check=True)


# A fresh list has all but a handful of its Rust names in the binary (2026-11-27: 1,694 of
# 1,702); the list of the commit before a small change had 1,557, and idle RSS rose by 1.5 MB.
ORDER_FRESH = 0.97


def order_coverage(listed, present):
    """How much of the linker's function order (crates/trellis/hot-functions.txt, `listed`) a
    binary's symbols (`present`) still hold: (Rust names found, Rust names listed, others found,
    others listed). Only Rust names (`_ZN`, `_R`) tell whether the list is stale: the others
    are C functions, aws-lc's (in the binary whatever the code) and libc's (never in it)."""
    rust = [n for n in listed if n.startswith(("_ZN", "_R"))]
    other = [n for n in listed if not n.startswith(("_ZN", "_R"))]
    return (sum(n in present for n in rust), len(rust), sum(n in present for n in other), len(other))


def order_file(root, binary, path=None):
    """The "linker order" line of a run's facts, starting with STALE when the list no longer
    matches the code: a stale list raises the proxies' RSS and moves their CPU figures. `path`:
    another list than crates/trellis/hot-functions.txt (scripts/build-pgo makes its own)."""
    own = path is None
    path = path or root / "crates/trellis/hot-functions.txt"
    listed = [n for n in path.read_text().splitlines() if n]
    nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True)
    if nm.returncode != 0:
        return "unknown (nm failed)"
    present = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    rust_found, rust, other_found, other = order_coverage(listed, present)
    name = path.relative_to(root) if path.is_relative_to(root) else path
    line = (f"{rust_found} of the {rust} Rust functions in {name} are in trellis-proxy "
            f"(and {other_found} of {other} C functions: aws-lc's are, libc's never)")
    if rust and rust_found < ORDER_FRESH * rust:
        again = ("bench/instructions --mode l7 --mode l4 --mode h2 --order-file crates/trellis/hot-functions.txt, "
                 "then rebuild" if own else "scripts/build-pgo")
        line = (f"STALE: {line}; the code changed since the list was made, so idle RSS and CPU read high. "
                f"Regenerate: {again}")
    return line


def host_gauge(repeats=3):
    """How fast this host runs right now, in two figures that do not depend on the code under
    test: nanoseconds per system call (`getppid`, from Python, so ~60 ns of it is Python's own)
    and per step of a plain Python loop; the least of `repeats` tries each. Both rise when the
    host is busy or throttled (the VM shows no steal for a neighbour on the same core), so two
    runs on the same CPU type can be compared: bench/README.md, twenty-first session."""

    def least(fn, n):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn(n)
            best = min(best, (time.perf_counter() - t) / n * 1e9)
        return best

    def syscalls(n):
        for _ in range(n):
            os.getppid()

    def steps(n):
        total = 0
        for i in range(n):
            total += i
        return total

    return {"syscall_ns": round(least(syscalls, 100_000)), "loop_ns": round(least(steps, 1_000_000))}
