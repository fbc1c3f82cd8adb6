"""The benchmark harness: the poller against raw client loops and FastStream (SPEC section 10).

Run it with ``python -m bench`` (``--help`` lists the suites and options); docs/benchmarks.md has
the results and how to read them. Every consumer under test runs as a process of its own, so CPU
time and peak RSS are that consumer's alone; they report progress through :mod:`bench.progress`.
Nothing here is imported by the service or the test suite.
"""
