"""Benchmarks: run each as `python -m bench.<name>` from the checkout; results go to bench/results/,
and `python -m bench.make_table` writes docs/benchmarks.md from them."""
