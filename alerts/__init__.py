"""Alerts: deviations to operators, QA and regulators (acknowledgement, escalation, audit trail).

Deviations reach this package as JSON lines (``var/deviations.jsonl``, for reports made by hand)
and, for the alert service, on the MQTT topic ``milkguard/v1/deviations/{site}/{asset}`` as
envelopes signed by the stream; see milkguard.contract.records for the record and envelope.
The operators' web app's device page reads the gateways' status and batches
(``milkguard/v1/gw/+/+/status`` and ``/batch``), read-only, at QoS 0.
"""
