"""The Markdown report: the machine, one section per mode (fixed rate, maximum throughput),
the issue's targets with ✓/✗, and what went wrong."""
from . import trials
from .trials import SPREAD

MODES = {
    "l7": "L7: HTTP/1.1 (wrk -t1 -c16, keep-alive, 1 KiB body)",
    "l4": "L4: opaque TCP, service port declared `tcp` (the same HTTP/1.1 load, the proxies see bytes)",
    "h2": "HTTP/2, multiplexed (h2load -t1 -c16 -m10, prior knowledge to proxy A)",
}
QS = ("p50", "p90", "p99", "p99.9")

# Issue 7: for the netns topology (wrk -t1 -c16 -d10s, 1 KiB, one worker per proxy).
TARGETS = {"l7_ratio": 0.38, "l4_ratio": 0.45, "p99_ms": 1.0, "cpu_us": 33.0}
# Issue 7: for any topology (the L7 two-hop mTLS path).
TARGETS_ANY = {"added_p99_ms": 0.25, "vs_nginx_rps": 1.2, "rss_idle_mb": 10.0, "rss_1000rps_mb": 20.0}
REFERENCE = ("issue 7's reference run (netns): direct 66.5k req/s; nginx pair 31.9 % of direct, p99 1.29 ms, "
             "46.9 µs CPU/req; haproxy 30.4 %, 1.33 ms, 49.3 µs; ztunnel pair 37.5 %, 1.29 ms, 39.1 µs")


def by_mode(results):
    out = {}
    for r in results:
        out.setdefault(r["mode"], {})[r["name"]] = r
    return out


def ok(r):
    return r is not None and "failed" not in r


def ratio(a, b, fmt="{:.2f}"):
    return fmt.format(a / b) if a is not None and b else "–"


def mb(xs):
    return "/".join(f"{x / 1024:.1f}" for x in xs or []) or "–"


def fixed_cpu(f):
    return (f or {}).get("proxy_cpu_us_per_req")


def cpu(f):
    c = fixed_cpu(f)
    return f"{c:.1f}" if c is not None else "–"


def cpu_vs(f, nginx):
    theirs = fixed_cpu(nginx.get("fixed")) if ok(nginx) else None
    return ratio(fixed_cpu(f), theirs) if fixed_cpu(f) else "–"


def fixed_table(rs):
    direct = rs.get("direct", {}).get("fixed", {}).get("latency_ms")
    lines = ["| contender | achieved rps | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p90 | "
             "added p99 | added p99.9 | added p99 × nginx | × haproxy | proxy CPU µs/req | × nginx | "
             "RSS at 1,000 rps MB (A/B) |",
             "|" + "---|" * 16]
    added = {}
    for name, r in rs.items():
        if ok(r) and "fixed" in r and direct:
            lat = r["fixed"]["latency_ms"]
            added[name] = {q: lat[q] - direct[q] for q in QS}
    for name, r in rs.items():
        if name not in added:
            continue
        f, lat, add = r["fixed"], r["fixed"]["latency_ms"], added[name]
        vs = lambda o: ratio(add["p99"], added[o]["p99"]) if o in added and added[o]["p99"] > 0 and name != "direct" else "–"
        lines.append(f"| {name} | {f['achieved_rps']:.0f} | {f['errors']} | "
                     + " | ".join(f"{lat[q]:.3f}" for q in QS) + " | "
                     + " | ".join(f"{add[q]:.3f}" for q in QS)
                     + f" | {vs('nginx')} | {vs('haproxy')} | {cpu(f)} | {cpu_vs(f, rs.get('nginx'))} | "
                     + f"{mb(r.get('rss_1000rps_kib'))} |")
    return "\n".join(lines)


def max_table(rs):
    direct = rs.get("direct") if ok(rs.get("direct")) else None
    get = lambda n, k: rs[n][k] if ok(rs.get(n)) else None
    lines = ["| contender | req/s | × direct | × nginx | × haproxy | p50 ms | p90 ms | p99 ms | p99.9 ms | added p99 ms | "
             "proxy CPU µs/req | user / sys µs | × nginx | proxy cores | errors | RSS idle MB (A/B) | "
             "RSS loaded MB (A/B) | private idle MB (A/B) | private loaded MB (A/B) |",
             "|" + "---|" * 19]
    for name, r in rs.items():
        if not ok(r):
            lines.append(f"| {name} | failed: {r.get('failed', '?')[:120]} |" + " |" * 17)
            continue
        lat = r["latency_ms"]
        added = lat.get("p99", 0) - direct["latency_ms"].get("p99", 0) if direct else None
        cpu = r["proxy_cpu_us_per_req"]
        errors = r["errors"] + r["socket_errors"]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {ratio(r['rps'], get('direct', 'rps'))} | {ratio(r['rps'], get('nginx', 'rps'))} | "
            f"{ratio(r['rps'], get('haproxy', 'rps'))} | " + " | ".join(f"{lat[q]:.3f}" if q in lat else "–" for q in QS)
            + f" | {'–' if added is None else f'{added:.3f}'} | {cpu:.1f} | {user_sys(r)} | "
            f"{ratio(cpu, get('nginx', 'proxy_cpu_us_per_req')) if cpu else '–'} | {r['proxy_cores']:.2f} | "
            f"{errors if errors else 0} | {mb(r.get('rss_idle_kib'))} | {mb(r.get('rss_loaded_kib'))} | "
            f"{mb(r.get('anon_idle_kib'))} | {mb(r.get('anon_loaded_kib'))} |")
    return "\n".join(lines)


