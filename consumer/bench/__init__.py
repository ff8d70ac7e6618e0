"""Benchmark and load tooling: the bench, its baseline, the load generator, the
child-process harness that the bench and the tests share. Production code never imports it."""
