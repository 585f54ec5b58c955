"""The PNG beside the report: latency percentiles per contender (at the fixed rate and under
maximum load, log axis) and throughput with CPU per request. Needs matplotlib; without it the
report says so and the run goes on."""
from .report import MODES, QS, by_mode, ok

COLORS = {"direct": "#7f7f7f", "trellis": "#1f77b4", "baseline": "#aec7e8", "nginx": "#2ca02c",
          "haproxy": "#d62728"}
SHORT = {"l7": "L7 HTTP/1.1", "l4": "L4 tcp", "h2": "HTTP/2"}


def chart(results, path, title):
    """Write the chart; returns None, or why there is none."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (python3 -m pip install matplotlib)"
    m = by_mode(results)
    modes = [mode for mode in MODES if mode in m]
    fixed = [mode for mode in modes if any("fixed" in r for r in m[mode].values() if ok(r))]
    rows = [(kind, mode) for mode in modes for kind in ("fixed", "max") if kind == "max" or mode in fixed]
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(11, 3.2 * (len(rows) + 1)), squeeze=False)
    axes = [a[0] for a in axes]
    for ax, (kind, mode) in zip(axes, rows):
        names = [n for n, r in m[mode].items() if ok(r) and (kind == "max" or "fixed" in r)]
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            lat = m[mode][name]["fixed"]["latency_ms"] if kind == "fixed" else m[mode][name]["latency_ms"]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(QS))]
            ys = [lat.get(q) or float("nan") for q in QS]
            bars = ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
            ax.bar_label(bars, labels=[f"{y:.2f}" if y == y else "" for y in ys], fontsize=7, padding=1)
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(QS)), QS)
        ax.set_ylabel("latency, ms (log)")
        how = ("1,000 req/s fixed rate, open loop" if kind == "fixed"
               else "maximum load, " + ("h2load -c16 -m10" if mode == "h2" else "wrk -t1 -c16"))
        ax.set_title(f"{SHORT[mode]}: latency at {how}", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, ncols=len(names))
        ax.margins(y=0.15)
    # Throughput per mode, with CPU per request of the pair on each bar.
    ax = axes[-1]
    names = [n for n in COLORS if any(n in m[mode] for mode in modes)]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs, ys, labels = [], [], []
        for j, mode in enumerate(modes):
            r = m[mode].get(name)
            if ok(r):
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(r["rps"])
                labels.append(f"{r['rps'] / 1000:.1f}k" + (f"\n{r['proxy_cpu_us_per_req']:.0f} µs" if r["proxy_cpu_us_per_req"] else ""))
        bars = ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_xticks(range(len(modes)), [SHORT[mode] for mode in modes])
    ax.set_ylabel("req/s")
    ax.set_title("maximum throughput (label: k req/s, proxy pair CPU µs per request)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=len(names))
    ax.margins(y=0.25)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
