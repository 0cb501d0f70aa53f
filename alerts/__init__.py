"""Alerts: deviations to operators, QA and regulators (acknowledgement, escalation, audit trail).

Deviations reach this package today as JSON lines (``var/deviations.jsonl``) and on the MQTT
topic ``milkguard/v1/deviations/{site}/{asset}``; see stream.engine.deviation for the schema.
"""
