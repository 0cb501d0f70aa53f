"""Deviations in the terminal, in colour, as an operator would want to read them."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from stream.engine.deviation import DeviationChange, iso_ms

_SEVERITY_STYLE = {"critical": "bold white on red", "major": "bold red", "minor": "yellow"}


def describe_limit(minimum: float | None, maximum: float | None, unit: str) -> str:
    """'2.0-6.0 degC', '<= 6.0 degC', '>= 72.0 degC', or '' for a rule without a band."""
    if minimum is not None and maximum is not None:
        return f"{minimum:g}-{maximum:g} {unit}"
    if maximum is not None:
        return f"<= {maximum:g} {unit}"
    if minimum is not None:
        return f">= {minimum:g} {unit}"
    return ""


class ConsoleDeviationSink:
    """Prints one line per deviation change."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def emit(self, change: DeviationChange) -> None:
        """Print the change."""
        d = change.deviation
        limit = describe_limit(d.limit.min, d.limit.max, d.limit.unit)
        line = Text()
        if change.kind == "opened":
            line.append(" DEVIATION ", style=_SEVERITY_STYLE.get(d.severity, "bold"))
            line.append(f" {d.severity.upper()} ", style="bold")
            line.append(f"{d.site}/{d.asset} {','.join(d.channels)} ", style="bold cyan")
            if d.kind == "monitoring_lost":
                line.append(f"no sample for {d.limit.sustained_s:g} s (monitoring lost), ")
            elif d.peak is not None:
                line.append(f"peak {d.peak:g} {d.limit.unit}, limit {limit}, ")
            line.append(f"since {iso_ms(d.start_ms)} ({d.time_beyond_s:g} s beyond)")
            line.append(f"  rule {d.rule_id}, {d.ccp or 'no CCP'}; action: {d.action}", style="dim")
        else:
            line.append(" RESOLVED  ", style="bold green")
            line.append(f" {d.site}/{d.asset} {','.join(d.channels)} ", style="bold cyan")
            peak = f", peak {d.peak:g} {d.limit.unit}" if d.peak is not None else ""
            line.append(
                f"ended at {iso_ms(d.end_ms or d.start_ms)}: {d.time_beyond_s:g} s{peak}, "
                f"{d.degree_minutes:.2f} degree-minutes"
            )
            line.append(f"  rule {d.rule_id}", style="dim")
        self._console.print(line)

    def flush(self) -> None:
        """The console is written at once."""

    def close(self) -> None:
        """Nothing to release."""
