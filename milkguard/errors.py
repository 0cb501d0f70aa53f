"""The exception tree of MilkGuard.

    MilkGuardError                 every error MilkGuard raises on purpose
    ├── ConfigError                settings file or environment is wrong (names the field)
    ├── PlanError                  a HACCP plan file is wrong (names the file, line and field)
    ├── ScenarioError              a simulator scenario file is wrong (names the file and field)
    ├── ExtraMissing               an optional part is not installed (says which extra to install)
    ├── BrokerError                a broker could not be started or reached (says where and why)
    └── (stream.errors) SinkError  a sink could not make data durable now (kept, retried)

A payload that fails validation is not an exception: it is a dead letter (stream.sinks.base).

User-facing errors carry what was wrong and how to fix it; the CLI prints them without a
traceback and exits with status 2.
"""

from __future__ import annotations


class MilkGuardError(Exception):
    """Root of every error MilkGuard raises on purpose."""


class ConfigError(MilkGuardError):
    """The settings (file or environment) are invalid."""


class PlanError(MilkGuardError):
    """A HACCP plan file cannot be used; the message names the file, the field and the fix."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"HACCP plan {path} is invalid ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):\n{listing}\n"
            f"Fix the plan and check it with: milkguard plan check {path}"
        )


class ScenarioError(MilkGuardError):
    """A simulator scenario file cannot be used; the message names the file and the field."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"scenario {path} is invalid:\n{listing}")


class ExtraMissing(MilkGuardError):  # noqa: N818 - reads as the condition the user must fix
    """An optional dependency group is not installed."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the Python package {module!r}, which is not installed. "
            f"Install it with: pip install 'milkguard[{extra}]'"
        )


class BrokerError(MilkGuardError):
    """An MQTT broker could not be started or reached."""
