"""Several trials of the same run, folded into one result per contender and mode.

On a shared machine one trial of a contender can land in a busy minute and the next in a quiet
one: single figures move by ±10 % (bench/README.md). `bench/run --trials N` measures every
contender N times, interleaved (trial 1 of each, then trial 2 of each, ...), and reports for
each figure the median over the trials that succeeded, with the spread of the main ones."""
import statistics

# The figures whose range across trials the report shows: (label, path into a result).
SPREAD = (("req/s", ("rps",)), ("proxy CPU µs/req", ("proxy_cpu_us_per_req",)),
          ("p99 ms", ("latency_ms", "p99")), ("fixed-rate p99 ms", ("fixed", "latency_ms", "p99")),
          ("fixed-rate proxy CPU µs/req", ("fixed", "proxy_cpu_us_per_req")),
          # The host's share: a trial with high steal is a reading of the hypervisor's load.
          ("CPU steal %", ("steal_pct",)))


def fold(results):
    """One result per (name, mode), in first-seen order: the median of each number over the
    trials that did not fail (lists element by element, dicts key by key), `trials` (how many
    succeeded of how many) and `spread` (min and max of the SPREAD figures). A contender that
    failed every trial keeps its first failure."""
    groups = {}
    for r in results:
        groups.setdefault((r["name"], r["mode"]), []).append(r)
    out = []
    for (name, mode), rs in groups.items():
        good = [r for r in rs if "failed" not in r]
        if not good:
            out.append(dict(rs[0], trials=f"0 of {len(rs)}"))
            continue
        if len(rs) == 1:
            out.append(rs[0])
            continue
        folded = median_of(good)
        folded.update(name=name, mode=mode, trials=f"{len(good)} of {len(rs)}")
        spread = {}
        for label, path in SPREAD:
            values = [v for v in (dig(r, path) for r in good) if isinstance(v, (int, float))]
            if values and len(values) == len(good):
                spread[label] = [min(values), max(values)]
        folded["spread"] = spread
        out.append(folded)
    return out


def dig(r, path):
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def median_of(values):
    first = values[0]
    if isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
        return first
    if isinstance(first, (int, float)):
        numbers = [v for v in values if isinstance(v, (int, float))]
        middle = statistics.median(numbers)
        # Counts stay whole (errors, requests): the lower middle of an even number of them.
        if all(isinstance(v, int) for v in numbers) and middle != int(middle):
            return statistics.median_low(numbers)
        return int(middle) if all(isinstance(v, int) for v in numbers) else middle
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
        return {k: median_of([v[k] for v in values]) for k in keys}
    if all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [median_of([v[i] for v in values]) for i in range(len(first))]
    return first


def paired(each_trial, peers=("nginx", "haproxy")):
    """Trial by trial at the fixed rate: each contender's p99 against each peer's measured in
    the same trial (the i-th result of each, as the trials interleave), so that the machine's
    drift between trials cancels. {(mode, name): {peer: (trials below the peer's, trials
    compared, median difference in ms)}}; the difference of two p99s is that of the two added
    p99s (direct's cancels)."""
    groups = {}
    for r in each_trial:
        groups.setdefault((r["mode"], r["name"]), []).append(r)
    path = ("fixed", "latency_ms", "p99")
    out = {}
    for (mode, name), rs in groups.items():
        if name == "direct" or name in peers:
            continue
        for peer in peers:
            diffs = []
            for a, b in zip(rs, groups.get((mode, peer), [])):
                va, vb = dig(a, path), dig(b, path)
                if "failed" not in a and "failed" not in b and isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                    diffs.append(va - vb)
            if len(diffs) > 1:
                out.setdefault((mode, name), {})[peer] = (sum(d < 0 for d in diffs), len(diffs), statistics.median(diffs))
    return out
