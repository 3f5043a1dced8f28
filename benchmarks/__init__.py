"""Benchmarks that print JSON and save it under ``benchmarks/results/`` (run them as ``python -m benchmarks.X``)."""