def user_sys(r):
    """The pair's CPU per request, user and system apart ("–" for direct, or a result from
    before the split was recorded)."""
    user, sys = r.get("proxy_user_us_per_req"), r.get("proxy_sys_us_per_req")
    if user is None or sys is None or not r.get("proxy_cpu_us_per_req"):
        return "–"
    return f"{user:.1f} / {sys:.1f}"


def targets(results, topology):
    """Issue 7's targets against trellis's figures, with nginx's and haproxy's beside them."""
    m = by_mode(results)
    rows = []

    def fig(mode, name, what):
        r, d = m.get(mode, {}).get(name), m.get(mode, {}).get("direct")
        if not ok(r):
            return None
        if what == "ratio":
            return r["rps"] / d["rps"] if ok(d) else None
        if what == "p99":
            return r["latency_ms"].get("p99")
        if what == "added_p99":
            if "fixed" not in r or not ok(d) or "fixed" not in d:
                return None
            return r["fixed"]["latency_ms"]["p99"] - d["fixed"]["latency_ms"]["p99"]
        if what in ("vs_nginx", "vs_haproxy"):
            peer = m.get(mode, {}).get(what[3:])
            return r["rps"] / peer["rps"] if ok(peer) and peer["rps"] else None
        if what == "cpu_vs_nginx":
            peer = m.get(mode, {}).get("nginx")
            return r["proxy_cpu_us_per_req"] / peer["proxy_cpu_us_per_req"] if ok(peer) else None
        if what in ("rss_idle", "rss_1000rps"):
            kib = r.get(f"{what}_kib")
            return max(kib) / 1024 if kib else None
        return r["proxy_cpu_us_per_req"]

    def row(label, mode, what, limit, at_least, fmt, beat_peers=False):
        """One target: trellis's figure against `limit` (and, with `beat_peers`, strictly
        better than nginx's and haproxy's figures in the same run, where they have one)."""
        t = fig(mode, "trellis", what)
        if t is None and mode not in m:
            return
        peers = [fig(mode, "nginx", what), fig(mode, "haproxy", what)]
        better = (lambda a, b: a > b) if at_least else (lambda a, b: a < b)
        met = t is not None and (t >= limit if at_least else t <= limit)
        if met and beat_peers:
            met = all(p is None or better(t, p) for p in peers)
        mark = "–" if t is None else ("✓" if met else "✗")
        show = lambda v: "–" if v is None else fmt(v)
        rows.append(f"| {label} | {show(t)} | {mark} | {show(peers[0])} | {show(peers[1])} |")

    pct = lambda v: f"{v:.2f}× ({v * 100:.1f} %)"
    row(f"L7 throughput ≥ {TARGETS['l7_ratio']}× direct", "l7", "ratio", TARGETS["l7_ratio"], True, pct)
    row(f"L4 throughput ≥ {TARGETS['l4_ratio']}× direct", "l4", "ratio", TARGETS["l4_ratio"], True, pct)
    for mode in ("l7", "l4"):
        row(f"{mode.upper()} p99 ≤ {TARGETS['p99_ms']} ms (wrk, max load)", mode, "p99", TARGETS["p99_ms"], False,
            lambda v: f"{v:.2f} ms")
    for mode in ("l7", "l4"):
        row(f"{mode.upper()} proxy CPU per request (pair) ≤ {TARGETS['cpu_us']:.0f} µs", mode, "cpu",
            TARGETS["cpu_us"], False, lambda v: f"{v:.1f} µs")
    ms = lambda v: f"{v:.3f} ms"
    # Three decimals: 1.1996× is not 1.2× and should not read as if it were.
    times = lambda v: f"{v:.3f}×"
    megabytes = lambda v: f"{v:.1f} MB"
    row(f"L7 added p99 at 1,000 rps ≤ {TARGETS_ANY['added_p99_ms']} ms, below nginx's and haproxy's", "l7",
        "added_p99", TARGETS_ANY["added_p99_ms"], False, ms, beat_peers=True)
    row(f"L7 maximum throughput ≥ {TARGETS_ANY['vs_nginx_rps']}× nginx", "l7", "vs_nginx",
        TARGETS_ANY["vs_nginx_rps"], True, times)
    row("L7 maximum throughput ≥ haproxy", "l7", "vs_haproxy", 1.0, True, times)
    row("L7 proxy CPU per request ≤ nginx's", "l7", "cpu_vs_nginx", 1.0, False, times)
    row(f"proxy RSS idle ≤ {TARGETS_ANY['rss_idle_mb']:.0f} MB (the larger of A and B)", "l7", "rss_idle",
        TARGETS_ANY["rss_idle_mb"], False, megabytes)
    row(f"proxy RSS at 1,000 rps ≤ {TARGETS_ANY['rss_1000rps_mb']:.0f} MB", "l7", "rss_1000rps",
        TARGETS_ANY["rss_1000rps_mb"], False, megabytes)
    if not rows:
        return ""
    note = ("" if topology == "netns" else
            "\nThe first six targets are set for the netns topology (`bench/run --netns`); on loopback they are "
            "indicative only. A ratio's nginx and haproxy columns are their own figure against the same peer.\n")
    return ("## Targets (issue 7)\n" + note + "\n| target | trellis | | nginx | haproxy |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nFor comparison, {REFERENCE}.\n")


