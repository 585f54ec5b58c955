"""Cheap checks of the harness without running a benchmark (parsers, report, targets):
python3 -m unittest discover -s bench/lib -t bench  (./scripts/test runs it; well under a second)."""
import unittest

from lib import callgrind, load, preflight, report, topology, trials

WRK = """Running 1s test @ http://127.0.0.1:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   220.00us  100.00us   2.00ms   90.00%
  70000 requests in 1.00s, 80.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 5
Requests/sec:  70000.00
Transfer/sec:     80.00MB
percentile 50 210
percentile 90 240
percentile 99 427
percentile 99.9 1900
"""

H2LOAD = """finished in 2.41s, 8306.59 req/s, 8.46MB/s
requests: 20000 total, 20010 started, 20000 done, 19990 succeeded, 10 failed, 0 errored, 0 timeout
status codes: 19990 2xx, 0 3xx, 0 4xx, 10 5xx
"""


def result(name, mode, rps, p99, cpu, fixed=True):
    r = {"name": name, "mode": mode, "rps": rps, "requests": int(rps * 10), "errors": 0, "socket_errors": 0,
         "latency_ms": {"p50": p99 / 3, "p90": p99 / 2, "p99": p99, "p99.9": p99 * 2},
         "proxy_cpu_us_per_req": cpu, "proxy_cores": 1.0, "rss_idle_kib": [8192, 8192], "rss_loaded_kib": [9000, 9000]}
    if fixed:
        r["fixed"] = {"achieved_rps": 1000, "errors": 0,
                      "latency_ms": {"p50": p99 / 4, "p90": p99 / 3, "p99": p99 / 2, "p99.9": p99}}
        if cpu:
            r["fixed"]["proxy_cpu_us_per_req"] = cpu * 4
        r["rss_1000rps_kib"] = [8500, 8500]
    return r


class Parsers(unittest.TestCase):
    def test_wrk(self):
        r = load.parse_wrk(WRK)
        self.assertEqual((r["rps"], r["requests"], r["errors"], r["socket_errors"]), (70000.0, 70000, 5, 4))
        self.assertEqual(r["latency_ms"], {"p50": 0.21, "p90": 0.24, "p99": 0.427, "p99.9": 1.9})

    def test_wrk_without_result(self):
        with self.assertRaises(load.LoadError):
            load.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")

    def test_h2load(self):
        r = load.parse_h2load(H2LOAD)
        self.assertEqual((r["rps"], r["requests"], r["errors"], r["socket_errors"]), (8306.59, 19990, 10, 10))

    def test_percentiles(self):
        p = load.percentiles_ms(list(range(1, 1001)))
        self.assertEqual((p["p50"], p["p99"], p["p99.9"]), (0.501, 0.991, 1.0))
        self.assertEqual(load.percentiles_ms([]), {})


