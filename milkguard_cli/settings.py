"""The whole settings file: every application's sections in one YAML file.

Only the command may put them together (it is the one place that imports every application).
Unknown keys are errors, ``MILKGUARD_*`` variables win over the file, and the field names are
those of :class:`stream.settings.StreamSettings`, :class:`milkguard.settings.CommonSettings`
and the ``alerts`` section, so one file configures the stream and the alert service alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from alerts.settings import AlertSettings
from milkguard.settings import read_settings
from stream.settings import StreamSettings


class Settings(StreamSettings):
    """Everything the settings file can say: the stream's sections, and the alert service's."""

    alerts: AlertSettings = Field(default_factory=AlertSettings)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings file at ``path`` (optional), the environment and ``overrides``.

    ``overrides`` (command-line flags, already typed) win over both.
    """
    return read_settings(Settings, path, **overrides)
