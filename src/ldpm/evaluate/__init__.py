"""Metrics, tables and figures."""
