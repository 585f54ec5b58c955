"""The pieces of bench/run: where processes run (topology), what runs (contenders), the load
(load), what is measured of the processes (procs), the report (report, chart) and the checks
before a run (preflight). bench/run wires them; bench/README.md says what the figures mean."""
