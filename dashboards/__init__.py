"""Dashboards: Grafana dashboards as code for plant operators."""
