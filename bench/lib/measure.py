"""One contender in one mode: start the server and the pair, warm up, then the figures."""
import time

from . import contenders, load
from .procs import Procs, SetupError, cpu_seconds, cpu_split, rss_kib, tree_pids


def measure(name, mode, ctx, seconds, fixed_seconds, loadgen):
    """A result dict (see bench/README.md, "Columns"); `failed` says why when the contender could
    not be measured, `errors`/`socket_errors` count what went wrong under load."""
    result = {"name": name, "mode": mode}
    ctx.procs = Procs(ctx.work)
    try:
        contenders.server(ctx)
        t = contenders.CONTENDERS[name](ctx, mode)
        client = ctx.topo.place("client")
        warm = closed_loop(mode, client, t, 1, ctx.work)  # connections, TLS handshakes, pools
        if warm["requests"] == 0 or warm["errors"] or warm["socket_errors"]:
            raise SetupError(f"does not answer 200 with the 1 KiB body: {warm['raw'].strip()[-400:]}")
        tree = [p for pid in t.pids for p in tree_pids(pid)]
        result["rss_idle_kib"] = [sum(rss_kib(p) for p in tree_pids(pid)) for pid in t.pids]
        result["anon_idle_kib"] = [sum(rss_kib(p, "RssAnon") for p in tree_pids(pid)) for pid in t.pids]
        if mode != "h2" and fixed_seconds:
            cpu0 = sum(cpu_seconds(p) for p in tree)
            result["fixed"] = load.fixed_rate(client, loadgen, f"{t.ip}:{t.port}", t.host, fixed_seconds)
            # A light load costs each request far more CPU than a saturating one (every request
            # wakes a process whose caches went cold meanwhile): the figure behind the latency.
            done = result["fixed"].get("requests", 0)
            if t.pids and done:
                result["fixed"]["proxy_cpu_us_per_req"] = (sum(cpu_seconds(p) for p in tree) - cpu0) * 1e6 / done
            result["rss_1000rps_kib"] = [sum(rss_kib(p) for p in tree_pids(pid)) for pid in t.pids]
        split0, t0 = tree_split(tree), time.monotonic()
        r = closed_loop(mode, client, t, seconds, ctx.work)
        split1 = tree_split(tree)
        cpu0, cpu1 = sum(split0), sum(split1)
        result["rss_loaded_kib"] = [sum(rss_kib(p) for p in tree_pids(pid)) for pid in t.pids]
        result["anon_loaded_kib"] = [sum(rss_kib(p, "RssAnon") for p in tree_pids(pid)) for pid in t.pids]
        r.pop("raw", None)
        result.update(r)
        result["proxy_cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / max(r["requests"], 1) if t.pids else 0.0
        if t.pids:
            # The same, user and system apart: what the proxies' own code costs, and what the
            # kernel costs them (the packets are the same for every contender).
            result["proxy_user_us_per_req"], result["proxy_sys_us_per_req"] = (
                (b - a) * 1e6 / max(r["requests"], 1) for a, b in zip(split0, split1))
        # CPU of the pair in cores while loaded (how much of the machine the proxies took).
        result["proxy_cores"] = (cpu1 - cpu0) / max(time.monotonic() - t0, 1e-9) if t.pids else 0.0
    except (SetupError, load.LoadError) as error:
        result["failed"] = str(error)
    finally:
        ctx.procs.stop_all()
    return result


def closed_loop(mode, place, t, seconds, work):
    if mode == "h2":
        return load.h2load(place, t.url(), t.host, seconds, work)
    return load.wrk(place, t.url(), t.host, seconds, work)


def tree_split(pids):
    """(user, system) CPU seconds of these processes together."""
    splits = [cpu_split(p) for p in pids]
    return (sum(u for u, _ in splits), sum(k for _, k in splits))