class Report(unittest.TestCase):
    def results(self):
        return [result("direct", "l7", 60000, 0.5, 0.0), result("trellis", "l7", 24000, 0.9, 30.0),
                result("nginx", "l7", 19000, 1.3, 47.0), {"name": "haproxy", "mode": "l7", "failed": "no answer"},
                result("direct", "l4", 60000, 0.5, 0.0), result("trellis", "l4", 24000, 1.2, 40.0),
                result("direct", "h2", 50000, 5.0, 0.0, fixed=False), result("trellis", "h2", 20000, 9.0, 50.0, fixed=False)]

    def test_targets_marked(self):
        t = report.targets(self.results(), "netns")
        self.assertIn("| L7 throughput ≥ 0.38× direct | 0.40× (40.0 %) | ✓ | 0.32× (31.7 %) | – |", t)
        self.assertIn("| L4 throughput ≥ 0.45× direct | 0.40× (40.0 %) | ✗ |", t)
        self.assertIn("| L7 p99 ≤ 1.0 ms (wrk, max load) | 0.90 ms | ✓ |", t)
        self.assertIn("| L4 proxy CPU per request (pair) ≤ 33 µs | 40.0 µs | ✗ |", t)

    def test_the_low_load_target_needs_the_peers_beaten_too(self):
        # trellis adds 0.20 ms at 1,000 rps: under 0.25 ms but over nginx's 0.15, so not met; and
        # 24,000 req/s against 20,010 is 1.1994× nginx: "1.20×" with two decimals, and not met.
        rs = [result("direct", "l7", 60000, 0.2, 0.0), result("trellis", "l7", 24000, 0.6, 30.0),
              result("nginx", "l7", 20010, 0.5, 47.0), result("haproxy", "l7", 19000, 0.8, 47.0)]
        t = report.targets(rs, "netns")
        self.assertIn("| L7 added p99 at 1,000 rps ≤ 0.25 ms, below nginx's and haproxy's | 0.200 ms | ✗ "
                      "| 0.150 ms | 0.300 ms |", t)
        self.assertIn("| L7 maximum throughput ≥ 1.2× nginx | 1.199× | ✗ |", t)
        rs[2] = result("nginx", "l7", 19000, 0.7, 47.0)
        t = report.targets(rs, "netns")
        self.assertIn("below nginx's and haproxy's | 0.200 ms | ✓ | 0.250 ms | 0.300 ms |", t)
        self.assertIn("| L7 maximum throughput ≥ 1.2× nginx | 1.263× | ✓ |", t)

    def test_fixed_rate_cpu_against_nginx(self):
        rs = {r["name"]: r for r in self.results() if r["mode"] == "l7"}
        table = report.fixed_table(rs)
        # trellis: 120 µs at 1,000 rps against nginx's 188; direct has no proxies.
        self.assertIn("| 120.0 | 0.64 | 8.3/8.3 |", table)
        self.assertIn("| – | – | – |", table.splitlines()[2])

    def test_max_table_splits_cpu_into_user_and_system(self):
        rs = {r["name"]: r for r in self.results() if r["mode"] == "l7"}
        rs["trellis"].update(proxy_user_us_per_req=14.25, proxy_sys_us_per_req=15.75)
        table = report.max_table(rs)
        self.assertIn("| 30.0 | 14.2 / 15.8 |", table)
        # A contender without the split (direct, or a result from before it) shows a dash.
        self.assertIn("| 0.0 | – |", table.splitlines()[2])
        self.assertTrue(all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines()))

    def test_markdown_has_every_mode_and_the_failure(self):
        meta = {"stamp": "T", "topology": "loopback", "seconds": 10, "fixed_seconds": 5, "facts": {"machine": "m"}}
        md = report.markdown(self.results(), meta, "T.png")
        for needle in ("## L7", "## L4", "## HTTP/2", "![", "| haproxy | failed: no answer", "## Problems seen",
                       "indicative only"):
            self.assertIn(needle, md)

    def test_a_baseline_is_one_more_contender_and_not_the_target(self):
        rs = self.results() + [result("baseline", "l7", 20000, 1.1, 36.0)]
        md = report.markdown(rs, {"stamp": "T", "topology": "loopback", "seconds": 10, "fixed_seconds": 5,
                                  "facts": {"machine": "m"}}, "T.png")
        self.assertIn("| baseline | 20000 |", md)
        # The targets are trellis's, whatever else ran.
        self.assertIn("| L7 throughput ≥ 0.38× direct | 0.40× (40.0 %) | ✓ |", report.targets(rs, "netns"))


class HostGauge(unittest.TestCase):
    def test_both_figures_are_measured(self):
        g = preflight.host_gauge(repeats=1)
        self.assertEqual(set(g), {"syscall_ns", "loop_ns"})
        self.assertTrue(all(isinstance(v, int) and v > 0 for v in g.values()), g)


class Trials(unittest.TestCase):
    def test_medians_spread_and_failures(self):
        rs = [result("trellis", "l7", rps, p99, cpu) for rps, p99, cpu in
              ((20000, 1.5, 50.0), (18000, 1.9, 56.0), (21000, 1.4, 49.0))]
        rs.append({"name": "trellis", "mode": "l7", "failed": "no answer"})
        rs += [result("nginx", "l7", 19000, 2.0, 48.0)]
        rs += [{"name": "haproxy", "mode": "l7", "failed": "a"}, {"name": "haproxy", "mode": "l7", "failed": "b"}]
        folded = {r["name"]: r for r in trials.fold(rs)}
        t = folded["trellis"]
        self.assertEqual((t["rps"], t["proxy_cpu_us_per_req"], t["latency_ms"]["p99"]), (20000, 50.0, 1.5))
        self.assertEqual(t["rss_idle_kib"], [8192, 8192])
        self.assertEqual(t["fixed"]["proxy_cpu_us_per_req"], 200.0)
        self.assertEqual(t["trials"], "3 of 4")
        self.assertEqual(t["spread"]["req/s"], [18000, 21000])
        self.assertEqual(folded["nginx"]["rps"], 19000)  # one trial: as it was
        self.assertNotIn("spread", folded["nginx"])
        self.assertEqual((folded["haproxy"]["failed"], folded["haproxy"]["trials"]), ("a", "0 of 2"))
        md = report.spread(list(folded.values()))
        self.assertIn("| l7 | trellis | 3 of 4 | 18,000–21,000 | 49.0–56.0 | 1.40–1.90 |", md)


