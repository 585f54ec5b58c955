"""Before a run: the tools, the nginx stream module, matplotlib, and the release build."""
import json
import os
import shutil
import subprocess
import sys
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
    missing = [pkg for tool, pkg in need.items() if not shutil.which(tool)]
    if missing:
        sys.exit(f"bench: missing tools: apt-get install {' '.join(sorted(set(missing)))}")


def stream_module():
    """nginx-light has no `stream` module; Debian ships it on its own as libnginx-mod-stream."""
    if STREAM_MODULE.exists():
        return None
    if os.geteuid() != 0:
        return f"nginx has no stream module ({STREAM_MODULE}): apt-get install libnginx-mod-stream (nginx runs without L4)"
    say("nginx has no stream module (nginx-light leaves it out) and the L4 run needs it: "
        "installing libnginx-mod-stream with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libnginx-mod-stream"]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        subprocess.run(install, env=env)
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


def build(root):
    # Two builds, not one: built together, the load generator would change the features (and
    # so the symbol names) of the dependencies it shares with trellis, the binary would differ
    # from what `cargo run --release -- up` builds, and the linker's function order
    # (crates/trellis/hot-functions.txt) would no longer match its names.
    say("cargo build --release (trellis and trellis-proxy; then trellis-loadgen)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "trellis"], cwd=root, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "trellis-loadgen"], cwd=root, check=True)
