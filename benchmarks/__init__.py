"""Benchmarks: commands that print figures, never timed tests. Nothing in the product imports
this package; it may import any of them (but not the CLI, which calls it)."""
