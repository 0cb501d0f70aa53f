"""HACCP corrective actions: why it happened, what was done, what became of the product, and
who signs for it, with what meaning (an electronic signature names its signer, its time and
what the signature means, and is kept with the record in the audit trail)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Disposition = Literal["hold", "divert", "re-pasteurize", "destroy", "release"]

DEFAULT_MEANING = (
    "I performed or verified this corrective action, and the product disposition is as stated."
)


class CorrectiveActionInput(BaseModel):
    """What a person records; who they are comes from their login, not from the form."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    cause: str = Field(min_length=3, max_length=2000, description="Why the limit was breached.")
    action_taken: str = Field(min_length=3, max_length=2000, description="What was done.")
    disposition: Disposition = Field(description="What became of the product concerned.")
    lot: str | None = Field(default=None, max_length=200, description="The lot or batch.")
    meaning: str = Field(
        default=DEFAULT_MEANING, min_length=10, max_length=500, description="What signing means."
    )


class CorrectiveAction(CorrectiveActionInput):
    """A recorded, signed corrective action."""

    alert_id: str
    deviation_id: str
    signed_by: str
    role: str
    signed_at: str  # ISO 8601 UTC