def problems(results):
    lines = []
    for r in results:
        if not ok(r):
            lines.append(f"- {r['mode']} {r['name']}: failed: {r['failed']}")
            continue
        if r.get("errors") or r.get("socket_errors"):
            lines.append(f"- {r['mode']} {r['name']}: {r['errors']} non-2xx responses and {r['socket_errors']} "
                         f"socket errors/failed requests under maximum load")
        if r.get("fixed", {}).get("errors"):
            lines.append(f"- {r['mode']} {r['name']}: {r['fixed']['errors']} errors at the fixed rate")
    return ("## Problems seen\n\n" + "\n".join(lines) + "\n") if lines else ""


def spread(results):
    """With several trials: the range of the main figures, so that a ratio can be read against
    the noise it sits in."""
    rows = [r for r in results if r.get("spread")]
    if not rows:
        return ""
    labels = [label for label, _ in SPREAD if any(label in r["spread"] for r in rows)]
    fmt = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
    lines = ["## Spread across trials\n",
             "Lowest and highest of each figure over the trials (the tables above give the medians).\n",
             "| mode | contender | trials | " + " | ".join(labels) + " |",
             "|" + "---|" * (3 + len(labels))]
    for r in rows:
        cells = [f"{fmt(r['spread'][label][0])}–{fmt(r['spread'][label][1])}" if label in r["spread"] else "–"
                 for label in labels]
        lines.append(f"| {r['mode']} | {r['name']} | {r.get('trials', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(each_trial):
    """With several trials: at the fixed rate, in how many trials each contender's p99 was below
    nginx's and haproxy's in the same trial. Medians of separate trials can hide which way the
    trials went; this counts them."""
    pairs = trials.paired(each_trial or [])
    if not pairs:
        return ""
    lines = ["## Trial by trial at 1,000 req/s\n",
             "Each contender's p99 against nginx's and haproxy's from the same trial: the trials where it was "
             "lower, and the median of the differences (that of the added p99s: direct's cancels).\n",
             "| mode | contender | below nginx's | median Δ p99 vs nginx | below haproxy's | median Δ p99 vs haproxy |",
             "|---|---|---|---|---|---|"]
    for (mode, name), peers in pairs.items():
        cells = []
        for peer in ("nginx", "haproxy"):
            if peer in peers:
                below, n, diff = peers[peer]
                cells += [f"{below} of {n}", f"{diff * 1000:+.0f} µs"]
            else:
                cells += ["–", "–"]
        lines.append(f"| {mode} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(results, meta, chart_name=None, each_trial=None):
    m = by_mode(results)
    out = [f"# Trellis benchmark {meta['stamp']} ({meta['topology']})\n",
           "| | |\n|---|---|"]
    out += [f"| {k} | {v} |" for k, v in meta["facts"].items()]
    out.append("")
    if chart_name:
        out.append(f"![latency percentiles and throughput per contender]({chart_name})\n")
    for mode, title in MODES.items():
        if mode not in m:
            continue
        out.append(f"## {title}\n")
        if any("fixed" in r for r in m[mode].values()):
            out.append(f"Fixed rate: 1,000 req/s over 16 connections, open loop (trellis-loadgen, coordinated "
                       f"omission corrected), {meta['fixed_seconds']} s:\n")
            out.append(fixed_table(m[mode]) + "\n")
            out.append(f"Maximum throughput, closed loop, {meta['seconds']} s:\n")
        out.append(max_table(m[mode]) + "\n")
    out.append(targets(results, meta["topology"]))
    out.append(spread(results))
    out.append(paired(each_trial))
    out.append(problems(results))
    return "\n".join(s for s in out if s is not None)
