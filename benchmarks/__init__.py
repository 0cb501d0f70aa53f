"""Benchmarks: commands that print figures, never timed tests. They may import any package of
MilkGuard except the command-line interface, which calls them."""
