"""Benchmarks against the PyTorch baseline (issue 5: not built yet)."""
