"""Benchmarks: commands that print figures, never timed tests. May import any product package,
never the CLI."""
