"""Scripts that measure speed and search quality and write JSON under ``benchmarks/results/``; never run as tests."""
