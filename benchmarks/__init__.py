"""Benchmarks against the PyTorch baseline: `python -m benchmarks` (or `ledserve bench`)."""
