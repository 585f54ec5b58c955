"""The load: wrk (closed loop, HTTP/1.1 keep-alive), h2load (closed loop, HTTP/2 prior knowledge,
multiplexed) and trellis-loadgen (open loop at a fixed rate). Each runs at the client's place
and returns a dict of figures; latencies are in milliseconds."""
import json
import re
import subprocess
from pathlib import Path

# wrk's own percentiles are 50/75/90/99; this prints the ones the report uses from its
# histogram at the end of the run (no per-request Lua, so it costs the client nothing).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  for _, q in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("percentile %g %d\\n", q, latency:percentile(q)))
  end
end
"""


def wrk(place, url, host, seconds, work, conns=16):
    script = Path(work) / "percentiles.lua"
    script.write_text(WRK_SCRIPT)
    args = place.prefix() + ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(script), url]
    if host:
        args[-1:-1] = ["-H", f"Host: {host}"]
    out = run(args, seconds)
    return parse_wrk(out)


def parse_wrk(out):
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise LoadError(f"wrk printed no result: {out.strip()[-300:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {f"p{q}": int(us) / 1000.0 for q, us in re.findall(r"^percentile ([\d.]+) (\d+)$", out, re.M)}
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)),
            "errors": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
            "latency_ms": lat, "raw": out}


def h2load(place, url, authority, seconds, work, conns=16, streams=10, warmup=0):
    """h2load -t1 -cC -mM for `seconds` (after `warmup`), HTTP/2 prior knowledge; latency
    percentiles from its per-request log."""
    log = Path(work) / "h2load.log"
    args = place.prefix() + ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{seconds}",
                             f"--log-file={log}", url]
    if warmup:
        args[-1:-1] = [f"--warm-up-time={warmup}"]
    if authority:
        args[-1:-1] = ["-H", f":authority: {authority}"]
    out = run(args, seconds + warmup)
    result = parse_h2load(out)
    result["latency_ms"] = log_percentiles(log)
    log.unlink(missing_ok=True)
    return result


def parse_h2load(out):
    done = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not done or not req:
        raise LoadError(f"h2load printed no result: {out.strip()[-300:]}")
    failed = int(req.group(5)) + int(req.group(6)) + int(req.group(7))
    non2xx = sum(int(x) for x in codes.groups()[1:]) if codes else 0
    return {"rps": float(done.group(3)), "requests": int(req.group(4)), "errors": non2xx,
            "socket_errors": failed, "raw": out}


def log_percentiles(log):
    """p50/p90/p99/p99.9 of h2load's --log-file (start µs, status, duration µs per request)."""
    try:
        durations = sorted(int(line.split("\t")[2]) for line in Path(log).read_text().splitlines() if line)
    except (OSError, IndexError, ValueError):
        return {}
    return percentiles_ms(durations)


def percentiles_ms(sorted_us):
    if not sorted_us:
        return {}
    pick = lambda q: sorted_us[min(len(sorted_us) - 1, int(q / 100 * len(sorted_us)))] / 1000.0
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "p99.9": pick(99.9)}


def fixed_rate(place, loadgen, addr, host, seconds, rate=1000, conns=16, warmup=None):
    """Open-loop latency at a fixed rate (coordinated omission corrected): bench/loadgen.
    `warmup`: seconds at the rate before measuring (the load generator's default when None)."""
    args = place.prefix() + [str(loadgen), "--addr", addr, "--rate", str(rate), "--connections", str(conns),
                             "--seconds", str(seconds)]
    if warmup is not None:
        args += ["--warmup", str(warmup)]
    if host:
        args += ["--host", host]
    return json.loads(run(args, seconds + 2))


class LoadError(Exception):
    pass


def run(args, seconds):
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise LoadError(f"`{args[0]}` hung ({seconds}s of load, killed after {seconds + 30}s)") from None
    if r.returncode != 0:
        raise LoadError(f"`{' '.join(map(str, args))}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
    return r.stdout
