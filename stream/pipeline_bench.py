"""Moved to :mod:`benchmarks.pipeline`. This name stays only until the command line calls
``benchmarks.pipeline.main``; then delete it (benchmarks sit above the product packages)."""

from benchmarks.pipeline import main, run

__all__ = ["main", "run"]
