"""Benchmarks of the training path (``gfmtune bench-train``)."""
