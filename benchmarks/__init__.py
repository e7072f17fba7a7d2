"""Benchmarks against the PyTorch baseline: `ledserve bench` (`python -m ledserve.benchmarks`)."""