class Topology(unittest.TestCase):
    def test_pinning_prefix(self):
        t = topology.Topology("sides")
        self.assertEqual(t.place("client").prefix(), ["taskset", "-c", "0"])
        self.assertEqual(t.place("server").prefix(), ["taskset", "-c", "1"])
        self.assertEqual(topology.Place("ns").prefix(), ["ip", "netns", "exec", "ns"])


class OrderFileTest(unittest.TestCase):
    def test_only_rust_names_count_and_a_renamed_one_is_missed(self):
        listed = ["_ZN4core3fmt5write17h0123456789abcdefE", "_RNvCs1_3foo3bar", "memcpy", "__vdso_clock_gettime"]
        present = {"_ZN4core3fmt5write17h0123456789abcdefE", "_RNvCs1_3foo3bar"}
        self.assertEqual(preflight.order_coverage(listed, present), (2, 2, 0, 2))
        renamed = {"_ZN4core3fmt5write17hfedcba9876543210E", "_RNvCs1_3foo3bar", "memcpy"}
        self.assertEqual(preflight.order_coverage(listed, renamed), (1, 2, 1, 2))


if __name__ == "__main__":
    unittest.main()


DUMP = """# callgrind format
version: 1
positions: instr line
events: Ir
summary: 1250

ob=(1) /bin/proxy
fl=(1) a.rs
fn=(1) hot
0x1000 10 400
+4 11 400
cob=(2) /lib/libc.so
cfi=(2) b.c
cfn=(2) memcpy
calls=100 0x9000 1
+3 12 999
+2 13
fn=(3) cold
0x1040 20 2
ob=(2)
fl=(2)
fn=(2)
0x9000 1 448
"""


class CallgrindTest(unittest.TestCase):
    def test_own_costs_and_lines_of_code(self):
        d = callgrind.Dump(DUMP)
        self.assertEqual(d.total, 1250)
        # No `totals:` line (callgrind writes it last): still being written.
        self.assertFalse(d.complete)
        self.assertTrue(callgrind.Dump(DUMP + "totals: 1250\n").complete)
        # The call's inclusive 999 is memcpy's, counted where memcpy's own lines are.
        self.assertEqual(d.functions, {"hot": 800, "cold": 2, "memcpy": 448})
        self.assertEqual(sum(d.functions.values()), d.total)
        self.assertEqual(d.code[("/bin/proxy", 0x1009)], 0)
        # 100 requests: hot's line (0x1000) and memcpy's ran every request, cold's did not.
        self.assertEqual(d.code_lines(100), 2)
        self.assertEqual(d.code_lines(100, share=0.01), 3)


class PairedTest(unittest.TestCase):
    def test_trials_are_compared_within_each_trial(self):
        def r(name, p99, failed=False):
            out = {"name": name, "mode": "l7", "fixed": {"latency_ms": {"p99": p99}}}
            if failed:
                out["failed"] = "x"
            return out
        # Trial 2 is slow for everyone: the medians (0.40 against 0.35) would say trellis
        # lost, trial by trial it won two of three.
        each = [r("direct", 0.1), r("trellis", 0.30), r("nginx", 0.32), r("haproxy", 0.2),
                r("direct", 0.5), r("trellis", 0.90), r("nginx", 0.95), r("haproxy", 0.3),
                r("direct", 0.1), r("trellis", 0.40), r("nginx", 0.35), r("haproxy", 0.2, failed=True)]
        pairs = trials.paired(each)
        below, n, diff = pairs[("l7", "trellis")]["nginx"]
        self.assertEqual((below, n), (2, 3))
        self.assertAlmostEqual(diff, -0.02)
        # haproxy failed one trial: two are compared, trellis was above in both.
        self.assertEqual(pairs[("l7", "trellis")]["haproxy"][:2], (0, 2))
        self.assertIn("2 of 3", report.paired(each))
