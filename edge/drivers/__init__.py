"""Sensor drivers of the edge agent: one module per kind of source."""
