"""Benchmarks and the fuzzer: commands that print figures, never timed tests.

Not part of any application: a benchmark may import every package (to build a fleet, start the
stream, drive the edge agent) except the command, which runs them (``milkguard bench ...``).
Nothing in ``edge``, ``stream``, ``alerts``, ``simulators`` or ``milkguard`` imports it.
"""
