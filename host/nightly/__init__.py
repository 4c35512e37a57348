"""Nightly runs: statistics, reports, history."""
